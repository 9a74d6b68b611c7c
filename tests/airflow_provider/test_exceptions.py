"""Library errors mapped onto Airflow's retry rules."""

from __future__ import annotations

import pytest

from airflow_provider.compat import AirflowException, AirflowFailException
from airflow_provider.exceptions import (
    CuratorBatchCancelled,
    CuratorBatchFailed,
    CuratorBatchTimeout,
    CuratorPermanentError,
    CuratorPollError,
    call_step,
)
from curator_flows.errors import (
    AuthenticationError,
    BatchDeadlineError,
    BatchStepError,
    BudgetExceededError,
    ConfigError,
    LeaseHeldError,
    RateLimitExhaustedError,
)


def fail_with(exc):
    def step():
        raise exc

    return step


@pytest.mark.parametrize(
    "exc",
    [
        ConfigError("bad backend_params"),
        AuthenticationError("401", status=401),
        BudgetExceededError("over", spent=2.0, budget=1.0),
    ],
)
def test_permanent_errors_fail_without_retry(exc):
    with pytest.raises(CuratorPermanentError) as caught:
        call_step(fail_with(exc))
    assert isinstance(caught.value, AirflowFailException)
    assert caught.value.error is exc and caught.value.__cause__ is exc


@pytest.mark.parametrize(
    "exc", [RateLimitExhaustedError("429s"), LeaseHeldError("busy"), TimeoutError("slow")]
)
def test_transient_errors_are_raised_as_they_are(exc):
    with pytest.raises(type(exc)) as caught:
        call_step(fail_with(exc))
    assert caught.value is exc and not isinstance(caught.value, AirflowFailException)


def test_the_three_ends_of_a_wait_are_distinct():
    kinds = [CuratorBatchTimeout("t"), CuratorBatchCancelled("c"), CuratorBatchFailed("f")]
    assert len({type(k) for k in kinds}) == 3
    for exc in kinds:
        assert isinstance(exc, AirflowFailException) and isinstance(exc, BatchStepError)
        assert exc.retryable is False
    assert isinstance(kinds[0], BatchDeadlineError)
    poll = CuratorPollError("p")
    assert isinstance(poll, AirflowException) and not isinstance(poll, AirflowFailException)
    assert poll.retryable
