"""``advance``: the batch loop every wrapper would otherwise rewrite, one non-blocking move.

submit (or re-attach) → poll → collect → submit the next round while requests are still owed
(expired, cancelled or errored items), as far as the shard goes without waiting.

Invariants:
- ``advance`` never sleeps and never blocks on a batch: it returns ``done`` (nothing more to do
  for the shard) or ``wait_seconds`` (when to call again); a shard ``queued`` for room in the
  provider's batch queue waits too (:mod:`.queue`), and a batch the queue refused is
  submitted again once there is room, never counted as an attempt;
- it is built only from the idempotent batch steps, so calling it again after a crash, from any
  process, converges: a shard is never submitted twice, a result never collected twice.
"""

from __future__ import annotations

from typing import Any

from ..results import BatchShardState
from .collect import collect_shard
from .context import Context
from .steps import poll_shard, still_queued, submit_shard

#: the most moves one call makes (each round needs at most submit, poll, collect)
MAX_MOVES = 12


def advance(ctx: Context, shard: str, *, retry_failed: bool = False) -> BatchShardState:
    """Move ``shard`` forward; ``retry_failed`` also starts a new campaign for requests that
    failed finally (a fresh ``LLM(...)(dataset)`` call does, an orchestrator retry need not).
    Holds the shard's lease for the whole move, except for a shard that still waits for room in
    the provider's batch queue (read without its lease)."""
    waiting = still_queued(ctx, shard)
    if waiting is not None:
        interval = float(ctx.config("batch_check_interval", 60.0))
        return {**waiting, "done": False, "wait_seconds": waiting["wait_seconds"] or interval}
    with ctx.leased(shard):
        return _advance(ctx, shard, retry_failed)


def _advance(ctx: Context, shard: str, retry_failed: bool) -> BatchShardState:
    interval = float(ctx.config("batch_check_interval", 60.0))

    def waiting(state: BatchShardState) -> BatchShardState:
        return {**state, "done": False, "wait_seconds": interval}

    def finished(state: BatchShardState, name: str) -> BatchShardState:
        return {**state, "state": name, "done": True, "wait_seconds": 0.0}

    state: dict[str, Any] = submit_shard(ctx, shard, retry_failed=retry_failed)
    for _ in range(MAX_MOVES):
        name = state["state"]
        if name in ("done", "cancelled"):
            return finished(state, name)
        if name == "queued":  # no room in the provider's batch queue yet
            return {**state, "done": False, "wait_seconds": state["wait_seconds"] or interval}
        if name in ("reconciling", "waiting_for_budget") or state.get("created"):
            return waiting(state)  # a fresh batch (or the budget's): no point in asking at once
        if name == "submitted":
            state = poll_shard(ctx, shard)
            if state["state"] == "queued":  # the queue refused it: close it, submit again
                state = submit_shard(ctx, shard)
                continue
            if not state["done"]:
                return waiting(state)
            name = "ended"
        if name == "ended":
            state = collect_shard(ctx, shard)
            if not state["resubmit"]:
                return finished(state, "done")
        state = submit_shard(ctx, shard)
    return waiting(state)
