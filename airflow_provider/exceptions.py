"""The exceptions the Airflow provider raises, and the one rule that maps library errors onto
Airflow's retry behaviour.

Invariants:
- permanent means :func:`is_permanent`: a library error whose ``retryable`` is ``False``, or a
  connection that does not exist; any other exception (an fsspec/botocore error, an HTTP client
  error, an Airflow API error) is transient;
- a permanent library error (``retryable`` is ``False``: bad config or input, 401/403/404, a
  schema never satisfied, the budget) becomes a :class:`CuratorPermanentError`, an
  ``AirflowFailException``: Airflow fails the task without retrying it;
- a transient one (429s past every retry, 5xx, timeouts, an unreachable endpoint, a shard
  leased by another worker) is re-raised as is: Airflow retries the task, and the retry resumes
  from the run directory;
- the end of a batch wait has three distinct types a DAG author can tell apart: the deadline
  (:class:`CuratorBatchTimeout`), a cancellation (:class:`CuratorBatchCancelled`) and a batch
  the provider failed (:class:`CuratorBatchFailed`); each is also the matching
  :mod:`curator_flows.errors` class, so ``except BatchStepError`` keeps working;
- messages never contain an API key (they are built from run URIs, shard names, batch ids and
  library error messages, which never hold one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from curator_flows.errors import BatchDeadlineError, BatchStepError, CuratorFlowsError

from .compat import AirflowException, AirflowFailException, AirflowNotFoundException

__all__ = [
    "CuratorBatchCancelled",
    "CuratorBatchFailed",
    "CuratorBatchTimeout",
    "CuratorPermanentError",
    "CuratorPollError",
    "call_step",
    "is_permanent",
    "raise_for",
    "wait_error",
]

T = TypeVar("T")


class CuratorPermanentError(AirflowFailException):
    """A library error a retry cannot fix; ``error`` is the original (also ``__cause__``)."""

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.retryable = False


class CuratorBatchTimeout(BatchDeadlineError, AirflowFailException):
    """The batches did not end before the operator's deadline (anchored to the time the current
    campaign's first batch was submitted); with ``cancel_on_timeout`` they were cancelled."""

    def __init__(self, message: str, *, cancelled: bool = False) -> None:
        BatchDeadlineError.__init__(self, message, retryable=False)
        self.cancelled = cancelled


class CuratorBatchCancelled(BatchStepError, AirflowFailException):
    """The run's batches were cancelled (``cancel_on_kill``, ``curator-flows cancel`` or the
    provider's console); what they finished is collected and stored."""

    def __init__(self, message: str) -> None:
        BatchStepError.__init__(self, message, retryable=False)


class CuratorBatchFailed(BatchStepError, AirflowFailException):
    """The provider ended a batch as ``failed`` (e.g. it refused the input file); the message
    holds the batch id and the provider's reasons."""

    def __init__(self, message: str) -> None:
        BatchStepError.__init__(self, message, retryable=False)


class CuratorPollError(BatchStepError, AirflowException):
    """Asking the provider for the batches' status kept failing (more consecutive errors than
    the trigger tolerates). Retryable: an Airflow retry re-attaches to the same batches."""

    def __init__(self, message: str) -> None:
        BatchStepError.__init__(self, message, retryable=True)


def is_permanent(exc: BaseException) -> bool:
    """Whether a retry cannot fix ``exc``: a :mod:`curator_flows.errors` error whose
    ``retryable`` is ``False``, or a missing Airflow connection. Everything else (storage,
    HTTP-client and Airflow API errors, bugs) counts as transient: a retry is cheap, and the
    run directory makes it resume."""
    if isinstance(exc, AirflowNotFoundException):
        return True
    return isinstance(exc, CuratorFlowsError) and not exc.retryable


def wait_error(event: dict[str, Any], *, cancelled: bool = False) -> Exception | None:
    """The exception that ends a batch wait with ``event`` (a terminal event of
    :mod:`airflow_provider.batch_watch`), or ``None`` when the wait went well (``ended``,
    ``expired``, ``resume``). ``cancelled``: a ``timeout``'s batches were cancelled."""
    kind, message = event["kind"], event["message"]
    if kind == "error":
        if event["error"].get("retryable"):
            return CuratorPollError(message)
        return CuratorPermanentError(message)
    if kind == "failed":
        return CuratorBatchFailed(message)
    if kind == "cancelled":
        return CuratorBatchCancelled(message)
    if kind == "timeout":
        left = "the live batches were cancelled" if cancelled else "batches left running"
        return CuratorBatchTimeout(f"{message}; {left}", cancelled=cancelled)
    return None


def raise_for(exc: BaseException) -> NoReturn:
    """Re-raise ``exc`` the way Airflow should see it: permanent library errors as
    :class:`CuratorPermanentError` (no retry), everything else unchanged."""
    if isinstance(exc, AirflowException):
        raise exc
    if isinstance(exc, CuratorFlowsError) and not exc.retryable:
        raise CuratorPermanentError(
            f"{type(exc).__name__}: {exc} (permanent: Airflow will not retry this task)", exc
        ) from exc
    raise exc


def call_step(step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``step(*args, **kwargs)`` with its errors mapped by :func:`raise_for`."""
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - classified and re-raised
        raise_for(exc)
