"""Airflow: the nightly recipes build through the provider's batch API (half the online price).

Two DAGs over the same job:

- ``curator_nightly_batch``: one deferrable ``CuratorOperator``. It submits one batch per shard,
  frees its worker slot while the triggerer polls, collects on resume, resubmits what expired
  (a new deferral), then publishes Parquet as the night's partition (``date=<run_date>``). A
  deadline 26 hours after the first submit cancels what is still running. A triggerer must run
  (``airflow triggerer``): a deferred task waits for one.
- ``curator_nightly_batch_steps``: the same steps as separate, mapped tasks (submit → a
  reschedule-mode sensor → collect → publish), for teams without a triggerer. A batch takes
  hours, so the sensor pokes every ``POKE_SECONDS`` (10 minutes): reschedule-mode pokes seconds
  apart race with the scheduler (a task "finished with state success, but ... queued" goes up
  for retry).

Both call the provider of the ``curator_default`` connection (``make airflow-ui`` creates one to
a simulator server; ``make demo-airflow`` and the tests set it to the embedded simulator).
``{{ run_date }}`` (the logical date, else the date of the run's ``run_after``) keys each night,
also in runs triggered without a logical date. An Airflow retry of any task resumes from the run
directory: a shard's batch is never created twice.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Asset, dag

from airflow_provider import (
    CuratorBatchSensor,
    CuratorCollectOperator,
    CuratorFinalizeOperator,
    CuratorOperator,
    CuratorPrepareOperator,
    CuratorSubmitBatchOperator,
)
from dags_examples.generators import RecipeGenerator

MODEL = "gpt-4o-mini"
ROOT = os.environ.get("CURATOR_EXAMPLES_ROOT") or str(Path.home() / "curator-flows" / "airflow")
CUISINES = [
    "Thai", "Peruvian", "Ethiopian", "Georgian", "Korean", "Sicilian",
    "Oaxacan", "Lebanese", "Keralan", "Basque", "Vietnamese", "Moroccan",
]  # fmt: skip
#: seconds between two reschedule-mode pokes (minutes: a batch takes hours)
POKE_SECONDS = float(os.environ.get("CURATOR_EXAMPLES_POKE_SECONDS") or 600)
PARAMS = {
    "working_dir": f"{ROOT}/runs",
    "output_root": f"{ROOT}/datasets",
    "poll_seconds": 60,
}
DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(minutes=1),
    "conn_id": "curator_default",
}


def recipe_llm() -> RecipeGenerator:
    return RecipeGenerator(MODEL, batch=True, backend_params={"batch_size": 5})


@dag(
    schedule="0 1 * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["curator", "example", "batch"],
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
)
def curator_nightly_batch() -> None:
    CuratorOperator(
        task_id="recipes",
        llm=recipe_llm(),
        dataset=[{"cuisine": name} for name in CUISINES],
        working_dir="{{ params.working_dir }}",
        output_uri="{{ params.output_root }}/batch-recipes",
        partition={"date": "{{ run_date }}"},
        output_asset=Asset("curator://nightly/batch-recipes"),
        run_key="{{ run_date }}",
        deferrable=True,
        poll_interval="{{ params.poll_seconds }}",
        batch_timeout=timedelta(hours=26),
    )


@dag(
    schedule="0 1 * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["curator", "example", "batch"],
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
)
def curator_nightly_batch_steps() -> None:
    llm = recipe_llm()
    prepare = CuratorPrepareOperator(
        task_id="prepare",
        llm=llm,
        dataset=[{"cuisine": name} for name in CUISINES],
        working_dir="{{ params.working_dir }}",
        run_key="{{ run_date }}-steps",
    )
    shards = prepare.output
    submit = CuratorSubmitBatchOperator.partial(task_id="submit", run=prepare.output["run"]).expand(
        shard=shards
    )
    wait = CuratorBatchSensor.partial(
        task_id="wait",
        run=prepare.output["run"],
        mode="reschedule",
        poke_interval=POKE_SECONDS,
        batch_timeout=timedelta(hours=26),
    ).expand(shard=shards)
    collect = CuratorCollectOperator.partial(
        task_id="collect", run=prepare.output["run"], deferrable=False, poll_interval=POKE_SECONDS
    ).expand(shard=shards)
    publish = CuratorFinalizeOperator(
        task_id="publish",
        run=prepare.output["run"],
        llm=llm,
        output_uri="{{ params.output_root }}/batch-recipes-steps",
        partition={"date": "{{ run_date }}"},
    )
    submit >> wait >> collect >> publish


nightly_batch = curator_nightly_batch()
nightly_batch_steps = curator_nightly_batch_steps()
