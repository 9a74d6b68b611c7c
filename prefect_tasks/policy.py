"""Retry and cache rules shared by every task.

Invariants:
- a task is retried only when :func:`curator_flows.errors.is_retryable` says a retry can help
  (429 exhaustion, 5xx, timeouts, dropped connections, an unreachable endpoint, a held lease, a
  failed storage write), never for bad input, auth or budget errors; retries back off
  exponentially with jitter;
- a cache key is ``curator-<step>-<run id>-<shard>[-c<cycle>]-<hash of the run URI>``: the same in
  every flow run of the same run, never derived from the flow-run id, the inputs' pickles or the
  credentials, so a new flow run after a crash finds what the crashed one finished.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curator_flows.errors import ConfigError, IncompleteRunError, is_retryable
from curator_flows.steps import run_uri

if TYPE_CHECKING:
    from prefect.context import TaskRunContext

#: how many times a task is retried after a transient failure. The retries' delays together
#: (10 + 20 + 40 + 80 s, each drawn by Prefect between 0.63x and 1.5x of that under the jitter:
#: at least 94 s) outlast the lease a dead worker on another host leaves on its shard
#: (``lease_seconds``, 60 s by default), so a new flow run retrying on ``LeaseHeldError``
#: takes the shard over before its retries run out; raise ``retries`` with a longer lease
RETRIES = 4
#: the first retry's delay in seconds; each further retry waits twice as long
BACKOFF_SECONDS = 10.0
#: a retry's delay is stretched by up to this fraction at random (no thundering herd)
JITTER_FACTOR = 0.5

_UNSAFE = re.compile(r"[^a-z0-9]+")


def failure_of(state: Any) -> BaseException | None:
    """The exception a failed task raised: Prefect hands ``retry_condition_fn`` a ``Failed``
    state whose ``data`` is that exception (or the failed state a task returned, which is never
    retried here: the step tasks never return states)."""
    data = getattr(state, "data", None)
    return data if isinstance(data, BaseException) else None


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of every task: retry only transient failures."""
    exc = failure_of(state)
    return exc is not None and is_retryable(exc)


def retry_transient_finalize(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of ``finalize``: transient failures, except an incomplete run
    (finalizing again sends nothing: the shard steps, or the next flow run, finish the work)."""
    exc = failure_of(state)
    return exc is not None and not isinstance(exc, IncompleteRunError) and is_retryable(exc)


def retry_options(condition: Callable[..., bool] = retry_transient) -> dict[str, Any]:
    """The retry settings of a task (Prefect ``@task`` keyword arguments)."""
    from prefect.tasks import exponential_backoff

    return {
        "retries": RETRIES,
        "retry_delay_seconds": exponential_backoff(backoff_factor=BACKOFF_SECONDS),
        "retry_jitter_factor": JITTER_FACTOR,
        "retry_condition_fn": condition,
    }


#: Prefect takes at most this many retry delays
MAX_RETRY_DELAYS = 50


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class StepOptions:
    """What a flow's parameters set on every step task it runs: ``retries`` and
    ``retry_delay_seconds`` (``None``: exponential from :data:`BACKOFF_SECONDS`, i.e. 10, 20, 40,
    80 s for the default 4 retries; a number: that delay before each retry; a list: the delay
    before each retry, Prefect's meaning), and ``refresh_cache`` (run every step task again
    instead of taking a cached result: the steps resume from the run directory, so only what
    is missing is sent). Jitter and the retry condition stay those of :func:`retry_options`."""

    retries: int = RETRIES
    retry_delay_seconds: float | list[float] | None = None
    refresh_cache: bool = False

    def __post_init__(self) -> None:
        retries, delays = self.retries, self.retry_delay_seconds
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"retries must be a non-negative integer, got {retries!r}")
        valid = delays is None or _is_number(delays)
        if isinstance(delays, list | tuple):
            valid = 0 < len(delays) <= MAX_RETRY_DELAYS and all(_is_number(d) for d in delays)
        if not valid:
            raise ConfigError(
                "retry_delay_seconds must be a number of seconds >= 0, a list of 1 to "
                f"{MAX_RETRY_DELAYS} of them (one per retry), or None for exponential backoff "
                f"from {BACKOFF_SECONDS:g} s; got {delays!r}"
            )

    def delays(self) -> float | list[float]:
        """The delays Prefect gets (the default's exponential list as long as ``retries``)."""
        if self.retry_delay_seconds is None:
            count = max(1, min(self.retries, MAX_RETRY_DELAYS))
            return [BACKOFF_SECONDS * 2**n for n in range(count)]
        if isinstance(self.retry_delay_seconds, tuple):
            return list(self.retry_delay_seconds)
        return self.retry_delay_seconds

    @property
    def default_retries(self) -> bool:
        return self.retries == RETRIES and self.retry_delay_seconds is None

    def apply(self, task: Any, refresh: bool = False) -> Any:
        """``task`` with these retries (as it is with the defaults: they are its own),
        refreshing its cache when ``refresh`` or ``refresh_cache`` say so."""
        options: dict[str, Any] = {}
        if not self.default_retries:
            options.update(retries=self.retries, retry_delay_seconds=self.delays())
        if refresh or self.refresh_cache:
            options["refresh_cache"] = True
        return task.with_options(**options) if options else task


def slug(text: str) -> str:
    """``text`` in the alphabet Prefect allows in artifact keys (lowercase, digits, dashes)."""
    return _UNSAFE.sub("-", str(text).lower()).strip("-")


def run_id_of(run: Any) -> str:
    """The run id of a step result (its ``run_id``) or of a run URI (its last segment)."""
    if isinstance(run, dict) and run.get("run_id"):
        return str(run["run_id"])
    return run_uri(run).rstrip("/").rsplit("/", 1)[-1]


def step_cache_key(step: str, run: Any, shard: str | None = None, cycle: int | None = None) -> str:
    """The cache key of ``step`` on ``shard`` of ``run`` in the flow's batch ``cycle`` (see the
    module invariants)."""
    where = hashlib.sha256(run_uri(run).rstrip("/").encode()).hexdigest()[:12]
    parts = ["curator", step, run_id_of(run)]
    if shard is not None:
        parts.append(str(shard))
    if cycle is not None:
        parts.append(f"c{int(cycle)}")
    parts.append(where)
    return "-".join(slug(p) for p in parts)


def cache_key_for(step: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn`` keyed on the task's ``run``, ``shard`` and ``cycle``
    parameters and ``step``."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        return step_cache_key(
            step, parameters["run"], parameters.get("shard"), parameters.get("cycle")
        )

    key.__name__ = f"cache_key_{step}"
    return key
