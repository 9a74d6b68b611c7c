"""CuratorOperator through real ``dag.test()`` runs against the simulator."""

from __future__ import annotations

from pathlib import Path

from airflow_runs import load_dag, run_dag, states, task_instances, xcom

DAG_FILE = Path(__file__).parents[1] / "dags" / "provider_test_dags.py"


def test_batch_job_defers_then_collects_and_finalizes(fsim, curator_conn, tmp_path):
    dag = load_dag(DAG_FILE, "curator_test_batch")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=10)
    assert states(dr) == {("facts", -1): "success"}
    manifest = xcom(dr, "facts")
    assert manifest["rows"] == 10 and manifest["failed"] == 0
    assert manifest["input_tokens"] > 0 and manifest["cost"] > 0
    stats = fsim.stats()
    assert stats["batches_created"] == 3  # 10 requests in batches of 4
    assert all(count == 1 for count in stats["batch_items_by_prompt"].values())
