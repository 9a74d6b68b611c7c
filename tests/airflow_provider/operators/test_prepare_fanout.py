"""``CuratorPrepareOperator`` fits the run into what Airflow can map: at most
``[core] max_map_length`` shards (Airflow refuses to expand a longer XCom list: "pushed value is
too large to map"), shards growing to fit."""

from __future__ import annotations

from pathlib import Path

from airflow_runs import load_dag, run_dag, task_instances, xcom

DAG_FILE = Path(__file__).parents[1] / "dags" / "provider_test_dags.py"


def test_an_online_run_fits_a_small_max_map_length(fsim, curator_conn, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")
    dag = load_dag(DAG_FILE, "curator_test_online_shards")  # shard_size=60: 5 shards for 300
    dr = run_dag(dag, working_dir=str(tmp_path), rows=300, run_key="fanout")
    states = {k: str(ti.state) for k, ti in task_instances(dr).items()}
    assert states == {
        ("prepare", -1): "success",
        **{("shard", i): "success" for i in range(3)},
        ("finalize", -1): "success",
    }
    assert xcom(dr, "prepare") == ["00000", "00001", "00002"]
    assert [xcom(dr, "shard", i)["succeeded"] for i in range(3)] == [100, 100, 100]
    assert xcom(dr, "finalize")["rows"] == 300
    assert len(fsim.stats()["by_prompt"]) == 300


def test_a_batch_run_fits_a_small_max_map_length(fsim, curator_conn, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    dag = load_dag(DAG_FILE, "curator_test_batch_steps")  # batch_size=4: 3 shards for 11
    dr = run_dag(dag, working_dir=str(tmp_path), rows=11, run_key="fanout")
    assert {str(ti.state) for ti in task_instances(dr).values()} == {"success"}
    assert xcom(dr, "prepare") == ["00000", "00001"]
    assert [xcom(dr, "submit", i)["requests"] for i in range(2)] == [6, 5]
    assert xcom(dr, "finalize")["rows"] == 11
    assert fsim.stats()["batches_created"] == 2
