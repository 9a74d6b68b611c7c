"""CuratorOperator through real ``dag.test()`` runs against the simulator."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from airflow_runs import load_dag, run_dag, states, task_instances, xcom

DAG_FILE = Path(__file__).parents[1] / "dags" / "provider_test_dags.py"


def when(sim, predicate, **changes) -> threading.Thread:
    """Reconfigure ``sim`` as soon as ``predicate(stats)`` holds (a background watcher)."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if predicate(sim.stats()):
                sim.configure(**changes)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_batch_job_defers_then_collects_and_finalizes(fsim, curator_conn, tmp_path):
    dag = load_dag(DAG_FILE, "curator_test_batch")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=10)
    assert states(dr) == {("facts", -1): "success"}
    manifest = xcom(dr, "facts")
    assert manifest["rows"] == 10 and manifest["failed"] == 0
    assert manifest["input_tokens"] > 0 and manifest["cost"] > 0
    assert manifest["simulated"] is False  # a real connection (here to a simulator's URL)
    stats = fsim.stats()
    assert stats["batches_created"] == 3  # 10 requests in batches of 4
    assert all(count == 1 for count in stats["batch_items_by_prompt"].values())


def test_a_retry_right_after_submit_reattaches(fsim, curator_conn, tmp_path):
    dag = load_dag(DAG_FILE, "curator_test_batch_retry")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=10)
    ti = task_instances(dr)[("facts", -1)]
    assert str(ti.state) == "success" and ti.try_number == 2  # failed once, retried
    stats = fsim.stats()
    assert stats["batches_created"] == 3
    assert sorted(stats["batches_by_run_shard"].values()) == [1, 1, 1]  # one batch per shard
    assert sum(stats["batch_items_by_prompt"].values()) == 10  # no request sent twice
    assert xcom(dr, "facts")["rows"] == 10


def test_partial_expiry_resubmits_only_the_missing_requests(fsim, curator_conn, tmp_path):
    fsim.configure(batch_expire_fraction=0.5)
    watcher = when(fsim, lambda s: s["batches_created"] >= 3, batch_expire_fraction=None)
    dag = load_dag(DAG_FILE, "curator_test_batch")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=10)
    watcher.join(timeout=1)
    assert states(dr) == {("facts", -1): "success"}
    assert xcom(dr, "facts")["rows"] == 10
    sent = fsim.stats()["batch_items_by_prompt"]
    expired = [prompt for prompt, count in sent.items() if count == 2]
    assert len(sent) == 10 and set(sent.values()) == {1, 2}
    assert len(expired) == 2 + 2 + 1  # floor(n/2) of each first-round batch (4, 4, 2) expired
    assert fsim.stats()["batches_created"] == 6  # a second round for the three shards


def test_reschedule_mode_without_a_triggerer(fsim, curator_conn, tmp_path):
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    dag = load_dag(DAG_FILE, "curator_test_batch_reschedule")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=6)
    ti = task_instances(dr)[("facts", -1)]
    assert str(ti.state) == "success" and ti.try_number == 1
    assert xcom(dr, "facts")["rows"] == 6
    with create_session() as session:
        reschedules = session.scalar(
            select(func.count(TaskReschedule.id)).where(TaskReschedule.ti_id == ti.id)
        )
    assert reschedules >= 1
    assert fsim.stats()["batches_created"] == 2
    # only the first poke prepared the run (read the inputs); the later ones only polled it
    assert Path(f"{tmp_path}.reads").read_text().count("read") == 1
    assert not list(tmp_path.glob("_airflow/**/*.json"))  # the try's pointer is gone


def test_reschedule_mode_deadline_cancels_a_batch_that_never_ends(fsim, curator_conn, tmp_path):
    from curator_flows import steps

    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 600.0, "cancelling": 0.1})
    dag = load_dag(DAG_FILE, "curator_test_batch_reschedule_deadline")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=6)
    ti = task_instances(dr)[("facts", -1)]
    # CuratorBatchTimeout fails the task without the retry it has (retries=1)
    assert str(ti.state) == "failed" and ti.try_number == 1
    stats = fsim.stats()
    assert stats["batches_created"] == 2 and stats["batches_cancelled"] == 2
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "_airflow"]
    assert steps.status(str(run_dir))["cancelled"]


def test_a_permanent_error_is_not_retried(fsim, curator_conn, tmp_path):
    fsim.configure(require_api_key="sk-a-different-key")  # every request: 401
    dag = load_dag(DAG_FILE, "curator_test_online")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=5)
    ti = task_instances(dr)[("numbers", -1)]
    assert str(ti.state) == "failed"
    assert ti.try_number == 1  # retries=2, yet no retry: AirflowFailException
    assert fsim.stats()["status_counts"].get("401", 0) >= 1
    assert fsim.stats()["chat_completions"] == 0


def test_online_job_emits_an_asset_event_with_rows_tokens_and_cost(fsim, curator_conn, tmp_path):
    from airflow_runs import asset_events

    dag = load_dag(DAG_FILE, "curator_test_online")
    before = len(asset_events("curator://test/numbers"))
    dr = run_dag(dag, working_dir=str(tmp_path), rows=7)
    manifest = xcom(dr, "numbers")
    assert manifest["rows"] == 7 and fsim.stats()["chat_completions"] == 7
    events = asset_events("curator://test/numbers")
    assert len(events) == before + 1
    extra = events[-1]
    assert extra["rows"] == 7 and extra["run_uri"] == manifest["run_uri"]
    assert extra["input_tokens"] == manifest["input_tokens"] > 0
    assert extra["cost"] == manifest["cost"] > 0


def test_past_max_failed_fraction_the_task_fails_and_publishes_nothing(
    fsim, curator_conn, tmp_path
):
    from curator_flows.publish import read_marker

    output_uri = str(tmp_path / "published" / "numbers")
    dag = load_dag(DAG_FILE, "curator_test_publish_gate")
    conf = {"working_dir": str(tmp_path / "wd"), "rows": 20, "output_uri": output_uri}
    fsim.configure(faults={"500": 0.3})  # about 30% of the requests fail
    dr = run_dag(dag, **conf)
    ti = task_instances(dr)[("numbers", -1)]
    assert str(ti.state) == "failed"
    assert not (Path(output_uri) / "_SUCCESS").exists()  # nothing published
    failed = fsim.stats()["status_counts"]["500"]
    assert 3 <= failed <= 10
    fsim.configure(faults=None)  # the provider recovered: the next run sends the failed ones
    before = fsim.stats()["chat_completions"]
    dr = run_dag(dag, **conf)
    assert states(dr) == {("numbers", -1): "success"}
    assert fsim.stats()["chat_completions"] - before == failed
    assert xcom(dr, "numbers")["failures_by_reason"] == {}
    assert read_marker(output_uri, {})["rows"] == 20


def test_xcom_holds_the_manifest_and_the_keys_downstream_tasks_read(fsim, curator_conn, tmp_path):
    from airflow_runs import xcom_keys

    dag = load_dag(DAG_FILE, "curator_test_online")
    dr = run_dag(dag, working_dir=str(tmp_path), rows=3)
    assert xcom_keys(dr, "numbers") == ["output_uri", "return_value", "run_uri"]
    manifest = xcom(dr, "numbers")
    assert manifest["rows"] == 3 and {"cost", "input_tokens", "simulated"} <= set(manifest)
    assert xcom(dr, "numbers", key="run_uri") == manifest["run_uri"]
    assert xcom(dr, "numbers", key="output_uri") == manifest["output_uri"]
