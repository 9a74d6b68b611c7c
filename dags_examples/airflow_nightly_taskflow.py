"""Airflow, TaskFlow: the nightly online build, cuisines → recipes, as two ``@task.curator``
functions (the generators of ``dags_examples/generators.py``).

    cuisines (the rows to prompt with; published as the night's partition)
      → recipes (its dataset is the cuisines' published output: the function gets the
        upstream manifest and returns its ``output_uri``)

Each ``@task.curator`` function returns its dataset (rows, a URI, or an upstream task's output)
and runs as a ``CuratorOperator``: the same arguments, resume, manifest XCom and outlet asset.
Every task calls the provider of the ``curator_default`` connection (the tests set it to the
embedded simulator: no key, no network). ``{{ run_date }}`` (the logical date, else the date of
the run's ``run_after``) is each night's ``run_key`` and partition, also in runs triggered
without a logical date; a retry of the same night resumes its runs. Paths come from the DAG
params (defaults: ``$CURATOR_EXAMPLES_ROOT`` or ``~/curator-flows/airflow``). Importing this
file imports no LLM client library.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, dag, task

from dags_examples.generators import CuisineGenerator, RecipeGenerator

MODEL = "gpt-4o-mini"
ROOT = os.environ.get("CURATOR_EXAMPLES_ROOT") or str(Path.home() / "curator-flows" / "airflow")


@dag(
    schedule="0 3 * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["curator", "example", "taskflow"],
    params={"working_dir": f"{ROOT}/runs", "output_root": f"{ROOT}/datasets", "prompts": 1},
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "conn_id": "curator_default",
    },
    doc_md=__doc__,
)
def curator_nightly_taskflow() -> None:
    @task.curator(
        llm=CuisineGenerator(MODEL),
        working_dir="{{ params.working_dir }}",
        output_uri="{{ params.output_root }}/taskflow-cuisines",
        partition={"date": "{{ run_date }}"},
        output_asset=Asset("curator://nightly/taskflow-cuisines"),
        run_key="{{ run_date }}",
    )
    def cuisines(params: dict[str, Any]) -> list[dict[str, int]]:
        """Each cuisine request returns a list of cuisines (one row each)."""
        return [{"prompt_no": i} for i in range(int(params["prompts"]))]

    @task.curator(
        llm=RecipeGenerator(MODEL),
        working_dir="{{ params.working_dir }}",
        output_uri="{{ params.output_root }}/taskflow-recipes",
        partition={"date": "{{ run_date }}"},
        output_asset=Asset("curator://nightly/taskflow-recipes"),
        run_key="{{ run_date }}",
    )
    def recipes(published: dict[str, Any]) -> str:
        """One recipe per cuisine the upstream task published (returning the manifest itself
        would read the upstream run's output instead)."""
        return published["output_uri"]

    recipes(cuisines())


nightly_taskflow = curator_nightly_taskflow()
