"""What every operator shares: LLM arguments, the dataset argument, the outlet asset, the
connection's defaults and provider, parallel shards, cancel on kill."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from airflow.sdk import Asset
from airflow_env import connection_json
from airflow_llms import Numbered

from airflow_provider import (
    CuratorOnlineShardOperator,
    CuratorOperator,
    CuratorPermanentError,
    CuratorVLLMOperator,
)
from airflow_provider.hooks.curator import CuratorHook
from airflow_provider.operators.base import call_with_context, default_asset, split_dataset
from airflow_provider.operators.steps import parallelism


def test_llm_arguments_are_checked_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="import path"):
        CuratorOperator(task_id="a", llm="no_colon_here")
    with pytest.raises(ValueError, match="llm_kwargs only goes"):
        CuratorOperator(task_id="b", llm=Numbered("gpt-4o-mini"), llm_kwargs={"x": 1})
    with pytest.raises(ValueError, match="API key"):
        CuratorOperator(
            task_id="c", llm="m:C", llm_kwargs={"backend_params": {"api_key": "sk-in-dag"}}
        )
    with pytest.raises(ValueError, match="import path"):
        CuratorVLLMOperator(
            task_id="d", run="/r", shard="0", llm=Numbered("gpt-4o-mini"), python="/py"
        )


def test_dataset_argument():
    rows = [{"n": "{{ not a template }}"}]
    templated, call = split_dataset(rows)
    assert call is None and templated.value == rows  # rows are data, never rendered
    assert split_dataset("s3://b/in.parquet") == ("s3://b/in.parquet", None)

    def rows_for(params, ds):
        return [{"n": params["n"], "ds": ds}]

    assert split_dataset(rows_for) == (None, rows_for)
    context = {"params": {"n": 3}, "ds": "2026-01-01", "ti": object()}
    assert call_with_context(rows_for, context) == [{"n": 3, "ds": "2026-01-01"}]
    assert call_with_context(lambda **kw: sorted(kw), context) == ["ds", "params", "ti"]


def test_outlet_asset_of_the_output_uri():
    assert default_asset("s3://b/recipes", None) == Asset("s3://b/recipes")
    assert default_asset("s3://b/recipes/{{ run_date }}", None) == Asset("s3://b/recipes")
    assert default_asset("/data/recipes/{{ run_date }}", None) == Asset("file:///data/recipes")
    assert default_asset("/data/recipes", None) == Asset("file:///data/recipes")
    assert default_asset(None, "curator://x") == Asset("curator://x")
    # a templated prefix: the params' defaults (what the DAG is parsed with)
    templated = "{{ params.root }}/recipes/{{ run_date }}"
    assert default_asset(templated, None) is None
    assert default_asset(templated, None, {"root": "s3://b/d"}) == Asset("s3://b/d/recipes")
    assert default_asset(templated, None, {"root": "/data"}) == Asset("file:///data/recipes")
    assert default_asset("{{ params['root'] }}/x", None, {"root": "/d"}) == Asset("file:///d/x")
    assert default_asset(templated, None, {"root": "relative"}) is None
    op = CuratorOperator(
        task_id="t", llm=Numbered("gpt-4o-mini"), output_uri="s3://b/out/{{ run_date }}"
    )
    assert op.outlets == [Asset("s3://b/out")]


def test_every_published_output_gets_an_asset_at_parse_time():
    from airflow.sdk import DAG

    with DAG("assets", schedule=None, params={"root": "/data"}):
        from_params = CuratorOperator(
            task_id="p",
            llm=Numbered("gpt-4o-mini"),
            output_uri="{{ params.root }}/x/{{ run_date }}",
        )
        only_at_run_time = CuratorOperator(
            task_id="v", llm=Numbered("gpt-4o-mini"), output_uri="{{ var.value.root }}/x"
        )
        unpublished = CuratorOperator(task_id="n", llm=Numbered("gpt-4o-mini"))
    assert from_params.outlets == [Asset("file:///data/x")]
    assert only_at_run_time.outlets == [Asset("curator://assets/v")]  # named after the task
    assert unpublished.outlets == []


def test_example_outputs_have_assets():
    from dags_examples import airflow_nightly_batch, airflow_vllm_gpu

    root = airflow_nightly_batch.ROOT
    publish = airflow_nightly_batch.nightly_batch_steps.task_dict["publish"]
    assert publish.outlets == [Asset(f"file://{root}/datasets/batch-recipes-steps")]
    cuisines = airflow_vllm_gpu.vllm_gpu.task_dict["cuisines"]
    assert cuisines.outlets == [Asset(f"file://{root}/datasets/vllm-cuisines")]


def test_parallel_shards_follow_the_prepared_run(tmp_path):
    from curator_flows import steps

    llm = Numbered("gpt-4o-mini", backend_params={"shard_size": 4})
    run = steps.prepare(llm, [{"n": i} for i in range(22)], str(tmp_path))
    run_uri = run["run_uri"]
    assert len(run["shards"]) == 6
    assert parallelism(run_uri, None, None) == 6  # from the run directory, given only a URI
    assert parallelism(run_uri, 4, None) == 4  # max_active_tis_per_dag caps it
    assert parallelism(run_uri, 4, "2") == 2  # explicit (a rendered template) wins
    op = CuratorOnlineShardOperator(task_id="s", run=run, shard="0")
    assert op.map_index_template == "{{ task.shard }}"


def test_connection_defaults_and_provider(fsim, monkeypatch, tmp_path):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CURATOR_ANTHROPIC", connection_json(fsim, provider="anthropic")
    )
    op = CuratorOperator(
        task_id="mismatch", llm=Numbered("gpt-4o-mini"), conn_id="curator_anthropic"
    )
    with pytest.raises(CuratorPermanentError, match="provider 'anthropic'"):
        op.execute({})
    monkeypatch.setenv(
        "AIRFLOW_CONN_CURATOR_LIMITS",
        connection_json(fsim, backend_params=json.dumps({"max_requests_per_minute": 123})),
    )
    op = CuratorOperator(
        task_id="path",
        llm="airflow_llms:Numbered",
        llm_kwargs={"model_name": "gpt-4o-mini", "backend_params": {"shard_size": 2}},
        conn_id="curator_limits",
    )
    llm = op.make_llm(op.llm, op.llm_kwargs)
    assert llm.backend_params == {"max_requests_per_minute": 123, "shard_size": 2}
    with pytest.raises(CuratorPermanentError, match="cannot be imported"):
        op.make_llm("airflow_llms:Missing", {})


def test_connection_lookup_errors(fsim, monkeypatch, tmp_path):
    def operator(conn_id: str) -> CuratorOperator:
        rows = [{"n": 1}]
        llm = Numbered("gpt-4o-mini")
        return CuratorOperator(
            task_id="t", llm=llm, dataset=rows, working_dir=str(tmp_path), conn_id=conn_id
        )

    def timing_out(cls, conn_id):  # e.g. the Execution API or a secrets backend not answering
        raise httpx.ReadTimeout("the secrets backend did not answer")

    with monkeypatch.context() as patched:
        patched.setattr(CuratorHook, "get_connection", classmethod(timing_out))
        with pytest.raises(httpx.ReadTimeout):  # raised as is: Airflow retries the task
            operator("curator_test").execute({})
    with pytest.raises(CuratorPermanentError, match="'curator_nowhere' does not exist"):
        operator("curator_nowhere").execute({})
    monkeypatch.setenv(
        "AIRFLOW_CONN_CURATOR_BAD", connection_json(fsim, storage_options="{not json")
    )
    with pytest.raises(CuratorPermanentError, match="storage_options extra is not valid JSON"):
        operator("curator_bad").execute({})
    assert fsim.stats()["requests"] == 0


@pytest.mark.parametrize("default_deferrable", ["true", "false"])
def test_deferrable_follows_airflows_default_deferrable(default_deferrable):
    import subprocess
    import sys

    code = (
        "import json\n"
        "from airflow_provider import CuratorBatchSensor, CuratorCollectOperator, "
        "CuratorOperator\n"
        "ops = [CuratorOperator(task_id='a', llm='m:C'),\n"
        "       CuratorCollectOperator(task_id='c', run='/r', shard='0'),\n"
        "       CuratorBatchSensor(task_id='s', run='/r', shard='0')]\n"
        "print(json.dumps([op.deferrable for op in ops]))\n"
    )
    env = {**os.environ, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": default_deferrable}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    expected = default_deferrable == "true"
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [expected] * 3
