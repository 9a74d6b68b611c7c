"""Airflow: the nightly online build, cuisines → recipes (the generators of
``dags_examples/generators.py``).

    cuisines (CuratorOperator: one task, published)
      → prepare_recipes (the cuisines' output URI is the dataset)
      → recipes (one mapped task per shard, sharing the provider's rate limit)
      → publish_recipes (Parquet in the night's partition ``recipes/date=<run_date>/``; an asset
        event with rows, cost and the schema contract)

Every task calls the provider of the ``curator_default`` connection (``make demo-airflow`` sets
it to the embedded simulator: no key, no network). ``{{ run_date }}`` (the logical date, else the
date of the run's ``run_after``, so runs triggered without a logical date have it too) is each
night's ``run_key``: a retry of the same night resumes its runs, the next night makes new ones.
Paths come from the DAG params (defaults: ``$CURATOR_EXAMPLES_ROOT`` or
``~/curator-flows/airflow``). Importing this file imports no LLM client library.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Asset, dag

from airflow_provider import (
    CuratorFinalizeOperator,
    CuratorOnlineShardOperator,
    CuratorOperator,
    CuratorPrepareOperator,
)
from dags_examples.generators import CuisineGenerator, RecipeGenerator

MODEL = "gpt-4o-mini"
ROOT = os.environ.get("CURATOR_EXAMPLES_ROOT") or str(Path.home() / "curator-flows" / "airflow")
CUISINES_ASSET = Asset("curator://nightly/cuisines")
RECIPES_ASSET = Asset("curator://nightly/recipes")


def build_dag(
    dag_id: str = "curator_nightly_online",
    *,
    cuisine_prompts: int = 1,
    recipe_shard_size: int = 2,
    max_active_shards: int = 4,
    schedule: str | None = "0 2 * * *",
) -> DAG:
    """The nightly online DAG. ``cuisine_prompts`` cuisine requests (each returns a list of
    cuisines), recipes in shards of ``recipe_shard_size`` requests, at most
    ``max_active_shards`` shard tasks at once (each gets that share of the rate limit)."""

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=["curator", "example"],
        params={"working_dir": f"{ROOT}/runs", "output_root": f"{ROOT}/datasets"},
        default_args={
            "retries": 2,
            "retry_delay": timedelta(seconds=30),
            "conn_id": "curator_default",
        },
        doc_md=__doc__,
    )
    def nightly_online() -> None:
        cuisines = CuratorOperator(
            task_id="cuisines",
            llm=CuisineGenerator(MODEL),
            dataset=[{"prompt_no": i} for i in range(cuisine_prompts)],
            working_dir="{{ params.working_dir }}",
            output_uri="{{ params.output_root }}/cuisines",
            partition={"date": "{{ run_date }}"},  # .../cuisines/date=2026-12-04/: one table
            output_asset=CUISINES_ASSET,
            run_key="{{ run_date }}",
        )
        recipe_llm = RecipeGenerator(MODEL, backend_params={"shard_size": recipe_shard_size})
        prepare = CuratorPrepareOperator(
            task_id="prepare_recipes",
            llm=recipe_llm,
            dataset=cuisines.output["output_uri"],
            working_dir="{{ params.working_dir }}",
            run_key="{{ run_date }}",
        )
        shards = CuratorOnlineShardOperator.partial(
            task_id="recipes",
            run=prepare.output["run"],
            llm=recipe_llm,
            max_active_tis_per_dag=max_active_shards,
        ).expand(shard=prepare.output)
        publish = CuratorFinalizeOperator(
            task_id="publish_recipes",
            run=prepare.output["run"],
            llm=recipe_llm,
            output_uri="{{ params.output_root }}/recipes",
            partition={"date": "{{ run_date }}"},
            output_asset=RECIPES_ASSET,
        )
        shards >> publish

    return nightly_online()


curator_nightly_online = build_dag()
