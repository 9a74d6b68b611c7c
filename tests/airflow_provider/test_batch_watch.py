"""The waiting state machine shared by the trigger, the sensor and reschedule mode."""

from __future__ import annotations

import botocore.exceptions
import httpx
import pytest

from airflow_provider.batch_watch import BatchWatch, shard_outcome
from airflow_provider.compat import AirflowException, AirflowNotFoundException
from curator_flows.errors import AuthenticationError, BatchStepError, EndpointUnreachableError


def state(shard, done, status="in_progress", submitted_at=1000.0, **counts):
    return {
        "shard": shard,
        "done": done,
        "state": "ended" if done else "submitted",
        "status": status,
        "batch_id": f"batch_{shard}",
        "request_counts": counts,
        "submitted_at": submitted_at,
    }


def test_waits_for_every_shard_and_reports_the_worst_outcome():
    watch = BatchWatch("/runs/r", ["a", "b", "c"], timeout=None)
    watch.observe(state("a", True, "completed"))
    watch.observe(state("b", True, "expired"))
    assert watch.outcome() is None and watch.pending() == ["c"]
    watch.observe(state("c", True, "failed"))
    event = watch.outcome()
    assert event["kind"] == "failed" and "shard c (batch batch_c, failed)" in event["message"]
    assert set(event["shards"]) == {"a", "b", "c"}


def test_outcomes_of_ended_batches():
    assert shard_outcome(state("a", True, "completed")) == "ended"
    assert shard_outcome(state("a", True, "expired")) == "expired"
    assert shard_outcome(state("a", True, "ended", expired=3)) == "expired"  # Anthropic
    assert shard_outcome(state("a", True, "ended", canceled=1)) == "cancelled"
    assert shard_outcome(state("a", True, "cancelled")) == "cancelled"
    assert shard_outcome(state("a", True, "rejected")) == "failed"


def test_deadline_counts_from_the_earliest_submit():
    watch = BatchWatch("/runs/r", ["a", "b"], timeout=100)
    watch.observe(state("a", False, submitted_at=1000.0))
    watch.observe(state("b", False, submitted_at=1050.0))
    assert watch.deadline == 1100.0
    assert watch.outcome(now=1099.0) is None
    assert watch.sleep_seconds(60, now=1090.0) == 10.0
    assert watch.outcome(now=1100.0)["kind"] == "timeout"


def test_poll_errors():
    watch = BatchWatch("/runs/r", ["a"], max_poll_errors=2)
    watch.poll_failed("a", EndpointUnreachableError("down"))
    watch.poll_failed("a", EndpointUnreachableError("down"))
    assert watch.outcome() is None  # two in a row tolerated
    watch.observe(state("a", False))  # a success resets the count
    for _ in range(3):
        watch.poll_failed("a", EndpointUnreachableError("down"))
    event = watch.outcome()
    assert event["kind"] == "error" and event["error"]["retryable"]
    assert event["error"]["consecutive_errors"] == 3
    watch = BatchWatch("/runs/r", ["a"], max_poll_errors=5)
    watch.poll_failed("a", AuthenticationError("401", status=401))
    assert watch.outcome()["error"]["retryable"] is False  # permanent: at once
    watch = BatchWatch("/runs/r", ["a"])
    watch.poll_failed("a", BatchStepError("shard a has no batch yet: call submit first"))
    assert watch.outcome()["kind"] == "resume"


@pytest.mark.parametrize(
    "exc",
    [
        OSError("SlowDown reading the batch record"),  # fsspec / s3fs
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3.local"),
        httpx.ConnectError("connection refused"),
        AirflowException("the API server answered 503"),
    ],
    ids=type,
)
def test_errors_from_outside_the_library_are_transient(exc):
    watch = BatchWatch("/runs/r", ["a"], max_poll_errors=2)
    watch.poll_failed("a", exc)
    watch.poll_failed("a", exc)
    assert watch.outcome() is None  # tolerated like an unreachable provider
    watch.poll_failed("a", exc)
    event = watch.outcome()
    assert event["kind"] == "error" and event["error"]["retryable"] is True


def test_a_missing_connection_is_permanent():
    watch = BatchWatch("/runs/r", ["a"], max_poll_errors=5)
    watch.fail(AirflowNotFoundException("The conn_id `curator_x` isn't defined"))
    assert watch.outcome()["error"]["retryable"] is False
