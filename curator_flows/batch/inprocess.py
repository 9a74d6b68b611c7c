"""``LLM(batch=True)(dataset)``: every batch step of a run, composed in one process.

Invariant: this module only sequences the batch steps (through :func:`.advance.advance`); a run
driven here and one driven by an orchestrator (one step per process) leave the same run
directory.
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
    todo = list(ctx.shards)
    first = set(ctx.shards)
    while todo:
        waits = []
        for shard in list(todo):
            state = advance(ctx, shard, retry_failed=shard in first)
            first.discard(shard)
            if state["done"]:
                todo.remove(shard)
            else:
                waits.append(state["wait_seconds"])
        if todo:
            time.sleep(min(waits) if waits else 0.0)
