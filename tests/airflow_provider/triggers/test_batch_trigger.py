"""CuratorBatchTrigger against the simulator, outside the triggerer: one event, the loop never
blocked, a deadline anchored in the run, poll errors tolerated, cancel on kill and timeout."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from airflow.triggers.base import TriggerEvent
from airflow_env import TEST_KEY

from airflow_provider.triggers.batch import CuratorBatchTrigger, kill_cancel_timeout
from curator_flows import steps
from curator_flows.errors import EndpointUnreachableError


def trigger_for(run, **options) -> CuratorBatchTrigger:
    options = {"conn_id": "curator_test", "poll_interval": 0.05, **options}
    return CuratorBatchTrigger(run["run_uri"], run["shards"], **options)


def events_of(trigger, *, slow: float = 0.1) -> tuple[list[TriggerEvent], list[str]]:
    """Every event the trigger yields (the generator run to its end) and the event loop's
    slow-callback reports (asyncio debug mode, anything holding the loop over ``slow`` s)."""
    reports: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "took" in record.getMessage() and "Executing" in record.getMessage():
                reports.append(record.getMessage())

    async def collect() -> list[TriggerEvent]:
        asyncio.get_running_loop().slow_callback_duration = slow
        return [event async for event in trigger.run()]

    handler = Catch()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        events = asyncio.run(collect(), debug=True)
    finally:
        logger.removeHandler(handler)
    return events, reports


def test_serialize_round_trip_holds_no_secret():
    from airflow.serialization.serialized_objects import BaseSerialization
    from airflow_moved import import_string

    trigger = CuratorBatchTrigger(
        "file:///runs/abc", ["00000", "00001"], conn_id="c", poll_interval=5, timeout=3600,
        embedded_simulator="123:http://127.0.0.1:1/v1",
    )  # fmt: skip
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider.triggers.batch.CuratorBatchTrigger"
    stored = json.dumps(BaseSerialization.serialize(kwargs))  # what the triggerer table holds
    again = import_string(classpath)(**BaseSerialization.deserialize(json.loads(stored)))
    assert again.serialize() == (classpath, kwargs)
    assert kwargs["timeout"] == 3600.0 and kwargs["shards"] == ["00000", "00001"]


def test_one_event_when_every_batch_ended_without_blocking_the_loop(batch_run, monkeypatch):
    run, _, _ = batch_run(rows=10, batch_size=4)
    real_poll = steps.poll

    def slow_poll(*args, **kwargs):  # a status request that takes its time
        time.sleep(0.25)
        return real_poll(*args, **kwargs)

    monkeypatch.setattr(steps, "poll", slow_poll)
    events, reports = events_of(trigger_for(run))
    assert [e.payload["kind"] for e in events] == ["ended"]  # exactly one event
    assert set(events[0].payload["shards"]) == set(run["shards"])
    assert reports == []

    class Blocking(CuratorBatchTrigger):  # the check can fail: a poll on the loop is caught
        async def _poll(self, shard, credentials):
            return steps.poll(self.run_uri, shard, credentials=credentials)

    blocking = Blocking(run["run_uri"], run["shards"], conn_id="curator_test")
    _, reports = events_of(blocking)
    assert reports, "a synchronous poll on the event loop must be reported"


def test_deadline_is_anchored_to_the_stored_submit_time(fsim, batch_run):
    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 60.0})
    run, _, _ = batch_run(rows=6, batch_size=3)
    time.sleep(0.6)
    # A trigger created now (a triggerer restart) with a 0.5 s deadline and a 60 s poll
    # interval ends at once: the deadline counts from the submit time stored in the run.
    started = time.monotonic()
    events, _ = events_of(trigger_for(run, timeout=0.5, poll_interval=60))
    assert time.monotonic() - started < 30
    (event,) = events
    assert event.payload["kind"] == "timeout" and event.payload["cancelled"] is True
    assert fsim.stats()["batches_cancelled"] == 2
    assert steps.status(run)["cancelled"]


def test_kinds_of_ended_batches(fsim, batch_run):
    fsim.configure(batch_expire_fraction=0.5)
    run, _, _ = batch_run(rows=4, batch_size=4)
    (event,), _ = events_of(trigger_for(run))
    assert event.payload["kind"] == "expired"
    fsim.configure(batch_expire_fraction=None, batch_fail_validation=True)
    run, _, _ = batch_run(rows=5, batch_size=4)
    (event,), _ = events_of(trigger_for(run))
    assert event.payload["kind"] == "failed"
    assert "failed" in event.payload["message"]


def test_transient_poll_errors_are_tolerated_then_reported(batch_run, monkeypatch):
    run, _, _ = batch_run(rows=4, batch_size=4)
    real_poll = steps.poll
    calls = {"n": 0, "fail": 2}

    def flaky_poll(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= calls["fail"]:
            raise EndpointUnreachableError("simulated: no answer", endpoint="batches")
        return real_poll(*args, **kwargs)

    monkeypatch.setattr(steps, "poll", flaky_poll)
    (event,), _ = events_of(trigger_for(run, max_poll_errors=3))
    assert event.payload["kind"] == "ended"  # two errors in a row are tolerated

    calls.update(n=0, fail=10**6)
    (event,), _ = events_of(trigger_for(run, max_poll_errors=3))
    assert event.payload["kind"] == "error" and calls["n"] == 4  # the 4th error in a row ends it
    assert event.payload["error"]["retryable"] is True


def test_a_permanent_poll_error_ends_at_once(fsim, batch_run, monkeypatch):
    from airflow_env import connection_json

    run, _, _ = batch_run(rows=4, batch_size=4)
    fsim.configure(require_api_key="sk-the-right-one")
    monkeypatch.setenv("AIRFLOW_CONN_CURATOR_TEST", connection_json(fsim, key="sk-wrong-key"))
    (event,), _ = events_of(trigger_for(run, max_poll_errors=50))
    assert event.payload["kind"] == "error"
    assert event.payload["error"]["retryable"] is False
    assert "sk-wrong-key" not in json.dumps(event.payload)


def test_on_kill_cancels_the_live_batches(fsim, batch_run):
    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 60.0})
    run, _, _ = batch_run(rows=8, batch_size=4)
    asyncio.run(trigger_for(run).on_kill())
    assert fsim.stats()["batches_cancelled"] == 2
    asyncio.run(trigger_for(run, cancel_on_kill=False).on_kill())
    assert fsim.stats()["batches_cancelled"] == 2


def test_a_missing_connection_is_a_permanent_error(batch_run):
    run, _, _ = batch_run(rows=2, submit=False)
    (event,), _ = events_of(trigger_for(run, conn_id="curator_nowhere"))
    assert event.payload["kind"] == "error" and not event.payload["error"]["retryable"]
    assert "'curator_nowhere' does not exist" in event.payload["message"]


def test_the_embedded_simulator_of_another_process_is_a_permanent_error(batch_run, monkeypatch):
    """A task that submitted to its process's embedded simulator, watched by a trigger in
    another process (a real triggerer): that simulator never saw the batches."""
    from airflow_provider.hooks.embedded import (
        EMBEDDED_CONNECTION,
        embedded_identity,
        embedded_simulator,
    )

    monkeypatch.setenv("AIRFLOW_CONN_CURATOR_EMBEDDED", EMBEDDED_CONNECTION)
    run, _, _ = batch_run(rows=2, submit=False)
    elsewhere = trigger_for(
        run, conn_id="curator_embedded", embedded_simulator="4242:http://127.0.0.1:9/v1"
    )
    (event,), _ = events_of(elsewhere)
    assert event.payload["kind"] == "error" and not event.payload["error"]["retryable"]
    message = event.payload["message"]
    assert "4242:http://127.0.0.1:9/v1" in message and "dag.test()" in message
    embedded_simulator()
    here = trigger_for(run, conn_id="curator_embedded", embedded_simulator=embedded_identity())
    (event,), _ = events_of(here)  # the same process: it polls (no batch yet: resume)
    assert event.payload["kind"] == "resume"


def test_a_kill_cancel_gives_up_within_the_triggerers_on_kill_timeout(fsim, batch_run, monkeypatch):
    from held_proxy import HeldProxy

    assert kill_cancel_timeout() == 25.0  # [triggerer] on_kill_timeout is 30 s by default
    monkeypatch.setenv("AIRFLOW__TRIGGERER__ON_KILL_TIMEOUT", "7")
    assert kill_cancel_timeout() == 2.0
    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 60.0})
    run, _, _ = batch_run(rows=4, batch_size=4)
    with HeldProxy(fsim) as provider:  # the provider does not answer the cancel request
        monkeypatch.setenv("AIRFLOW_CONN_CURATOR_TEST", json.dumps(
            {"conn_type": "curator", "host": provider.base_url, "password": TEST_KEY}
        ))  # fmt: skip
        loop = asyncio.new_event_loop()
        try:
            started = time.monotonic()
            cancelled = loop.run_until_complete(
                trigger_for(run)._cancel(None, kill_cancel_timeout())
            )
            elapsed = time.monotonic() - started
            assert provider.held.is_set()
            provider.release()  # the abandoned cancel thread finishes
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
    assert cancelled is False and 2.0 <= elapsed < 6.0


def test_on_kill_cancels_only_a_task_that_is_no_longer_deferred(fsim, batch_run):
    """Airflow calls ``on_kill`` for a user action and for a trigger reassigned to another
    triggerer alike; the task's real state (read through Airflow's task-states API inside a
    ``dag.test()`` task) tells them apart."""
    from airflow_env import DAGS
    from airflow_runs import load_dag, run_dag, states, xcom

    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 60.0})
    run, _, _ = batch_run(rows=3, batch_size=4)
    dag_run = run_dag(
        load_dag(DAGS / "provider_test_dags.py", "curator_test_trigger_kill"),
        run_uri=run["run_uri"],
    )
    assert states(dag_run)[("probe", -1)] == "success"
    # deferred (moved to another triggerer): left running; failed (a user's kill): cancelled
    assert xcom(dag_run, "probe") == [False, True]
    assert fsim.stats()["batches_cancelled"] == 1


@pytest.mark.timeout(60)
def test_a_task_state_read_that_never_answers_is_abandoned(monkeypatch):
    """The state read is Airflow's synchronous task-states call in a thread; one that never
    returns (a wedged API server) is given up at STATE_TIMEOUT, and nothing waits for its
    thread: the event loop that ran ``on_kill`` shuts down."""
    import threading
    from types import SimpleNamespace

    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from airflow_provider.triggers import batch as trigger_module

    wedged = threading.Event()
    monkeypatch.setattr(
        RuntimeTaskInstance, "get_task_states", staticmethod(lambda **_: wedged.wait())
    )
    monkeypatch.setattr(trigger_module, "STATE_TIMEOUT", 0.2)
    trigger = CuratorBatchTrigger("/nowhere", ["00000"], conn_id="curator_test")
    trigger.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)
    try:
        assert asyncio.run(trigger.task_state()) is None  # unknown: on_kill cancels
    finally:
        wedged.set()


def test_an_airflow_whose_triggerer_calls_no_on_kill_gets_one_line_not_an_error(
    batch_run, monkeypatch
):
    from airflow.triggers.base import BaseTrigger

    from airflow_provider.compat import triggerer_calls_on_kill

    run, _, _ = batch_run(rows=4, batch_size=4)

    def notes_of(trigger) -> list[str]:
        lines: list[str] = []
        monkeypatch.setattr(
            trigger.log, "warning", lambda msg, *a: lines.append(msg % a if a else msg)
        )
        (event,), _ = events_of(trigger)
        assert event.payload["kind"] == "ended"  # the wait itself is the same
        return [line for line in lines if "cancel_on_kill needs Airflow 3.3" in line]

    # this environment's Airflow: a note exactly when its triggerer calls no on_kill (< 3.3)
    expected = 0 if triggerer_calls_on_kill() else 1
    assert len(notes_of(trigger_for(run))) == expected
    # an Airflow before 3.3 (no BaseTrigger.on_kill): one line naming the run and what to do
    monkeypatch.delattr(BaseTrigger, "on_kill", raising=False)
    (note,) = notes_of(trigger_for(run))
    assert run["run_uri"] in note and "curator-flows cancel" in note
    assert notes_of(trigger_for(run, cancel_on_kill=False)) == []  # nothing to degrade
