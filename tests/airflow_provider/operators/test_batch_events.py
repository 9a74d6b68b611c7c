"""The batch wait loop of CuratorOperator, one step at a time: what ``execute`` defers to, and
what ``execute_complete`` does with every terminal event of the real trigger."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from airflow_env import TEST_KEY
from airflow_llms import FactWriter

from airflow_provider import (
    CuratorBatchCancelled,
    CuratorBatchFailed,
    CuratorBatchTimeout,
    CuratorBatchTrigger,
    CuratorOperator,
    CuratorPermanentError,
    CuratorPollError,
)
from airflow_provider.batch_watch import BatchWatch
from airflow_provider.compat import AirflowFailException, TaskDeferred
from curator_flows.errors import AuthenticationError, EndpointUnreachableError


def operator(tmp_path, rows: int = 10, **options) -> CuratorOperator:
    return CuratorOperator(
        task_id="facts",
        llm=FactWriter("gpt-4o-mini", batch=True, backend_params={"batch_size": 4}),
        dataset=[{"n": i} for i in range(rows)],
        working_dir=str(tmp_path / "wd"),
        run_key="night-1",
        conn_id="curator_test",
        poll_interval=0.05,
        **{"deferrable": True, **options},
    )


def deferral(call) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as caught:
        call()
    return caught.value


def first_event(trigger: CuratorBatchTrigger) -> dict:
    async def first():
        return await anext(trigger.run())

    return asyncio.run(first()).payload


def test_execute_submits_and_defers_to_the_batch_trigger(fsim, curator_conn, tmp_path):
    op = operator(tmp_path, batch_timeout=7200)
    deferred = deferral(lambda: op.execute({}))
    trigger = deferred.trigger
    assert isinstance(trigger, CuratorBatchTrigger)
    assert deferred.method_name == "execute_complete"
    assert trigger.shards == ["00000", "00001", "00002"]
    assert trigger.run_uri.startswith(str(tmp_path / "wd"))
    assert (trigger.conn_id, trigger.timeout, trigger.poll_interval) == ("curator_test", 7200, 0.05)
    assert fsim.stats()["batches_created"] == 3
    assert TEST_KEY not in json.dumps(trigger.serialize())
    # execute again (an Airflow retry): the same run, re-attached, no new batch
    again = deferral(lambda: operator(tmp_path).execute({}))
    assert again.trigger.run_uri == trigger.run_uri
    assert fsim.stats()["batches_created"] == 3


def test_ended_event_collects_and_finalizes(fsim, curator_conn, tmp_path):
    op = operator(tmp_path)
    trigger = deferral(lambda: op.execute({})).trigger
    event = first_event(trigger)
    assert event["kind"] == "ended"
    manifest = op.execute_complete({}, event)
    assert manifest["rows"] == 10 and manifest["failed"] == 0 and manifest["cost"] > 0
    json.dumps(manifest)


def test_partial_expiry_resubmits_only_the_missing_requests(fsim, curator_conn, tmp_path):
    fsim.configure(batch_expire_fraction=0.5)
    op = operator(tmp_path, rows=8)
    trigger = deferral(lambda: op.execute({})).trigger
    event = first_event(trigger)
    assert event["kind"] == "expired"
    fsim.configure(batch_expire_fraction=None)
    again = deferral(lambda: op.execute_complete({}, event))  # a new deferral, same run
    assert again.trigger.run_uri == trigger.run_uri
    manifest = op.execute_complete({}, first_event(again.trigger))
    assert manifest["rows"] == 8 and manifest["failed"] == 0
    sent = fsim.stats()["batch_items_by_prompt"]
    assert sum(sent.values()) == 8 + 4  # half of each batch of 4 expired and went again
    assert sorted(sent.values()) == [1] * 4 + [2] * 4


def test_failed_batch(fsim, curator_conn, tmp_path):
    fsim.configure(batch_fail_validation=True)
    op = operator(tmp_path, rows=4)
    event = first_event(deferral(lambda: op.execute({})).trigger)
    with pytest.raises(CuratorBatchFailed, match="failed") as caught:
        op.execute_complete({}, event)
    assert isinstance(caught.value, AirflowFailException)


def test_cancelled_batches(fsim, curator_conn, tmp_path):
    from curator_flows import steps

    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 60.0, "cancelling": 0.1})
    op = operator(tmp_path, rows=4)
    trigger = deferral(lambda: op.execute({})).trigger
    steps.cancel(trigger.run_uri, credentials={"api_key": TEST_KEY, "base_url": fsim.base_url})
    event = first_event(trigger)
    assert event["kind"] == "cancelled"
    with pytest.raises(CuratorBatchCancelled):
        op.execute_complete({}, event)


def test_deadline(fsim, curator_conn, tmp_path):
    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 60.0, "cancelling": 0.1})
    op = operator(tmp_path, rows=4, batch_timeout=0.2)
    event = first_event(deferral(lambda: op.execute({})).trigger)
    assert event["kind"] == "timeout" and event["cancelled"]
    with pytest.raises(CuratorBatchTimeout) as caught:
        op.execute_complete({}, event)
    assert caught.value.cancelled and isinstance(caught.value, AirflowFailException)
    assert fsim.stats()["batches_cancelled"] == 1


def test_poll_errors(fsim, curator_conn, tmp_path):
    op = operator(tmp_path, rows=4)
    run_uri = deferral(lambda: op.execute({})).trigger.run_uri
    watch = BatchWatch(run_uri, ["00000"], max_poll_errors=0)
    watch.poll_failed("00000", EndpointUnreachableError("no answer"))
    with pytest.raises(CuratorPollError) as caught:  # transient: Airflow retries the task
        op.execute_complete({}, watch.outcome())
    assert not isinstance(caught.value, AirflowFailException)
    watch.fail(AuthenticationError("401: invalid key", status=401), "00000")
    with pytest.raises(CuratorPermanentError):
        op.execute_complete({}, watch.outcome())


def test_resume_event_submits_what_has_no_batch(fsim, curator_conn, tmp_path):
    from curator_flows import steps

    op = operator(tmp_path, rows=4)
    llm = FactWriter("gpt-4o-mini", batch=True, backend_params={"batch_size": 4})
    run = steps.prepare(llm, [{"n": i} for i in range(4)], str(tmp_path / "wd"), run_key="night-1")
    event = first_event(CuratorBatchTrigger(run["run_uri"], ["00000"], conn_id="curator_test"))
    assert event["kind"] == "resume"
    assert deferral(lambda: op.execute_complete({}, event)).trigger.shards == ["00000"]
    assert fsim.stats()["batches_created"] == 1


def test_shard_lines_say_what_the_run_directory_holds(fsim, batch_run):
    """A re-run shard that has every response stored says so, not "0 succeeded"."""
    from airflow_provider.operators.batch import shard_line, stored_counts
    from curator_flows import steps

    run, llm, credentials = batch_run(rows=5, batch_size=5)
    op = CuratorOperator(task_id="t", llm=llm)
    state = steps.advance(run, "00000", llm=llm, credentials=credentials)
    assert "waiting for batch" in shard_line(state, None)
    for _ in range(200):
        if state["done"]:
            break
        time.sleep(0.05)
        state = steps.advance(run, "00000", llm=llm, credentials=credentials)
    assert state["state"] == "done" and state["written"] == 5
    line = shard_line(state, stored_counts(op, run["run_uri"], "00000", credentials))
    assert "5 succeeded, 0 failed, 0 pending of 5 requests stored" in line
    assert "5 results collected now" in line
    again = steps.advance(run, "00000", llm=llm, credentials=credentials)  # a re-run
    assert again["done"] and again["succeeded"] == 0  # what the old line printed
    line = shard_line(again, stored_counts(op, run["run_uri"], "00000", credentials))
    assert "done: 5 succeeded" in line and "collected now" not in line
