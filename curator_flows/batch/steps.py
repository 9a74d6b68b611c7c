"""The batch steps that talk to the provider about batches: submit, poll and cancel
(``collect`` is in :mod:`.collect`, ``status`` in :mod:`.status`).

The cycle per shard: submit → poll (until done) → collect → submit again while collect says
``resubmit`` (a new round with only the requests still owed). Each step is a synchronous
function over the run directory; any of them can run in a fresh process on another machine,
hours after the previous one, and be retried.

Invariants:
- **intent first**: ``submit`` saves a round in ``intent`` state (request count, time) before
  uploading or creating anything; it records the uploaded file id before the create call (and
  reuses it on a retry) and the batch id the moment the create call returns. A round whose
  record says it may have been created is reconciled (see the provider modules) before anything
  new is created, and a round that is ``submitted`` or later is never created again;
- a create call is never retried blindly: after a transport failure or 5xx the provider is asked
  first whether the batch exists;
- ``poll`` makes at most one status request (plus a reconciliation list when the round is
  unsent) and never blocks;
- ``cancel`` writes the run's cancel flag first, then cancels every live batch; the flag stops
  every later round (and a submit that raced with it cancels what it just created) until a
  submit with ``retry_failed=True`` starts a new campaign.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

from ..budget import reserve_batch
from ..errors import BatchStepError, LeaseHeldError
from ..ledger import StepLedger
from ..results import BatchShardState
from .base import Ambiguous, BatchInfo, BatchProvider, RoundIntent
from .context import Context, describe
from .records import (
    COLLECTED,
    ENDED,
    SUBMITTED,
    UNSENT,
    UPLOADED,
    BatchRecord,
    cancelled,
    write_cancel_flag,
)
from .responses import (
    ShardScan,
    pending_ids,
    pending_requests,
    scan_responses,
)
from .sizing import BATCH_LIMITS
from .transport import BatchAPIError, backoff

log = logging.getLogger(__name__)

CREATE_ATTEMPTS = 5
#: create/upload rejections that mean "this input is bad" (the round ends as ``rejected``)
REJECTED_STATUSES = (400, 413, 422)


def _record_created(record: BatchRecord, entry: dict[str, Any], info: BatchInfo) -> None:
    """Save the batch id of a round: the end of the double-billing window (and the moment the
    round's requests count as sent in the run's ledger)."""
    first = not entry.get("batch_id")
    entry.update(info.record_fields())
    entry["state"] = ENDED if info.ended else SUBMITTED
    entry["submitted_at"] = time.time()
    if info.ended:
        entry["ended_at"] = time.time()
    if info.matched_by:
        entry["reconciled"] = info.matched_by
    record.save()
    if first:
        ledger = StepLedger(record.store, "submit", [record.shard])
        ledger.set(sent=int(entry.get("requests") or 0))
        ledger.close()


# --------------------------------------------------------------------------- reconcile
def _reconcile(
    ctx: Context, record: BatchRecord, entry: dict[str, Any], scan: ShardScan | None = None
) -> BatchInfo | None:
    """The batch an earlier (crashed) submit of ``entry`` created, if any; raises Ambiguous.
    ``scan``: the shard's responses when the caller read them already."""
    provider = ctx.provider()
    others = [BatchRecord.load(ctx.store, s) for s in ctx.shards if s != record.shard]
    claimed = {batch_id for other in others for batch_id in other.batch_ids()}
    intent = ctx.intent(record, entry)
    if ctx.backend == "anthropic":
        if scan is None:
            scan = scan_responses(ctx.store, record.shard, record.campaign_start)
        members = pending_ids(ctx.store, record.shard, scan)
        rivals = sum(1 for other in others if _unsent_of_size(other.current, entry["requests"]))
        return provider.find(intent, claimed, members.__contains__, rivals)  # type: ignore[call-arg]
    return provider.find(intent, claimed, None)


def _unsent_of_size(entry: dict[str, Any] | None, requests: int) -> bool:
    """Whether another shard's current round may be a batch of ``requests`` created unseen."""
    return entry is not None and entry["state"] in UNSENT and entry["requests"] == requests


# --------------------------------------------------------------------------- submit
def submit_shard(ctx: Context, shard: str, retry_failed: bool = False) -> BatchShardState:
    """Create the shard's next batch unless one exists; see :func:`curator_flows.steps.submit`.
    Holds the shard's lease: two workers never submit the same shard at once."""
    with ctx.leased(shard):
        return _submit_shard(ctx, shard, retry_failed)


def _submit_shard(ctx: Context, shard: str, retry_failed: bool) -> BatchShardState:
    now = time.time()
    record = ctx.record(shard)
    entry = record.current
    if entry is not None and entry["state"] in (SUBMITTED, ENDED):
        return describe(ctx, record, entry["state"], created=False)
    if entry is not None and entry["state"] in UNSENT:
        scan = None
        if ctx.backend == "anthropic":  # its reconciliation reads them too
            scan = scan_responses(ctx.store, shard, record.campaign_start)
        try:
            info = _reconcile(ctx, record, entry, scan)
        except Ambiguous as exc:
            return describe(ctx, record, "reconciling", created=False, candidates=exc.candidates)
        if info is not None:
            log.warning(
                "shard %s round %d: re-attached to batch %s", shard, entry["round"], info.id
            )
            _record_created(record, entry, info)
            return describe(ctx, record, entry["state"], created=False, reattached=True)
        if cancelled(ctx.store, record):
            if not retry_failed:
                return describe(ctx, record, "cancelled", created=False)
            record.restart_campaign_with(entry, now)
        return _send(ctx, record, entry, now, scan)
    # no round yet, or the last one is collected: is another one owed?
    scan = scan_responses(ctx.store, shard, record.campaign_start)
    owed = ctx.sizes[shard] - len(scan.succeeded) - len(scan.final_failed)
    if owed > 0 and cancelled(ctx.store, record):
        if not retry_failed:
            return describe(ctx, record, "cancelled", created=False, pending=owed)
        record.start_campaign(now)
    elif owed <= 0:
        if not (retry_failed and scan.final_failed):
            stopped = bool(scan.final_failed) and cancelled(ctx.store, record)
            return describe(
                ctx, record, "cancelled" if stopped else "done", created=False, pending=0
            )
        record.start_campaign(now)
    return _send(ctx, record, None, now, scan)


def _send(
    ctx: Context,
    record: BatchRecord,
    entry: dict[str, Any] | None,
    now: float,
    scan: ShardScan | None = None,
) -> dict[str, Any]:
    """Write the input, save the intent (new round) or reuse it, upload, create, record.
    ``scan``: the shard's responses, when the caller read them already (no line was written
    since: this step holds the shard's lease)."""
    shard = record.shard
    provider = ctx.provider(for_input=True)
    if scan is None:
        scan = scan_responses(ctx.store, shard, record.campaign_start)
    else:  # judged for the campaign this round belongs to (it may have started just now)
        scan = scan.for_campaign(record.campaign_start)
    max_requests, max_bytes = BATCH_LIMITS[ctx.backend]
    if entry is None and not reserve_batch(  # max_cost: a new round's worst case must fit
        ctx.store, ctx.llm, shard, len(record.rounds), pending_requests(ctx.store, shard, scan)
    ):
        return describe(ctx, record, "waiting_for_budget", created=False)
    fd, path = tempfile.mkstemp(prefix=f"curator-batch-{shard}-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as handle:
            count, size = provider.write_input(handle, pending_requests(ctx.store, shard, scan))
        if count > max_requests or size > max_bytes:
            raise BatchStepError(
                f"shard {shard}: {count} requests / {size} bytes exceed the {ctx.backend} batch "
                f"limit of {max_requests} requests / {max_bytes} bytes; prepare the run again "
                "with a smaller batch_size"
            )
        if entry is None:
            if count == 0:
                return describe(ctx, record, "done", created=False, pending=0)
            entry = record.new_round(count, size, now)
            record.save()  # the intent: before anything that could bill
        elif count == 0:  # nothing left to send for an unsent round: close it empty
            entry.update(
                state=COLLECTED,
                status="empty",
                collected_at=time.time(),
                collected={"succeeded": 0, "failed": 0, "retry": 0, "foreign": 0},
            )
            record.save()
            return describe(ctx, record, "done", created=False, pending=0)
        elif entry["requests"] != count:
            entry["requests"], entry["input_bytes"] = count, size
            record.save()
        intent = ctx.intent(record, entry)
        try:
            if provider.uploads_files and not entry.get("input_file_id"):
                filename = f"curator-{ctx.run_id}-{shard}-r{entry['round']}.jsonl"
                entry["input_file_id"] = intent.input_file_id = provider.upload(path, filename)
                entry.update(state=UPLOADED, uploaded_at=time.time())
                record.save()
            info = _create(ctx, record, provider, path, intent)
        except BatchAPIError as exc:
            if exc.status in REJECTED_STATUSES:
                return _rejected(ctx, record, entry, str(exc))
            raise
    finally:
        if os.path.exists(path):
            os.remove(path)
    if info is None:
        return describe(ctx, record, "reconciling", created=False)
    _record_created(record, entry, info)
    if cancelled(ctx.store, record):  # a cancel() raced with this submit: honour it
        provider.cancel(info.id)
    created = info.matched_by is None
    log.info("shard %s round %d: batch %s (%d requests)", shard, entry["round"], info.id, count)
    return describe(ctx, record, entry["state"], created=created, reattached=not created)


def _create(
    ctx: Context, record: BatchRecord, provider: BatchProvider, path: str, intent: RoundIntent
) -> BatchInfo | None:
    """The create call; after an answer-less failure, look for the batch before calling again.
    ``None``: it may exist but cannot be told apart yet (the round stays unsent)."""
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return provider.create(path, intent.input_file_id, intent)
        except BatchAPIError as exc:
            if not exc.transient or attempt + 1 >= CREATE_ATTEMPTS:
                raise
            log.warning("create failed (%s): checking whether the batch exists", exc)
            time.sleep(backoff(attempt))
            try:
                info = _reconcile(ctx, record, record.current)
            except Ambiguous:
                return None
            if info is not None:
                return info
    raise AssertionError("unreachable")


def _rejected(
    ctx: Context, record: BatchRecord, entry: dict[str, Any], reason: str
) -> dict[str, Any]:
    """The provider refused the input outright: nothing runs, the round ends as ``rejected``."""
    entry.update(state=ENDED, status="rejected", errors=[reason[:1000]], ended_at=time.time())
    record.save()
    return describe(ctx, record, "ended", created=False)


# --------------------------------------------------------------------------- poll
def poll_shard(ctx: Context, shard: str) -> BatchShardState:
    """One status check of the shard's current batch; ``done`` = ready to collect.

    Holds no lease (sensors and triggers poll while a submit or collect may run): it saves what
    it learned only if nobody saved the record since it was read, and re-attaches an unsent
    round only when it can take the shard's lease."""
    record = ctx.record(shard)
    entry = record.current
    if entry is None:
        raise BatchStepError(f"shard {shard} has no batch yet: call submit first")
    if entry["state"] in (ENDED, COLLECTED):
        return describe(
            ctx, record, entry["state"], done=True, request_counts=entry.get("request_counts") or {}
        )
    if entry["state"] in UNSENT:
        try:
            with ctx.leased(shard):
                record = ctx.record(shard)  # read again under the lease
                entry = record.current
                if entry["state"] in UNSENT:
                    info = _reconcile(ctx, record, entry)
                    if info is None:
                        raise BatchStepError(
                            f"shard {shard} round {entry['round']} was never created (intent at "
                            f"{entry['intent_at']:.0f}): call submit, which creates it"
                        )
                    _record_created(record, entry, info)
        except Ambiguous as exc:
            return describe(ctx, record, "reconciling", done=False, candidates=exc.candidates)
        except LeaseHeldError:  # a submit is creating it right now: ask again later
            return describe(ctx, record, "reconciling", done=False)
        entry = record.current
        done = entry["state"] in (ENDED, COLLECTED)
        return describe(ctx, record, entry["state"], done=done)
    info = ctx.provider().get(entry["batch_id"])
    entry.update(info.record_fields())
    if info.ended:
        entry["state"] = ENDED
        entry["ended_at"] = time.time()
    entry["polled_at"] = time.time()
    if not record.save_if_unchanged():  # a submit or collect moved on meanwhile: theirs wins
        record = ctx.record(shard)
        entry = record.current
        done = entry["state"] in (ENDED, COLLECTED)
        return describe(ctx, record, entry["state"], done=done)
    return describe(
        ctx, record, entry["state"], done=info.ended, request_counts=info.request_counts
    )


# --------------------------------------------------------------------------- cancel
def cancel_run(ctx: Context) -> dict[str, Any]:
    """Flag the run cancelled, then cancel every live batch of it."""
    flag = write_cancel_flag(ctx.store)
    batches, errors = [], []
    for shard in ctx.shards:
        record = ctx.record(shard)
        entry = record.current
        if entry is None or entry["state"] in (ENDED, COLLECTED):
            continue
        try:
            if entry["state"] in UNSENT:
                try:
                    with ctx.leased(shard):
                        info = _reconcile(ctx, record, entry)
                        if info is None:
                            continue  # never created; the flag stops any later create
                        _record_created(record, entry, info)
                except Ambiguous as exc:
                    errors.append({"shard": shard, "error": str(exc)})
                    continue
                except LeaseHeldError:
                    continue  # a submit is creating it: the flag makes it cancel what it made
            info = ctx.provider().cancel(entry["batch_id"])
            batches.append({"shard": shard, "batch_id": info.id, "status": info.status})
        except BatchAPIError as exc:
            errors.append({"shard": shard, "batch_id": entry.get("batch_id"), "error": str(exc)})
    return {
        "run_uri": ctx.store.uri,
        "run_id": ctx.run_id,
        "cancelled_at": flag["at"],
        "batches": batches,
        "errors": errors,
    }
