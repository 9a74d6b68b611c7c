"""Airflow: the nightly recipes build through the provider's batch API (half the online price).

Two DAGs over the same job:

- ``curator_nightly_batch``: one deferrable ``CuratorOperator``. It submits one batch per shard,
  frees its worker slot while the triggerer polls, collects on resume, resubmits what expired
  (a new deferral), then publishes Parquet as the night's partition (``date=<ds>``). A
  deadline 26 hours after the first submit cancels what is still running.
- ``curator_nightly_batch_steps``: the same steps as separate, mapped tasks (submit → a
  reschedule-mode sensor → collect → publish), for teams without a triggerer.

Without a ``curator_default`` connection both run against the embedded simulator. An Airflow
retry of any task resumes from the run directory: a shard's batch is never created twice.
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
PARAMS = {
    "working_dir": f"{ROOT}/runs",
    "output_root": f"{ROOT}/datasets",
    "poll_seconds": 30,
}
DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(minutes=1),
    "conn_id": "curator_default",
    "simulator_fallback": True,
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
        partition={"date": "{{ ds }}"},
        output_asset=Asset("curator://nightly/batch-recipes"),
        run_key="{{ ds }}",
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
        run_key="{{ ds }}-steps",
    )
    shards = prepare.output
    submit = CuratorSubmitBatchOperator.partial(task_id="submit", run=prepare.output["run"]).expand(
        shard=shards
    )
    wait = CuratorBatchSensor.partial(
        task_id="wait",
        run=prepare.output["run"],
        mode="reschedule",
        poke_interval=5,
        batch_timeout=timedelta(hours=26),
    ).expand(shard=shards)
    collect = CuratorCollectOperator.partial(
        task_id="collect", run=prepare.output["run"], deferrable=False, poll_interval=5
    ).expand(shard=shards)
    publish = CuratorFinalizeOperator(
        task_id="publish",
        run=prepare.output["run"],
        llm=llm,
        output_uri="{{ params.output_root }}/batch-recipes-steps",
        partition={"date": "{{ ds }}"},
    )
    submit >> wait >> collect >> publish


nightly_batch = curator_nightly_batch()
nightly_batch_steps = curator_nightly_batch_steps()
