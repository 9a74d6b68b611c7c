"""CuratorBatchSensor: poke until the batch ended; failed and timed-out batches raise their own
exceptions; deferrable mode hands the wait to the trigger."""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta

import pytest
from airflow.sdk import PokeReturnValue

from airflow_provider import (
    CuratorBatchFailed,
    CuratorBatchSensor,
    CuratorBatchTimeout,
    CuratorBatchTrigger,
    CuratorPermanentError,
)
from airflow_provider.compat import TaskDeferred


def sensor(run, shard="00000", **options) -> CuratorBatchSensor:
    return CuratorBatchSensor(
        task_id="wait", run=run, shard=shard, conn_id="curator_test", **options
    )


def poke_until(s: CuratorBatchSensor, seconds: float = 30):
    deadline = time.monotonic() + seconds
    pokes = 0
    while time.monotonic() < deadline:
        pokes += 1
        outcome = s.poke({})
        if outcome:
            return outcome, pokes
        time.sleep(0.1)
    raise AssertionError("the batch never ended")


def test_pokes_until_the_batch_ended(batch_run):
    run, _, _ = batch_run(rows=3, batch_size=4)
    outcome, pokes = poke_until(sensor(run))
    assert isinstance(outcome, PokeReturnValue) and pokes > 1
    assert outcome.xcom_value["outcome"] == "ended" and outcome.xcom_value["batch_id"]


def test_a_failed_batch_raises(fsim, batch_run):
    fsim.configure(batch_fail_validation=True)
    run, _, _ = batch_run(rows=3, batch_size=4)
    with pytest.raises(CuratorBatchFailed):
        poke_until(sensor(run))


def test_the_deadline_cancels_and_raises(fsim, batch_run):
    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 60.0, "cancelling": 0.1})
    run, _, _ = batch_run(rows=3, batch_size=4)
    with pytest.raises(CuratorBatchTimeout) as caught:
        poke_until(sensor(run, batch_timeout=0.3))
    assert caught.value.cancelled and fsim.stats()["batches_cancelled"] == 1


def test_the_deadline_counts_from_the_stored_submit_time(fsim, batch_run):
    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 60.0, "cancelling": 0.1})
    run, _, _ = batch_run(rows=3, batch_size=4)
    time.sleep(1.0)
    # a sensor started now (a retry, a restarted worker) does not get a new window
    assert sensor(run, batch_timeout=30).poke({}) is False
    with pytest.raises(CuratorBatchTimeout):
        sensor(run, batch_timeout=0.5).poke({})
    assert fsim.stats()["batches_cancelled"] == 1


def test_a_shard_without_a_batch_is_not_a_success(fsim, batch_run):
    run, _, _ = batch_run(rows=3, batch_size=4, submit=False)
    with pytest.raises(CuratorPermanentError, match="has no batch at the provider"):
        sensor(run).poke({})
    assert fsim.stats()["batches_created"] == 0  # the sensor never submits


def test_deferrable_hands_the_wait_to_the_trigger(batch_run):
    run, _, _ = batch_run(rows=6, batch_size=4)
    with pytest.raises(TaskDeferred) as caught:
        sensor(run, shard="00001", deferrable=True, poke_interval=7, timeout=600).execute({})
    trigger = caught.value.trigger
    assert isinstance(trigger, CuratorBatchTrigger)
    assert (trigger.shards, trigger.poll_interval) == (["00001"], 7.0)
    assert caught.value.method_name == "execute_complete"
    assert caught.value.timeout == timedelta(seconds=600)  # the sensor's timeout bounds it


def test_a_killed_poking_sensor_cancels_its_batch(fsim, batch_run):
    """Airflow kills the poking task (its ``execution_timeout``; a ``SIGTERM`` takes the same
    ``on_kill`` path in the task runner): the batch is cancelled at the provider."""
    from airflow_env import DAGS
    from airflow_runs import load_dag, run_dag, states

    fsim.configure(batch_timings={"validating": 0.1, "in_progress": 600.0, "cancelling": 0.1})
    run, _, _ = batch_run(rows=3, batch_size=4)
    dag = load_dag(DAGS / "provider_test_dags.py", "curator_test_poke_kill")
    dag_run = run_dag(dag, run_uri=run["run_uri"])
    assert states(dag_run) == {("wait", -1): "failed"}
    assert fsim.stats()["batches_cancelled"] == 1


def test_polls_that_all_fail_still_end_at_the_stored_deadline(batch_run, monkeypatch):
    """Every poll fails (the endpoint is unreachable) and each poke counts its errors afresh,
    as reschedule-mode pokes do: the deadline read from the run directory still ends the
    wait."""
    run, _, _ = batch_run(rows=3, batch_size=4)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    unreachable = {"conn_type": "curator", "host": f"http://127.0.0.1:{closed}/v1"}
    unreachable |= {"password": "k", "extra": {"provider": "openai"}}
    monkeypatch.setenv("AIRFLOW_CONN_CURATOR_TEST", json.dumps(unreachable))
    waiting = sensor(run, batch_timeout=0.5, max_poll_errors=3)
    # one transient poll error (of 3 allowed) and no successful poll: only the stored
    # submit time says the 0.5 s are over
    with pytest.raises(CuratorBatchTimeout) as caught:
        waiting.poke({})
    assert not caught.value.cancelled  # the cancel could not reach the provider either
