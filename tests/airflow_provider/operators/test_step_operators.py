"""Granular operators: prepare → mapped online shards → finalize. The shards run at the same
time, in LocalExecutor processes (``dag.test(use_executor=True)`` with an API server)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from airflow_moved import airflow_at_least
from airflow_runs import load_dag, task_instances, xcom

DAG_FILE = Path(__file__).parents[1] / "dags" / "provider_test_dags.py"


@pytest.mark.skipif(
    not airflow_at_least("3.2"),
    reason="Airflow 3.1's dag.test(use_executor=True) loses task states (its executor reports "
    "tasks done that the API server still has queued or up for reschedule)",
)
def test_four_mapped_shards_at_once_hold_the_providers_limit(
    fsim, local_executor, db_connection, tmp_path
):
    # 300 RPM per shard: each shard sends for ~10 s, longer than starting four task processes
    # takes on a loaded machine, so they overlap
    fsim.configure(rpm=1200, latency=0.02)
    db_connection("curator_test", fsim)
    dag = load_dag(DAG_FILE, "curator_test_online_shards")
    conf = {"working_dir": str(tmp_path), "rows": 240, "run_key": f"conc-{time.time()}"}
    dr = dag.test(run_conf=conf, use_executor=True)
    tis = task_instances(dr)
    assert {k: str(ti.state) for k, ti in tis.items()} == {
        ("prepare", -1): "success",
        **{("shard", i): "success" for i in range(4)},
        ("finalize", -1): "success",
    }
    shard_names = xcom(dr, "prepare")
    assert shard_names == ["00000", "00001", "00002", "00003"]
    assert [tis[("shard", i)].rendered_map_index for i in range(4)] == shard_names
    # the four shard tasks ran at the same time, in separate processes
    shards = [tis[("shard", i)] for i in range(4)]
    assert max(ti.start_date for ti in shards) < min(ti.end_date for ti in shards)
    assert len({ti.pid for ti in shards}) == 4
    for i in range(4):
        result = xcom(dr, "shard", i)
        assert result["succeeded"] == 60
        assert result["limits"]["max_requests_per_minute"] <= 1200 / 4 + 1  # a quarter each
    assert xcom(dr, "finalize")["rows"] == 240
    stats = fsim.stats()
    assert len(stats["by_prompt"]) == 240 and set(stats["by_prompt"].values()) == {1}
    assert stats["rate_limited"] <= 8  # together they stayed within the 1,200 RPM
