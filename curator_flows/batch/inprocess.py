"""``LLM(batch=True)(dataset)``: every batch step of a run, composed in one process.

Invariant: this module only sequences the public steps; a run driven here and one driven by an
orchestrator (one step per process) leave the same run directory.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..cost import resolve_prices
from ..llm import LLM
from ..steps import open_run
from .collect import collect_shard
from .context import Context
from .responses import scan_responses
from .steps import poll_shard, submit_shard

log = logging.getLogger(__name__)


def run_batch_in_process(summary: dict[str, Any], llm: LLM) -> dict[str, Any]:
    """Drive every shard of a prepared batch run to completion, polling every
    ``batch_check_interval`` seconds; return the session dict ``finalize`` takes.

    A fresh call resumes whatever earlier calls left (live batches are re-attached, ended ones
    collected) and, like an online re-run, gives requests that failed finally another campaign
    of ``max_retries + 1`` rounds (also after a ``cancel``)."""
    started = time.monotonic()
    store, manifest = open_run(summary)
    ctx = Context(store, manifest, llm, None)
    params = llm.config.params
    pending_before = sum(
        max(0, ctx.sizes[s] - len(scan_responses(store, s, 0).succeeded)) for s in ctx.shards
    )
    session: dict[str, Any] = {
        "pending_before": pending_before,
        "sent": 0,
        "succeeded": 0,
        "failed": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": 0.0,
        "batches": 0,
        "prices": resolve_prices(
            llm.model_name, params.in_mtok_cost, params.out_mtok_cost, batch=True
        ),
    }
    todo = {shard: "submit" for shard in ctx.shards}
    first = set(ctx.shards)
    while todo:
        for shard in list(todo):
            _advance(ctx, shard, todo, first, session)
        if todo:
            time.sleep(params.batch_check_interval)
    session["elapsed"] = time.monotonic() - started
    return session


def _advance(
    ctx: Context, shard: str, todo: dict[str, str], first: set[str], session: dict[str, Any]
) -> None:
    """Move one shard as far as it goes without waiting (``todo[shard]`` is its next step)."""
    while shard in todo:
        action = todo[shard]
        if action == "submit":
            result = submit_shard(ctx, shard, retry_failed=shard in first)
            first.discard(shard)
            if result.get("created"):
                session["sent"] += result["requests"]
                session["batches"] += 1
            state = result["state"]
            if state in ("done", "cancelled"):
                del todo[shard]
            elif state == "ended":
                todo[shard] = "collect"
            elif state == "reconciling":
                return  # ask again after the interval
            else:
                todo[shard] = "poll"
                return  # a fresh batch: no point in asking at once
        elif action == "poll":
            if not poll_shard(ctx, shard)["done"]:
                return
            todo[shard] = "collect"
        else:
            result = collect_shard(ctx, shard)
            for key in ("succeeded", "failed", "input_tokens", "output_tokens", "cost"):
                session[key] += result.get(key, 0)
            log.info(
                "shard %s round %s collected: %s ok, %s failed, %s to resubmit",
                shard,
                result["round"],
                result["succeeded"],
                result["failed"],
                result["retry"],
            )
            if result["resubmit"]:
                todo[shard] = "submit"
            else:
                del todo[shard]
