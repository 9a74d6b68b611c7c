"""Granular batch operators through ``dag.test()``: prepare → submit → a deferrable sensor →
collect → finalize, one mapped task per shard."""

from __future__ import annotations

from pathlib import Path

from airflow_runs import load_dag, run_dag, task_instances, xcom

DAG_FILE = Path(__file__).parents[1] / "dags" / "provider_test_dags.py"


def test_batch_steps_one_task_per_shard(fsim, curator_conn, tmp_path):
    dag = load_dag(DAG_FILE, "curator_test_batch_steps")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=7)
    tis = task_instances(dr)
    assert {str(ti.state) for ti in tis.values()} == {"success"}
    assert xcom(dr, "prepare") == ["00000", "00001"]
    for task_id in ("submit", "wait", "collect"):
        assert [tis[(task_id, i)].rendered_map_index for i in range(2)] == ["00000", "00001"]
    submitted = [xcom(dr, "submit", i) for i in range(2)]
    assert [s["requests"] for s in submitted] == [4, 3] and all(s["batch_id"] for s in submitted)
    assert xcom(dr, "wait", 1)["outcome"] == "ended"
    assert xcom(dr, "collect", 0)["succeeded"] == 4
    assert xcom(dr, "finalize")["rows"] == 7
    assert fsim.stats()["batches_created"] == 2
