"""Batch DAGs under the provider's batch queue limit (OpenAI's enqueued token limit in the
simulator): shards that must wait are ``queued``; the deferrable trigger, the reschedule-mode
pokes and the submit → sensor → collect DAG all wait and submit them again, every row arriving
with no failure line."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow_runs import load_dag, run_dag, task_instances, xcom

DAG_FILE = Path(__file__).parents[1] / "dags" / "provider_test_dags.py"
#: "a fact about topic <n>": 12 tokens a request as the simulator counts them; shards of 4
#: hold 48, so the queue holds one shard at a time
LIMIT = 60


@pytest.mark.parametrize(
    "dag_id", ["curator_test_batch", "curator_test_batch_reschedule", "curator_test_batch_steps"]
)
def test_batch_dags_wait_for_room_in_the_providers_queue(fsim, curator_conn, tmp_path, dag_id):
    # batches long enough that the next shard's submit comes while the first one runs (the
    # steps DAG submits its mapped shards one task after another: give it more time, so a
    # loaded machine still overlaps them)
    running = 4.0 if dag_id == "curator_test_batch_steps" else 1.5
    timings = {"validating": 0.1, "in_progress": running, "finalizing": 0.1, "cancelling": 0.1}
    fsim.configure(batch_enqueued_token_limit=LIMIT, batch_timings=timings)
    dag = load_dag(DAG_FILE, dag_id)
    dr = run_dag(dag, working_dir=str(tmp_path), rows=10, run_key=f"queue-{dag_id}")
    assert {str(ti.state) for ti in task_instances(dr).values()} == {"success"}
    stats = fsim.stats()
    assert stats["peak_enqueued_tokens"] <= LIMIT
    assert stats["batch_queue_refusals"].get("openai", 0) >= 1  # it had to learn the limit
    if dag_id == "curator_test_batch_steps":
        summary = xcom(dr, "finalize")
    else:
        summary = xcom(dr, "facts")
    assert summary["rows"] == 10 and summary["failed"] == 0
