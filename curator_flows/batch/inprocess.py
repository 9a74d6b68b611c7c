"""``LLM(batch=True)(dataset)``: every batch step of a run, composed in one process.

Invariants:
- this module only sequences the batch steps (through :func:`.advance.advance`); a run driven
  here and one driven by an orchestrator (one step per process) leave the same run directory;
- shards ``queued`` for room in the provider's batch queue are asked again in shard order (the
  longest waiting first), after the live ones, when a live shard's round ended in this pass or
  their wait is over; a pass stops asking at the first one still queued, so a run of many
  small shards does not re-check every waiting shard every pass.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..credentials import Credentials
from .advance import advance
from .context import Context

if TYPE_CHECKING:
    from ..llm import LLM


def run_batch_in_process(
    store: Any, manifest: dict[str, Any], llm: LLM, credentials: Credentials | None = None
) -> None:
    """Drive every shard of a prepared batch run to completion, sleeping as ``advance`` says.

    A fresh call resumes whatever earlier calls left (live batches are re-attached, ended ones
    collected) and, like an online re-run, gives requests that failed finally another campaign
    of ``max_retries + 1`` rounds (also after a ``cancel``)."""
    ctx = Context(store, manifest, llm, credentials)
    driver = _Driver(ctx)
    while driver.todo:
        driver.waits = []
        driver.freed = False
        for shard in [s for s in driver.todo if s not in driver.queued]:
            driver.step(shard)
        for shard in [s for s in driver.todo if s in driver.queued]:
            if not driver.freed and time.monotonic() < driver.queued[shard]:
                break
            if driver.step(shard)["state"] == "queued":
                break
        if driver.queued:
            driver.waits.append(max(0.0, min(driver.queued.values()) - time.monotonic()))
        if driver.todo:
            time.sleep(min(driver.waits) if driver.waits else 0.0)


class _Driver:
    """One pass's bookkeeping: the shards left, those queued (and when their wait is over),
    whether a round ended in this pass, and the waits ``advance`` asked for."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.todo = list(ctx.shards)
        self.first = set(ctx.shards)
        self.rounds: dict[str, Any] = {}
        self.queued: dict[str, float] = {}  # shard -> when its wait is over (monotonic)
        self.waits: list[float] = []
        self.freed = False

    def step(self, shard: str) -> dict[str, Any]:
        state = advance(self.ctx, shard, retry_failed=shard in self.first)
        self.first.discard(shard)
        if state["done"] or self.rounds.get(shard, state["round"]) != state["round"]:
            self.freed = True  # a round ended: the provider's queue may have room
        self.rounds[shard] = state["round"]
        if state["done"]:
            self.todo.remove(shard)
            self.queued.pop(shard, None)
        elif state["state"] == "queued":
            self.queued[shard] = time.monotonic() + state["wait_seconds"]
        else:
            self.queued.pop(shard, None)
            self.waits.append(state["wait_seconds"])
        return state
