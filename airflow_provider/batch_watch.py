"""Waiting for batches, as a pure state machine: the trigger, the sensor and the non-deferrable
operators feed it the ``BatchShardState`` of each ``steps.poll`` and ask it for the outcome.

Outcomes (``kind`` of the one terminal event):
- ``ended``: every watched batch ended and completed;
- ``expired``: every watched batch ended, some expired with part of their requests (the worker
  collects what they finished and resubmits only the rest);
- ``failed``: a batch ended ``failed`` (or its input was rejected) at the provider;
- ``cancelled``: a batch was cancelled (the run's ``cancel``, ``curator-flows cancel``, the
  provider's console);
- ``resume``: a shard has no live batch (its submit never reached the provider): the worker
  must submit it;
- ``timeout``: the deadline passed first (``timeout`` seconds after the current campaign's first
  batch was submitted: the anchor is stored in the run, so a restart does not move it);
- ``error``: polling failed: at once for a permanent error (a library error whose
  ``retryable`` is ``False``, a missing connection: :func:`~airflow_provider.exceptions.
  is_permanent`), after more than ``max_poll_errors`` consecutive transient ones (anything
  else: storage, HTTP-client or Airflow API errors included).

Invariants: a watch waits for every watched batch to end before reporting failed / cancelled /
expired, so every paid result can be collected; the event payload is small JSON (no rows, no
secrets).
"""

from __future__ import annotations

import time
from typing import Any

from curator_flows.errors import BatchStepError

from .exceptions import is_permanent

#: the terminal kinds of ended batches, worst first
_SEVERITY = ("failed", "cancelled", "expired", "ended")
_CANCELLED = ("cancelled", "canceled", "cancelling", "canceling")


def shard_outcome(state: dict[str, Any]) -> str:
    """``ended`` / ``expired`` / ``cancelled`` / ``failed`` of a shard whose batch ended."""
    status = (state.get("status") or "").lower()
    counts = state.get("request_counts") or {}
    if status in ("failed", "rejected"):
        return "failed"
    if status in _CANCELLED or counts.get("canceled") or counts.get("cancelled"):
        return "cancelled"
    if status == "expired" or counts.get("expired"):
        return "expired"
    return "ended"


class BatchWatch:
    """The waiting state of ``shards`` of the run at ``run_uri``."""

    def __init__(
        self,
        run_uri: str,
        shards: list[str],
        *,
        timeout: float | None = None,
        max_poll_errors: int = 3,
    ) -> None:
        self.run_uri = run_uri
        self.shards = list(shards)
        self.timeout = timeout
        self.max_poll_errors = max_poll_errors
        self.states: dict[str, dict[str, Any]] = {}
        self.errors = 0
        self.anchor: float | None = None
        self.resume: list[str] = []
        self.failure: dict[str, Any] | None = None

    # ---------------------------------------------------------------- feeding it
    def pending(self) -> list[str]:
        """The shards whose batch has not ended yet (poll these)."""
        return [s for s in self.shards if not self.states.get(s, {}).get("done")]

    def observe(self, state: dict[str, Any]) -> None:
        """One successful ``steps.poll`` result."""
        self.errors = 0
        shard = state["shard"]
        self.states[shard] = {
            "done": bool(state.get("done")),
            "state": state.get("state"),
            "status": state.get("status"),
            "batch_id": state.get("batch_id"),
            "request_counts": dict(state.get("request_counts") or {}),
        }
        submitted = state.get("submitted_at")
        if submitted:
            self.anchor = submitted if self.anchor is None else min(self.anchor, submitted)

    def poll_failed(self, shard: str, exc: BaseException) -> None:
        """One ``steps.poll`` that raised."""
        if isinstance(exc, BatchStepError) and not exc.retryable:
            self.resume.append(shard)  # no live batch: the worker's submit creates it
            return
        self.errors += 1
        if is_permanent(exc) or self.errors > self.max_poll_errors:
            self.fail(exc, shard)

    def fail(self, exc: BaseException, shard: str | None = None) -> None:
        """End the watch with an ``error`` outcome (``shard=None``: before any poll)."""
        self.failure = {
            "shard": shard,
            "type": type(exc).__name__,
            "message": str(exc)[:2000],
            "retryable": not is_permanent(exc),
            "consecutive_errors": max(1, self.errors),
        }

    # ---------------------------------------------------------------- reading it
    @property
    def deadline(self) -> float | None:
        if self.timeout is None or self.anchor is None:
            return None
        return self.anchor + self.timeout

    def outcome(self, now: float | None = None) -> dict[str, Any] | None:
        """The terminal event payload, or ``None`` while waiting is still the answer."""
        now = time.time() if now is None else now
        if self.failure is not None:
            return self._event("error", error=self.failure)
        if self.resume:
            return self._event("resume", resume=sorted(set(self.resume)))
        if not self.pending():
            kinds = {shard_outcome(self.states[s]) for s in self.shards}
            kind = next(k for k in _SEVERITY if k in kinds)
            return self._event(kind)
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            return self._event("timeout")
        return None

    def sleep_seconds(self, interval: float, now: float | None = None) -> float:
        """How long to wait before the next round of polls (never past the deadline)."""
        now = time.time() if now is None else now
        deadline = self.deadline
        if deadline is None:
            return interval
        return max(0.0, min(interval, deadline - now))

    def _event(self, kind: str, **extra: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "run_uri": self.run_uri,
            "shards": {s: self.states.get(s, {"done": False}) for s in self.shards},
            "submitted_at": self.anchor,
            "deadline": self.deadline,
            "message": describe(kind, self, extra),
            **extra,
        }


def describe(kind: str, watch: BatchWatch, extra: dict[str, Any]) -> str:
    """A one-line account of an outcome, naming the shards and batches concerned."""

    def listing(outcome: str) -> str:
        return ", ".join(
            f"shard {s} (batch {st.get('batch_id')}, {st.get('status')})"
            for s, st in watch.states.items()
            if st.get("done") and shard_outcome(st) == outcome
        )

    if kind == "error":
        error = extra["error"]
        what = f"polling shard {error['shard']}" if error["shard"] else "reaching the provider"
        return (
            f"{what} of {watch.run_uri} failed {error['consecutive_errors']} time(s) in a row: "
            f"{error['type']}: {error['message']}"
        )
    if kind == "resume":
        return f"shard(s) {', '.join(extra['resume'])} have no live batch: submit them"
    if kind == "timeout":
        return (
            f"the batches of {watch.run_uri} did not end within {watch.timeout:g}s of their "
            f"submission; still running: {', '.join(watch.pending()) or 'none'}"
        )
    if kind in ("failed", "cancelled", "expired"):
        return f"{kind}: {listing(kind)}"
    return f"every batch of shard(s) {', '.join(watch.shards)} ended"
