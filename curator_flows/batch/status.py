"""``status``: per-shard state, counts and cost so far of any run, from its files alone.

A batch shard whose campaign the run's cancel flag stopped is ``cancelled`` while requests are
pending, whatever its batch's last known state; ``uncollected`` counts the requests its current
batch completed at the provider (its last known ``request_counts``: billed) that no response
line holds yet (``collect`` stores them), so a cancelled run does not look idle and free.

The run's ``totals`` add to the shards' line costs what steps paid beyond their lines
(:func:`curator_flows.ledger.unlined`, ``unlined_cost``), and report what is ``reserved`` for work
in flight (:func:`curator_flows.budget.run_committed`) apart from what was spent."""

from __future__ import annotations

from typing import Any

from ..budget import open_batch_reservations
from ..ledger import live_reserved, read_ledgers, unlined
from ..pending import Charge
from ..store import RunStore
from .queue import refusal_of
from .records import (
    COLLECTED,
    ENDED,
    SUBMITTED,
    UNSENT,
    BatchRecord,
    cancelled,
    read_cancel_flag,
)
from .responses import count_responses


def shard_status(
    store: RunStore,
    manifest: dict[str, Any],
    shard: dict[str, Any],
    by_step: dict[str, Charge] | None = None,
) -> dict[str, Any]:
    """Counts, cost so far and (batch runs) the batch state of one shard; reads only files.
    ``by_step``: what the shard's lines charge per step is added there."""
    name = shard["name"]
    counts = count_responses(store, name, batch=manifest["mode"] == "batch")
    for step, charge in counts.by_step.items():
        if by_step is not None:
            by_step.setdefault(step, Charge()).add(
                charge.input_tokens, charge.output_tokens, charge.cost
            )
    pending = max(0, shard["requests"] - counts.succeeded - counts.failed)
    out: dict[str, Any] = {
        "shard": name,
        "requests": shard["requests"],
        "succeeded": counts.succeeded,
        "failed": counts.failed,
        "pending": pending,
        "cost": counts.cost,
        "input_tokens": counts.input_tokens,
        "output_tokens": counts.output_tokens,
    }
    if pending == 0:
        state = "done_with_failures" if counts.failed else "done"
    else:
        state = "partial" if counts.succeeded or counts.failed else "pending"
    if manifest["mode"] == "batch":
        record = BatchRecord.load(store, name)
        entry = record.current
        if entry is not None:
            out["batch"] = {
                k: entry.get(k)
                for k in (
                    "round",
                    "attempt",
                    "state",
                    "batch_id",
                    "status",
                    "request_counts",
                    "requests",
                )
            }
            # the deadline anchors of BatchShardState, for a watcher whose polls all fail
            out["batch"]["submitted_at"] = record.campaign_submitted_at
            out["batch"]["round_submitted_at"] = entry.get("submitted_at")
            out["rounds"] = len(record.rounds)
            out["uncollected"] = uncollected(entry)
        if pending:
            if entry is None:  # a submit that found no room in the batch queue left a record
                state = "queued" if record.stored else "not_submitted"
            elif cancelled(store, record):
                state = "cancelled"
            elif refusal_of(entry) is not None and entry["state"] in (ENDED, COLLECTED):
                state = "queued"  # a batch queue limit refused it: it waits for room
            elif entry["state"] in UNSENT:
                state = "submitting"
            elif entry["state"] == SUBMITTED:
                state = "in_flight"
            elif entry["state"] == ENDED:
                state = "awaiting_collect"
            else:
                state = "needs_submit"
    out["state"] = state
    return out


def uncollected(entry: dict[str, Any] | None) -> int:
    """Requests the round's batch completed at the provider (OpenAI ``completed``, Anthropic
    ``succeeded``, as last polled) whose results are not collected yet."""
    if entry is None or entry["state"] not in (SUBMITTED, ENDED):
        return 0
    counts = entry.get("request_counts") or {}
    return int(counts.get("completed", counts.get("succeeded")) or 0)


def run_status(
    store: RunStore, manifest: dict[str, Any], names: list[str] | None = None
) -> dict[str, Any]:
    """The run's status; ``names``: only these shards (and totals over them)."""
    from ..store import OUTPUT_STATS

    by_step: dict[str, Charge] = {}
    shards = [
        shard_status(store, manifest, s, by_step)
        for s in manifest["shards"]
        if names is None or s["name"] in names
    ]
    totals = {
        k: sum(s.get(k, 0) for s in shards)
        for k in (
            "requests",
            "succeeded",
            "failed",
            "pending",
            "cost",
            "input_tokens",
            "output_tokens",
            "uncollected",
        )
    }
    ledgers = read_ledgers(store)
    beyond = unlined(ledgers, by_step) if names is None else Charge()
    totals["unlined_cost"] = beyond.cost
    totals["cost"] += beyond.cost
    totals["input_tokens"] += beyond.input_tokens
    totals["output_tokens"] += beyond.output_tokens
    totals["reserved"] = live_reserved(ledgers) + open_batch_reservations(store)
    return {
        "run_uri": store.uri,
        "run_id": manifest["run_id"],
        "mode": manifest["mode"],
        "backend": manifest["backend"],
        "model_name": manifest["model_name"],
        "finalized": store.exists(OUTPUT_STATS),
        "cancelled": read_cancel_flag(store) is not None if manifest["mode"] == "batch" else False,
        "totals": totals,
        "shards": shards,
    }
