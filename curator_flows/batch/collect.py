"""The collect step: stream an ended batch's results into the shard's response file.

Invariants:
- results are joined on ``custom_id``, never on order; only ids of the round's pending requests
  are accepted (anything else is counted as ``foreign``);
- a line is appended only for a request without a success line (and, for failures, without a
  final failure line of this campaign); the round is marked ``collected`` only after every line
  is appended, so a crash anywhere leaves a state from which collect again writes each request
  exactly once;
- per-item errors worth retrying are logged in ``batches/<shard>.retries.jsonl`` (with the tokens
  they wasted) and the request goes into the next round; after ``max_retries + 1`` rounds, or
  after a ``cancel()``, the still-pending requests get a final failure line with the last reason;
- a request's line carries the waste of its retries since its previous line (rounds after it),
  never that of an earlier campaign's retries, which that campaign's line already holds (the
  cost rule of :mod:`curator_flows.pending`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..acceptance import Acceptance
from ..cost import Prices, resolve_prices
from ..errors import BatchNotEnded, BatchStepError
from ..ledger import StepLedger
from ..pending import read_retry_log, retries_stem
from ..results import BatchShardState
from .base import BatchInfo, ItemResult
from .context import Context, describe, info_of
from .queue import refusal_of
from .records import (
    COLLECTED,
    ENDED,
    SUBMITTED,
    UNSENT,
    BatchRecord,
    cancelled,
)
from .responses import (
    pending_ids,
    scan_responses,
)
from .steps import close_refused_round, poll_shard
from .transport import BatchAPIError, backoff

log = logging.getLogger(__name__)

FLUSH_LINES = 2000
RESULT_STREAM_ATTEMPTS = 4
SUCCESSFUL_STATUSES = ("completed",)


def _reason(entry: dict[str, Any], was_cancelled: bool) -> tuple[str, bool]:
    """Why a request of the round has no result, and whether sending it again may succeed."""
    batch = entry.get("batch_id") or "(none)"
    status = entry.get("status")
    errors = "; ".join(entry.get("errors") or [])
    if was_cancelled:  # the user's decision: a retry_failed submit (or a new call) resumes
        return f"cancelled: batch {batch} was cancelled by cancel() before this request ran", False
    if status == "rejected":
        return f"the provider rejected the batch input: {errors}", False
    if status == "expired":
        return f"batch {batch} expired before this request ran", True
    if status in ("cancelled", "canceled", "cancelling", "canceling"):
        return f"batch {batch} was cancelled before this request ran", True
    if status == "failed":  # the provider refused the batch's input (its validation failed)
        return f"batch {batch} failed: {errors or 'no reason given'}", False
    if entry.get("mismatch"):
        return f"batch {batch} (re-attached after a crash) did not hold this request", True
    return f"batch {batch} ({status}) returned no result for this request", True


def collect_shard(ctx: Context, shard: str) -> BatchShardState:
    """Append the results of the shard's ended batch; see :func:`curator_flows.steps.collect`.
    Holds the shard's lease: two workers never collect the same shard at once."""
    with ctx.leased(shard):
        return _collect_shard(ctx, shard)


def _collect_shard(ctx: Context, shard: str) -> BatchShardState:
    record = ctx.record(shard)
    entry = record.current
    if entry is None:
        raise BatchStepError(f"shard {shard} has no batch yet: call submit first")
    if entry["state"] == COLLECTED:
        _maybe_delete(ctx, record, entry)
        return describe(ctx, record, "collected", **_collected_summary(ctx, record, entry))
    if entry["state"] in UNSENT or entry["state"] == SUBMITTED:
        polled = poll_shard(ctx, shard)
        record = ctx.record(shard)
        entry = record.current
        if not polled["done"] and refusal_of(entry) is None:
            raise BatchNotEnded(
                f"shard {shard}: batch {entry.get('batch_id')} is {polled['status']}; poll until "
                "done before collecting"
            )
    if entry["state"] == ENDED and refusal_of(entry) is not None:
        close_refused_round(ctx, record, entry)  # it ran nothing: no line, not an attempt
        return describe(ctx, record, "collected", **_collected_summary(ctx, record, entry))
    llm = ctx.llm
    params = llm.config.params
    prices = resolve_prices(llm.model_name, params.in_mtok_cost, params.out_mtok_cost, batch=True)
    was_cancelled = cancelled(ctx.store, record)
    final_round = was_cancelled or entry["attempt"] >= params.max_retries + 1
    ledger = StepLedger(ctx.store, "collect", [shard], started_at=entry.get("submitted_at"))
    counts = _write_results(ctx, record, entry, Acceptance(llm), prices, final_round, was_cancelled)
    ledger.set(
        succeeded=counts["succeeded"] - counts["succeeded_before"],
        failed=counts["failed"] - counts["failed_before"],
        input_tokens=counts["input_tokens"],
        output_tokens=counts["output_tokens"],
        cost=counts["cost"],
    )
    ledger.close()
    entry["state"] = COLLECTED
    entry["collected_at"] = time.time()
    entry["collected"] = {k: counts[k] for k in ("succeeded", "failed", "retry", "foreign")}
    if counts["mismatch"]:
        entry["mismatch"] = True
    record.save()
    ctx.queue.release(shard, entry["round"])
    if entry.get("batch_id"):
        ctx.queue.settled()
    _maybe_delete(ctx, record, entry)
    return describe(
        ctx,
        record,
        "collected",
        written=counts["written"],
        **_collected_summary(ctx, record, entry),
    )


def _collected_summary(ctx: Context, record: BatchRecord, entry: dict[str, Any]) -> dict[str, Any]:
    collected = entry.get("collected") or {}
    resubmit = collected.get("retry", 0) > 0
    return {
        "succeeded": collected.get("succeeded", 0),
        "failed": collected.get("failed", 0),
        "retry": collected.get("retry", 0),
        "resubmit": resubmit,
        "done": not resubmit,
    }


def _write_results(
    ctx: Context,
    record: BatchRecord,
    entry: dict[str, Any],
    acceptance: Acceptance,
    prices: Prices,
    final_round: bool,
    was_cancelled: bool,
) -> dict[str, Any]:
    store, shard = ctx.store, record.shard
    keep_completions = bool(getattr(ctx.llm, "return_completions_object", False))
    round_index, attempts = entry["round"], entry["attempt"]
    batch_id = entry.get("batch_id")
    scan = scan_responses(store, shard, record.campaign_start)
    members = pending_ids(store, shard, scan)
    retries = read_retry_log(store, shard)
    reasons: dict[str, tuple[str, bool]] = {}  # the last retried error: (text, retryable)
    counts = {
        "succeeded": scan.ok_by_round.get(round_index, 0),
        "failed": scan.failed_by_round.get(round_index, 0),
        "succeeded_before": scan.ok_by_round.get(round_index, 0),
        "failed_before": scan.failed_by_round.get(round_index, 0),
        "retry": 0,
        "foreign": 0,
        "mismatch": False,
        "written": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": 0.0,
    }
    out: list[dict[str, Any]] = []
    responses = store.appender(f"responses/{shard}")
    retry_log = store.appender(retries_stem(shard))

    def flush() -> None:
        ctx.check_leases()
        if out:
            responses.append_many(out)
            counts["written"] += len(out)
            out.clear()

    def finish(request_id: str, line: dict[str, Any]) -> None:
        # the retries no earlier line of this id holds (not those of a previous campaign)
        wasted = retries.unfolded(request_id, scan.lines.rounds.get(request_id, -1))
        if wasted.input_tokens or wasted.output_tokens or wasted.cost:
            line["wasted"] = [wasted.input_tokens, wasted.output_tokens]
            line["cost"] = line.get("cost", 0.0) + wasted.cost
            counts["input_tokens"] += wasted.input_tokens
            counts["output_tokens"] += wasted.output_tokens
        counts["cost"] += line.get("cost", 0.0)
        members.discard(request_id)
        out.append(line)
        if len(out) >= FLUSH_LINES:
            flush()

    def handle(item: ItemResult) -> None:
        if item.id not in members:
            if item.id not in scan.succeeded and item.id not in scan.final_failed:
                counts["foreign"] += 1
            return
        now = time.time()
        kind, error, usage, cost = item.kind, item.error, [0, 0], 0.0
        retryable = True  # a provider error worth another round
        if kind == "ok":
            attempt = item.attempt
            usage = [attempt.input_tokens, attempt.output_tokens]
            cost = prices.cost(*usage)
            error = acceptance.problem(attempt.finish_reason, attempt.content)
            if error is None:
                scan.succeeded.add(item.id)
                counts["succeeded"] += 1
                counts["input_tokens"] += usage[0]
                counts["output_tokens"] += usage[1]
                line = {
                    "id": item.id,
                    "content": attempt.content,
                    "finish_reason": attempt.finish_reason,
                    "usage": usage,
                    "cost": cost,
                    "attempts": attempts,
                    "ts": now,
                    "batch_id": batch_id,
                    "round": round_index,
                }
                if keep_completions:
                    line["completion"] = attempt.raw
                finish(item.id, line)
                return
            kind, retryable = "retry", False  # an answer the acceptance rule refuses
        if kind == "fatal":
            scan.final_failed.add(item.id)
            counts["failed"] += 1
            finish(
                item.id,
                {
                    "id": item.id,
                    "error": error,
                    "retryable": False,  # the provider refused the request for what it is
                    "attempts": attempts,
                    "ts": now,
                    "batch_id": batch_id,
                    "round": round_index,
                },
            )
            return
        reasons[item.id] = (error or "error", retryable)
        if retries.add(item.id, round_index, usage, cost):
            retry_log.append(
                {"id": item.id, "round": round_index, "error": error, "usage": usage, "cost": cost}
            )

    try:
        if batch_id and entry.get("status") != "rejected":
            _stream_results(ctx, info_of(entry), handle, flush)
        flush()
        default = _reason(entry, was_cancelled)
        if counts["foreign"] and not counts["succeeded"] and members:
            entry["mismatch"] = True
            counts["mismatch"] = True
            default = _reason(entry, was_cancelled)
        if final_round:
            for request_id in sorted(members):
                reason, retryable = reasons.get(request_id) or default
                counts["failed"] += 1
                finish(
                    request_id,
                    {
                        "id": request_id,
                        "error": f"{reason} (after {attempts} attempts)",
                        "retryable": retryable,
                        "attempts": attempts,
                        "ts": time.time(),
                        "batch_id": batch_id,
                        "round": round_index,
                    },
                )
            flush()
        counts["retry"] = len(members)
    finally:
        flush()
        responses.close()
        retry_log.close()
    return counts


def _stream_results(
    ctx: Context, info: BatchInfo, handle: Callable[[ItemResult], None], flush: Callable[[], None]
) -> None:
    """Feed every result to ``handle``; a dropped download starts over (``handle`` skips what it
    already took)."""
    provider = ctx.provider()
    for attempt in range(RESULT_STREAM_ATTEMPTS):
        try:
            for item in provider.results(info):
                handle(item)
            return
        except BatchAPIError as exc:
            flush()
            if not exc.transient or attempt + 1 >= RESULT_STREAM_ATTEMPTS:
                raise
            log.warning("result download of %s interrupted (%s): starting over", info.id, exc)
            time.sleep(backoff(attempt))


def _maybe_delete(ctx: Context, record: BatchRecord, entry: dict[str, Any]) -> None:
    """Delete the round's provider files when asked to (after the round is collected)."""
    if entry.get("files_deleted") or entry.get("mismatch") or entry.get("reconciled") == "count":
        return
    successful = entry.get("status") in SUCCESSFUL_STATUSES or (
        entry.get("status") == "ended"
        and not any((entry.get("request_counts") or {}).get(k) for k in ("canceled", "expired"))
    )
    wanted = ctx.config(
        "delete_successful_batch_files" if successful else "delete_failed_batch_files"
    )
    if not wanted or not (entry.get("batch_id") or entry.get("input_file_id")):
        return
    info = info_of(entry)
    if not info.id and ctx.backend != "openai":
        return
    try:
        ctx.provider().delete_files(info, entry.get("input_file_id"))
    except BatchAPIError as exc:
        log.warning("could not delete the files of batch %s: %s", info.id, exc)
        return
    entry["files_deleted"] = True
    record.save()
