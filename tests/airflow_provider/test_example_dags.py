"""The example DAGs end to end through ``dag.test()``: ``curator_default`` is the embedded
simulator (the explicit opt-in ``make demo-airflow`` uses), so every task talks to it; rows
checked in the published Parquet (under ``_simulated``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from airflow_env import REPO, SUPPORT
from airflow_runs import asset_events, load_dag, run_dag, task_instances, xcom

EXAMPLES = REPO / "dags_examples"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


@pytest.fixture(autouse=True)
def embedded_curator_default(monkeypatch):
    from airflow_provider.hooks.embedded import EMBEDDED_CONNECTION

    monkeypatch.setenv("AIRFLOW_CONN_CURATOR_DEFAULT", EMBEDDED_CONNECTION)
    monkeypatch.setenv("CURATOR_EXAMPLES_POKE_SECONDS", "0.2")  # read when the DAG is loaded


def embedded_stats() -> dict:
    from airflow_provider.hooks.embedded import embedded_simulator

    return embedded_simulator().stats()


def published(output_uri: str) -> tuple[dict, list[dict]]:
    """The ``_SUCCESS`` marker of a published dataset and its rows (the files it lists)."""
    import pyarrow.parquet as pq

    marker = json.loads(Path(output_uri, "_SUCCESS").read_text())
    rows = []
    for entry in marker["files"]:
        rows.extend(pq.read_table(Path(output_uri, entry["path"])).to_pylist())
    return marker, rows


def example(name: str, dag_id: str):
    """An example DAG with its retries off (a failure shows at once, not after retry delays)."""
    dag = load_dag(EXAMPLES / name, dag_id)
    for task in dag.tasks:
        task.retries = 0
    return dag


def conf(tmp_path, **extra) -> dict:
    return {"working_dir": str(tmp_path / "runs"), "output_root": str(tmp_path / "out"), **extra}


def test_nightly_batch(tmp_path):
    before = embedded_stats()["batches_created"]
    dag = example("airflow_nightly_batch.py", "curator_nightly_batch")
    dr = run_dag(dag, **conf(tmp_path, poll_seconds=0.2))
    assert {str(ti.state) for ti in task_instances(dr).values()} == {"success"}
    manifest = xcom(dr, "recipes")
    assert manifest["rows"] == 12 and manifest["failed"] == 0
    assert embedded_stats()["batches_created"] - before == 3  # 12 recipes, batches of 5
    marker, rows = published(manifest["output_uri"])
    assert marker["rows"] == 12 and len(rows) == 12
    assert manifest["output_uri"].endswith(dr.logical_date.strftime("%Y-%m-%d"))
    assert sorted(r["cuisine"] for r in rows) == sorted(
        __import__("dags_examples.airflow_nightly_batch", fromlist=["CUISINES"]).CUISINES
    )
    extra = asset_events("curator://nightly/batch-recipes")[-1]
    assert extra["rows"] == 12 and extra["output_uri"] == manifest["output_uri"]
    assert manifest["simulated"] is True and extra["simulated"] is True  # not a real bill
    # simulated rows never land where a real run publishes, nor in the real working dir
    real = tmp_path / "out" / "batch-recipes"  # the table; each night is a date= partition
    night = f"date={dr.logical_date.strftime('%Y-%m-%d')}"
    assert Path(manifest["output_uri"]) == tmp_path / "out" / "_simulated" / "batch-recipes" / night
    assert Path(manifest["run_uri"]).parent == tmp_path / "runs" / "_simulated"
    assert not real.exists()


@pytest.mark.parametrize(
    ("name", "dag_id", "task_id"),
    [
        ("airflow_nightly_online.py", "curator_nightly_online", "publish_recipes"),
        ("airflow_nightly_batch.py", "curator_nightly_batch", "recipes"),
        ("airflow_nightly_taskflow.py", "curator_nightly_taskflow", "recipes"),
    ],
)
def test_a_run_without_a_logical_date(tmp_path, name, dag_id, task_id):
    """What `airflow dags trigger` and the REST API with "logical_date": null create: no ds, so
    the night is the run's run_after date."""
    dag = example(name, dag_id)
    dr = dag.test(run_conf=conf(tmp_path, poll_seconds=0.2), logical_date=None)
    assert dr.logical_date is None
    assert {str(ti.state) for ti in task_instances(dr).values()} == {"success"}
    night = dr.run_after.strftime("%Y-%m-%d")
    manifest = xcom(dr, task_id)
    assert manifest["rows"] > 0 and "/_simulated/" in manifest["output_uri"]
    assert manifest["output_uri"].endswith(f"/date={night}")  # the night's partition
    run_manifest = json.loads(Path(manifest["run_uri"], "manifest.json").read_text())
    assert run_manifest["run_key"] == night


def test_nightly_batch_steps(tmp_path):
    dag = example("airflow_nightly_batch.py", "curator_nightly_batch_steps")
    dr = run_dag(dag, **conf(tmp_path))
    tis = task_instances(dr)
    assert {str(ti.state) for ti in tis.values()} == {"success"}
    assert [tis[("wait", i)].rendered_map_index for i in range(3)] == ["00000", "00001", "00002"]
    manifest = xcom(dr, "publish")
    _, rows = published(manifest["output_uri"])
    assert len(rows) == 12
    # "{{ params.output_root }}/...": the asset comes from the param's default
    root = load_dag(EXAMPLES / "airflow_nightly_batch.py", "curator_nightly_batch").params
    asset = f"file://{root['output_root']}/batch-recipes-steps"
    assert asset_events(asset)[-1]["output_uri"] == manifest["output_uri"]


def test_nightly_online_chains_cuisines_into_recipes(tmp_path):
    dag = example("airflow_nightly_online.py", "curator_nightly_online")
    dr = run_dag(dag, **conf(tmp_path))
    tis = task_instances(dr)
    assert {str(ti.state) for ti in tis.values()} == {"success"}
    cuisines = xcom(dr, "cuisines")
    _, cuisine_rows = published(cuisines["output_uri"])
    recipes = xcom(dr, "publish_recipes")
    _, recipe_rows = published(recipes["output_uri"])
    assert len(recipe_rows) == len(cuisine_rows) == cuisines["rows"] > 0
    assert sorted(r["cuisine"] for r in recipe_rows) == sorted(r["cuisine"] for r in cuisine_rows)
    assert all(r["title"] and r["ingredients"] for r in recipe_rows)
    shards = xcom(dr, "prepare_recipes")
    assert [tis[("recipes", i)].rendered_map_index for i in range(len(shards))] == shards
    extra = asset_events("curator://nightly/recipes")[-1]
    assert extra["rows"] == len(recipe_rows)
    # each night is the partition date=<ds> of one table, whose schema contract the event carries
    day = dr.logical_date.strftime("%Y-%m-%d")
    assert recipes["output_uri"].endswith(f"/recipes/date={day}")
    assert extra["partition"] == recipes["partition"] == {"date": day}
    assert extra["schema"]["columns"]["title"] == "string"
    assert extra["schema"] == recipes["schema"] and extra["invalid_rows"] == 0


def test_nightly_taskflow_chains_two_curator_tasks(tmp_path):
    dag = example("airflow_nightly_taskflow.py", "curator_nightly_taskflow")
    dr = run_dag(dag, **conf(tmp_path))
    assert {str(ti.state) for ti in task_instances(dr).values()} == {"success"}
    cuisines = xcom(dr, "cuisines")
    _, cuisine_rows = published(cuisines["output_uri"])
    recipes = xcom(dr, "recipes")
    _, recipe_rows = published(recipes["output_uri"])
    assert len(recipe_rows) == len(cuisine_rows) == cuisines["rows"] > 0
    assert sorted(r["cuisine"] for r in recipe_rows) == sorted(r["cuisine"] for r in cuisine_rows)
    assert all(r["title"] and r["ingredients"] for r in recipe_rows)
    day = dr.logical_date.strftime("%Y-%m-%d")
    assert recipes["output_uri"] == str(
        tmp_path / "out" / "_simulated" / "taskflow-recipes" / f"date={day}"
    )
    assert recipes["simulated"] is True
    extra = asset_events("curator://nightly/taskflow-recipes")[-1]
    assert extra["rows"] == len(recipe_rows) and extra["partition"] == {"date": day}


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="needs the vLLM venv (make vllm-venv)")
def test_vllm_gpu_runs_the_gpu_step_in_the_vllm_interpreter(tmp_path, monkeypatch):
    from curator_flows.testing.tiny_model import offline_vllm_env

    env = offline_vllm_env(tmp_path / "vllm")
    build = subprocess.run(  # the tiny model needs torch: built in the vLLM venv
        [
            str(VLLM_PYTHON),
            "-c",
            "import sys; from curator_flows.testing.tiny_model import build_tiny_llama; "
            "print(build_tiny_llama(sys.argv[1]))",
            str(tmp_path / "tiny-llama"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    model = build.stdout.strip().splitlines()[-1]
    monkeypatch.setenv("CURATOR_VLLM_MODEL", str(model))
    monkeypatch.setenv("CURATOR_VLLM_PYTHON", str(VLLM_PYTHON))
    monkeypatch.setenv("CURATOR_VLLM_ENV", json.dumps({**env, "PYTHONPATH": str(SUPPORT)}))
    monkeypatch.setenv("CURATOR_VLLM_LLM", "airflow_llms:TinyRecipeGenerator")
    params = {
        "max_model_length": 512,
        "max_tokens": 96,
        "enforce_eager": True,
        "progress": "log",
        "engine_kwargs": {"kv_cache_memory_bytes": 256 * 1024 * 1024, "dtype": "float32"},
    }
    monkeypatch.setenv("CURATOR_VLLM_PARAMS", json.dumps(params))
    dag = example("airflow_vllm_gpu.py", "curator_vllm_gpu")
    generate = dag.task_dict["generate"]
    assert (generate.partial_kwargs["queue"], generate.partial_kwargs["pool"]) == ("gpu", "gpu")
    dr = run_dag(dag, **conf(tmp_path))
    tis = task_instances(dr)
    assert {str(ti.state) for ti in tis.values()} == {"success"}, {
        k: str(ti.state) for k, ti in tis.items()
    }
    cuisines = xcom(dr, "cuisines")["rows"]
    result = xcom(dr, "generate", 0)
    assert result["succeeded"] == cuisines and result["failed"] == 0
    _, rows = published(xcom(dr, "publish_recipes")["output_uri"])
    assert len(rows) == cuisines and all(r["title"] for r in rows)
