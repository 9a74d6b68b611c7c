"""Every error the library raises, in one module.

Invariants:
- every error derives from :class:`CuratorFlowsError` and carries ``retryable``: ``True`` when
  running the same step again later can succeed (rate-limit exhaustion, 5xx, timeouts, dropped
  connections, an unreachable endpoint, a batch not yet ended, a shard leased by another
  worker, a storage write that failed), ``False`` when only a change by a person can help (bad
  config or input, 401/403/404 from the provider, a schema never satisfied, a budget reached);
- errors also derive from the builtin a caller would have caught before (``ValueError`` for
  bad values, ``RuntimeError`` for failed work, ``FileNotFoundError`` for a missing run), so
  ``except ValueError`` keeps working; what Bespoke Curator raises as ``ValueError`` (a run
  with failed or missing responses, a ``prompt()`` or ``parse()`` answer it cannot use) is a
  ``ValueError`` here too, and stays a ``RuntimeError`` for code written against this library;
- messages never contain an API key.

Orchestrator adapters map ``retryable`` onto their retry rules with :func:`is_retryable`.
"""

from __future__ import annotations

import time
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


class NotSupportedError(ConfigError):
    """A Bespoke Curator feature this library leaves out (multimodal ``Image``/``File``
    prompts, the code executor, trainers, the Curator Viewer), raised where it is used; the
    message says what to use instead."""


class PromptError(CuratorFlowsError, RuntimeError, ValueError):
    """``prompt()`` raised or returned something unusable; the message names the row. A
    ``ValueError``, as Curator raises for a prompt it cannot use."""


class ParseError(CuratorFlowsError, RuntimeError, ValueError):
    """``parse()`` returned something unusable; the message names the row. A ``ValueError``, as
    Curator raises for a row it cannot use."""


class OutputError(CuratorFlowsError, RuntimeError, ValueError):
    """A parsed value that cannot be stored; the message names the row and the column. A
    ``ValueError``, as pyarrow's ``ArrowInvalid`` is in Curator."""


class SchemaChangeError(ConfigError):
    """A publish whose columns differ from the published asset's schema contract (a column
    added, removed or, for a declared schema, retyped in the code); ``changes`` lists each
    difference. Pass ``schema_evolution="add_columns"`` or ``"replace"`` to change the
    contract, or change the code back."""

    def __init__(self, message: str, *, changes: list[str] | None = None) -> None:
        super().__init__(message)
        self.changes = list(changes or [])


class RunNotFoundError(CuratorFlowsError, FileNotFoundError):
    """No prepared run at the given URI."""


class CorruptRunError(CuratorFlowsError, ValueError):
    """A file of a run directory (or a published output's marker) is damaged: cut short, not
    valid JSON, not of the shape this library writes, or missing. It does not fix itself; the
    message names the file and says how to recover without paying again."""


class StorageAccessError(CuratorFlowsError, OSError):
    """A location cannot be used as given: permission denied, or a file where a directory
    belongs (or the reverse). The message names the path; fix it or its permissions."""


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


class QuotaExceededError(ProviderError):
    """The account is out of credit or over a spend limit (OpenAI's 429 ``insufficient_quota``,
    Anthropic's "credit balance is too low"): nothing helps until a person adds credit or
    raises the limit. Never retried. ``provider_message`` is the provider's own words."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        endpoint: str | None = None,
        provider_message: str = "",
    ) -> None:
        super().__init__(message, status=status, retryable=False, endpoint=endpoint)
        self.provider_message = provider_message


class EndpointUnreachableError(ProviderError):
    """An endpoint that never accepted a connection (refused, unknown host, connect timeout):
    nothing was sent, so nothing was billed. A request the endpoint took and did not answer in
    time is a timeout (a failure line), not this."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message, status=None, retryable=True, endpoint=endpoint)


class RateLimitExhaustedError(ProviderError):
    """Requests kept being rate limited past every retry."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message, status=429, retryable=True, endpoint=endpoint)


class DailyLimitError(RateLimitExhaustedError):
    """A per-day limit of the account (requests or tokens per day) is reached: retrying now
    cannot help, retrying after ``retry_at`` (epoch seconds; ``None`` when the provider did not
    say) can. ``provider_message`` is the provider's own words."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        endpoint: str | None = None,
        provider_message: str = "",
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.retry_after = retry_after
        self.retry_at = None if retry_after is None else time.time() + retry_after
        self.provider_message = provider_message


# ----------------------------------------------------------------------------- run state
class IncompleteRunError(CuratorFlowsError, RuntimeError, ValueError):
    """Requests failed (``require_all_responses``), every request failed, or shards still have
    pending work. Everything that succeeded is stored. ``retryable`` is ``True`` when work is
    only pending, or when at least one failure was transient. A ``ValueError`` too, as Curator
    raises for missing responses, so ``except ValueError`` around ``llm(...)`` catches it."""

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


class TooManyFailuresError(IncompleteRunError):
    """More of the run's requests failed than ``max_failed_fraction`` allows, so nothing was
    published (the previous output stays as it was). ``failures_by_reason`` counts them by
    reason; ``retryable`` when sending the retryable ones again could bring the share within
    the limit."""

    def __init__(
        self,
        message: str,
        *,
        failed: int,
        total: int,
        failures_by_reason: dict[str, int],
        max_failed_fraction: float,
        failed_requests_uri: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(
            message,
            failed=failed,
            total=total,
            failed_requests_uri=failed_requests_uri,
            retryable=retryable,
        )
        self.failures_by_reason = dict(failures_by_reason)
        self.max_failed_fraction = max_failed_fraction


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
    after dispatch was stopped and the write was retried; paid responses that could not be
    written are kept in a spill file on this machine (the message says where), which the next
    step of the run merges before it sends anything (:mod:`curator_flows.spill`)."""

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
