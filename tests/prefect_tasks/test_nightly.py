"""The nightly example (``dags_examples/prefect_nightly.py``): cuisines → recipes chained
through the published output URI, its cron deployment, the GPU work pool deployment with job
variables, and ``"{scheduled_date}"`` run keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import prefect_api as api
import pytest
from flow_llms import Numbered


def test_the_nightly_build_chains_cuisines_into_recipes_through_the_output_uri(
    prefect_server, sim, tmp_path
):
    pytest.importorskip("curator_flows.publish", reason="finalize(output_uri=) publishing")
    pytest.importorskip("curator_flows.inputs", reason="datasets from URIs")
    import pyarrow.parquet as pq

    from dags_examples.prefect_nightly import nightly_recipes

    kwargs = {
        "run_date": "2026-11-27",
        "working_dir": str(tmp_path / "runs"),
        "output_root": str(tmp_path / "datasets"),
        "base_url": sim.base_url,
    }
    state = nightly_recipes(**kwargs, return_state=True)
    result = state.result()
    cuisines, recipes = result["cuisines"], result["recipes"]
    assert cuisines["rows"] > 0 and cuisines["failed"] == 0
    assert recipes["rows"] == cuisines["rows"] and recipes["failed"] == 0
    assert cuisines["output_uri"].endswith("cuisines/date=2026-11-27")  # a Hive partition
    names = pq.read_table(cuisines["output_uri"]).column("cuisine").to_pylist()
    table = pq.read_table(recipes["output_uri"])
    assert sorted(table.column("cuisine").to_pylist()) == sorted(names)
    assert all(table.column("title").to_pylist())
    for brief in (cuisines, recipes):
        marker = json.loads(
            (Path(brief["output_uri"].removeprefix("file://")) / "_SUCCESS").read_text()
        )
        assert marker["rows"] == brief["rows"]
    # the recipes table is an asset materialized from the cuisines table (every night's
    # partition is one more materialization), its schema contract in the event's metadata
    assert recipes["asset_uri"] == recipes["output_uri"].rsplit("/", 1)[0]
    events = api.events(
        "prefect.asset.materialization", resource_id=f"file://{recipes['asset_uri']}"
    )
    assert events and any(
        r["prefect.resource.id"] == f"file://{cuisines['asset_uri']}" for r in events[0]["related"]
    )
    assert events[0]["payload"]["schema"]["columns"]["cuisine"] == "string"
    assert events[0]["payload"]["partition"] == {"date": "2026-11-27"}
    # the runs list reads like the build's history: the night and its datasets
    parent = api.flow_run_id(state)
    assert api.flow_run(parent).name == "nightly-2026-11-27"
    assert sorted(run.name for run in api.subflow_runs(parent)) == [
        "nightly-cuisines-2026-11-27",
        "nightly-recipes-2026-11-27",
    ]
    sent = sim.stats()["requests"]
    again = nightly_recipes(**kwargs)  # the same night again: resumes, sends nothing
    assert again["recipes"]["rows"] == recipes["rows"] and sim.stats()["requests"] == sent


def test_the_nightly_deployment_runs_on_a_cron():
    from dags_examples.prefect_nightly import NIGHTLY_CRON, nightly_deployment

    deployment = nightly_deployment(base_url="http://127.0.0.1:8765/v1", credentials="openai")
    assert [s.schedule.cron for s in deployment.schedules] == [NIGHTLY_CRON]
    assert deployment.parameters == {
        "base_url": "http://127.0.0.1:8765/v1",
        "credentials": "openai",
    }
    apart = nightly_deployment(working_dir="/ui/runs", output_root="/ui/datasets")
    assert apart.parameters == {
        "base_url": None,
        "credentials": None,
        "working_dir": "/ui/runs",
        "output_root": "/ui/datasets",
    }


def test_the_gpu_deployment_asks_the_work_pool_for_gpus(prefect_server):
    from prefect.client.schemas.actions import WorkPoolCreate

    from dags_examples.prefect_nightly import deploy_gpu

    template = {  # a pool whose base job template maps gpu_count (see vllm_gpu_notes.md)
        "job_configuration": {
            "image": "{{ image }}",
            "env": "{{ env }}",
            "gpus": "{{ gpu_count }}",
        },
        "variables": {
            "type": "object",
            "properties": {
                "image": {"type": "string"},
                "env": {"type": "object"},
                "gpu_count": {"type": "integer", "default": 0},
            },
        },
    }
    with api.client() as client:
        client.create_work_pool(
            WorkPoolCreate(name="gpu-test", type="docker", base_job_template=template)
        )
    shard_id, parent_id = deploy_gpu(
        "gpu-test", image="registry.example.com/vllm:test", gpu_count=2
    )
    with api.client() as client:
        shard, parent = client.read_deployment(shard_id), client.read_deployment(parent_id)
    assert shard.work_pool_name == parent.work_pool_name == "gpu-test"
    assert shard.job_variables["gpu_count"] == 2 and "gpu" in shard.tags
    assert shard.entrypoint == "prefect_tasks/flows.py:curate_offline_shard"
    assert parent.parameters["shard_deployment"] == f"curate-offline-shard/{shard.name}"
    assert "{scheduled_date}" in parent.parameters["run_key"]
    assert "gpu_count" not in parent.job_variables


def test_a_scheduled_date_run_key_becomes_the_flow_runs_date(prefect_server, sim, wd):
    from prefect_tasks import curate

    llm = Numbered("gpt-4o-mini", backend_params={"base_url": sim.base_url, "progress": "off"})
    summary = curate(llm, [{"n": 1}], wd, run_key="nightly-{scheduled_date}")
    manifest = json.loads((Path(summary["run_uri"]) / "manifest.json").read_text())
    assert re.fullmatch(r"nightly-\d{4}-\d{2}-\d{2}", manifest["run_key"])
