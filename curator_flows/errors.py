"""Every error the library raises, in one module.

Invariants:
- every error derives from :class:`CuratorFlowsError` and carries ``retryable``: ``True`` when
  running the same step again later can succeed (rate-limit exhaustion, 5xx, timeouts, dropped
  connections, an unreachable endpoint, a batch not yet ended, a shard leased by another
  worker, a storage write that failed), ``False`` when only a change by a person can help (bad
  config or input, 401/403/404 from the provider, a schema never satisfied, a budget reached);
- errors also derive from the builtin a caller would have caught before (``ValueError`` for
  bad values, ``RuntimeError`` for failed work, ``FileNotFoundError`` for a missing run), so
  ``except ValueError`` keeps working;
- messages never contain an API key.

Orchestrator adapters map ``retryable`` onto their retry rules with :func:`is_retryable`.
"""

from __future__ import annotations

from typing import Any


class CuratorFlowsError(Exception):
    """Base of every library error; ``retryable`` says whether a later retry can help."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (what an orchestrator may log or store)."""
        return {"type": type(self).__name__, "message": str(self), "retryable": self.retryable}


# ----------------------------------------------------------------------------- permanent
class ConfigError(CuratorFlowsError, ValueError):
    """A ``backend_params``, ``generation_params`` or step argument that cannot be used."""


class MissingAPIKeyError(ConfigError):
    """No API key for a provider that needs one."""


class InputError(CuratorFlowsError, ValueError):
    """A dataset (or one of its rows) that cannot be used; the message names the row."""


class PromptError(CuratorFlowsError, RuntimeError):
    """``prompt()`` raised or returned something unusable; the message names the row."""


class ParseError(CuratorFlowsError, RuntimeError):
    """``parse()`` returned something unusable; the message names the row."""


class OutputError(CuratorFlowsError, RuntimeError):
    """A parsed value that cannot be stored; the message names the row and the column."""


class RunNotFoundError(CuratorFlowsError, FileNotFoundError):
    """No prepared run at the given URI."""


class UnknownShardError(ConfigError):
    """A shard name the run does not have."""


class RunModeError(ConfigError):
    """A step called on a run of another mode (an online step on a batch run, ...)."""


class LLMRebuildError(ConfigError):
    """The run's ``LLM`` cannot be rebuilt from the run directory: pass ``llm=`` to the steps."""


class BudgetExceededError(CuratorFlowsError, RuntimeError):
    """Sending more would spend past ``max_cost``; raise the budget and run again to resume.
    ``spent``: what the run paid; ``reserved``: what was still held for work in flight."""

    def __init__(self, message: str, *, spent: float, budget: float, reserved: float = 0.0) -> None:
        super().__init__(message, retryable=False)
        self.spent = spent
        self.budget = budget
        self.reserved = reserved

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.spent - self.reserved)


# ----------------------------------------------------------------------------- provider
class ProviderError(CuratorFlowsError, RuntimeError):
    """The provider answered with an error (or not at all). Transient unless the status says
    the request itself or the credentials are wrong."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
        endpoint: str | None = None,
    ) -> None:
        if retryable is None:
            retryable = status is None or status >= 500 or status in (408, 409, 429)
        super().__init__(message, retryable=retryable)
        self.status = status
        self.endpoint = endpoint


class AuthenticationError(ProviderError):
    """401/403/404: wrong key, no access, or a wrong endpoint/model. Never retried."""

    def __init__(self, message: str, *, status: int | None = None, endpoint: str | None = None):
        super().__init__(message, status=status, retryable=False, endpoint=endpoint)


class EndpointUnreachableError(ProviderError):
    """No HTTP answer at all from an endpoint (refused, unknown host, dropped, timed out)."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message, status=None, retryable=True, endpoint=endpoint)


class RateLimitExhaustedError(ProviderError):
    """Requests kept being rate limited past every retry."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message, status=429, retryable=True, endpoint=endpoint)


# ----------------------------------------------------------------------------- run state
class IncompleteRunError(CuratorFlowsError, RuntimeError):
    """Requests failed (``require_all_responses``), every request failed, or shards still have
    pending work. Everything that succeeded is stored. ``retryable`` is ``True`` when work is
    only pending, or when at least one failure was transient."""

    def __init__(
        self,
        message: str,
        *,
        failed: int = 0,
        total: int = 0,
        pending_shards: list[str] | None = None,
        failed_requests_uri: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.failed = failed
        self.total = total
        self.pending_shards = list(pending_shards or [])
        self.failed_requests_uri = failed_requests_uri


class LeaseHeldError(CuratorFlowsError, RuntimeError):
    """Another live worker holds the shard's lease; retry after it finishes or its lease
    expires."""

    retryable = True

    def __init__(self, message: str, *, owner: str = "", expires_at: float = 0.0) -> None:
        super().__init__(message, retryable=True)
        self.owner = owner
        self.expires_at = expires_at


class LeaseLostError(LeaseHeldError):
    """This worker's lease expired and another worker took the shard over; nothing more is
    sent from here."""


class StorageWriteError(CuratorFlowsError, OSError):
    """A write to the run directory failed (disk full, permissions, an object store error)
    after dispatch was stopped and the write was retried; responses that could not be written
    are listed in the message's count and will be sent again by the next run."""

    retryable = True


class BatchStepError(CuratorFlowsError, RuntimeError):
    """A batch step was called in a state where it cannot act (the message says what to do)."""


class BatchNotEnded(BatchStepError):
    """``collect`` was called while the shard's batch is still running."""

    retryable = True


class BatchDeadlineError(BatchStepError):
    """A batch did not end before the caller's deadline."""

    retryable = False


_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_retryable(exc: BaseException) -> bool:
    """Whether retrying the step that raised ``exc`` can help: the error's own flag for library
    errors; ``True`` for timeouts, connection errors and other I/O errors of the storage (an
    object store's 5xx, a full disk); ``False`` for a missing file, a refused permission and
    anything else (a bug or bad input does not fix itself)."""
    if isinstance(exc, CuratorFlowsError):
        return exc.retryable
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS)
