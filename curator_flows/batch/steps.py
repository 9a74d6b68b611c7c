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
- **fenced**: right before the upload and before every create call, ``submit`` checks (no I/O)
  that the shard's lease is still certainly its own (:meth:`ShardLeases.check`), so a worker
  frozen past its lease, whose shard another worker took over, never creates a second batch;
- ``poll`` makes at most one status request (plus a reconciliation list when the round is
  unsent) and never blocks;
- ``cancel`` writes the run's cancel flag first, then cancels every live batch; the flag stops
  every later round (and a submit that raced with it cancels what it just created) until a
  submit with ``retry_failed=True`` starts a new campaign;
- a batch is created only when the provider's batch queue has room for it (:mod:`.queue`); a
  shard that must wait is ``queued`` (no round is written), and a round a queue limit refused
  is closed without a line and is not an attempt;
- a shard without a batch record (lost, or never written) is looked up at the provider before
  anything is created for it, and a batch found there is adopted (:func:`_adopt`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

import orjson

from ..backends.account import account_refusal, refusal_error
from ..budget import reserve_batch
from ..errors import BatchStepError, ConfigError, LeaseHeldError
from ..ledger import StepLedger
from ..results import BatchShardState
from .base import RECONCILE_SKEW, Ambiguous, BatchInfo, BatchProvider, RoundIntent
from .context import Context, describe, info_of
from .queue import InputTally, Load, Verdict, refusal_of
from .records import (
    COLLECTED,
    ENDED,
    INTENT,
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


class QueueRefused(Exception):
    """The provider refused a create because its batch queue is full (nothing was created)."""

    def __init__(self, error: BatchAPIError) -> None:
        super().__init__(str(error))
        self.error = error


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
    if entry is not None and entry["state"] == ENDED and refusal_of(entry):
        close_refused_round(ctx, record, entry)
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
    if owed > 0 and not record.stored:
        adopted = _adopt(ctx, record, scan)
        if adopted is not None:
            return adopted
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
        owed = len(scan.final_failed)
    waiting = _no_room_yet(ctx, record, owed)
    if waiting is not None:
        return waiting
    return _send(ctx, record, None, now, scan)


def next_load(ctx: Context, record: BatchRecord, owed: int) -> Load:
    """An estimate of what the shard's next round holds of the provider's queue: ``owed``
    requests, tokens in proportion to its last round (or to the shard's prepared estimate)."""
    entry = record.current
    if entry is not None and entry.get("input_tokens") is not None and entry["requests"]:
        tokens, requests = int(entry["input_tokens"]), int(entry["requests"])
    else:
        shard = next(s for s in ctx.manifest["shards"] if s["name"] == record.shard)
        tokens, requests = int(shard.get("input_tokens") or 0), int(shard["requests"])
    share = min(1.0, owed / requests) if requests else 1.0
    return Load(round(tokens * share), owed)


def _no_room_yet(ctx: Context, record: BatchRecord, owed: int) -> BatchShardState | None:
    """The ``queued`` state when the provider's queue clearly has no room for the shard's next
    round (checked before its input is written; the exact admission follows in ``_send``)."""
    try:
        verdict = ctx.queue.check(record.shard, next_load(ctx, record, owed))
    except ConfigError:  # the estimate errs high: the exact admission decides
        return None
    if verdict.admitted:
        return None
    return _queued(ctx, record, verdict, owed)


def _queued(ctx: Context, record: BatchRecord, verdict: Verdict, pending: int) -> BatchShardState:
    """The state of a shard that waits for room in the provider's batch queue."""
    if record.shard not in ctx.reported_waiting:
        ctx.reported_waiting.add(record.shard)
        log.info("shard %s waits for %s", record.shard, verdict.waiting_for)
    return describe(
        ctx,
        record,
        "queued",
        created=False,
        status="queued",
        pending=pending,
        wait_seconds=verdict.wait_seconds,
    )


def close_refused_round(ctx: Context, record: BatchRecord, entry: dict[str, Any]) -> Verdict:
    """Close round ``entry``, which a batch queue limit refused: no line, not an attempt; the
    queue learns from it; the refused batch's input file is deleted (it ran nothing)."""
    refusal = refusal_of(entry) or {"kind": None, "limit": None, "message": "refused"}
    own = Load(int(entry.get("input_tokens") or 0), int(entry["requests"]))
    record.close_refused(entry, refusal)
    record.save()
    verdict = ctx.queue.learn(
        record.shard, entry["round"], own, refusal, admitted_under=entry.get("admitted_under")
    )
    if entry.get("input_file_id") and ctx.backend == "openai":
        try:
            ctx.provider().delete_files(info_of(entry), entry["input_file_id"])
            entry["files_deleted"] = True
            record.save()
        except BatchAPIError as exc:
            log.warning("could not delete the input file of refused batch: %s", exc)
    return verdict


def _send(
    ctx: Context,
    record: BatchRecord,
    entry: dict[str, Any] | None,
    now: float,
    scan: ShardScan | None = None,
) -> dict[str, Any]:
    """Write the input, be admitted to the provider's queue, save the intent (new round) or
    reuse it, upload, create, record. ``scan``: the shard's responses, when the caller read them
    already (no line was written since: this step holds the shard's lease)."""
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
    tally = InputTally()
    fd, path = tempfile.mkstemp(prefix=f"curator-batch-{shard}-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as handle:
            count, size = provider.write_input(
                handle, tally.over(pending_requests(ctx.store, shard, scan))
            )
        if count > max_requests or size > max_bytes:
            raise BatchStepError(
                f"shard {shard}: {count} requests / {size} bytes exceed the {ctx.backend} batch "
                f"limit of {max_requests} requests / {max_bytes} bytes; prepare the run again "
                "with a smaller batch_size"
            )
        own = Load(tally.tokens, count)
        if entry is None:
            if count == 0:
                return describe(ctx, record, "done", created=False, pending=0)
            verdict = ctx.queue.admit(shard, len(record.rounds), own)
            if not verdict.admitted:
                return _queued(ctx, record, verdict, count)
            ctx.reported_waiting.discard(shard)
            entry = record.new_round(count, size, now)
            entry["input_tokens"] = tally.tokens
            if verdict.limits:
                entry["admitted_under"] = verdict.limits
            record.save()  # the intent: before anything that could bill
        elif count == 0:  # nothing left to send for an unsent round: close it empty
            entry.update(
                state=COLLECTED,
                status="empty",
                collected_at=time.time(),
                collected={"succeeded": 0, "failed": 0, "retry": 0, "foreign": 0},
            )
            record.save()
            ctx.queue.release(shard, entry["round"])
            return describe(ctx, record, "done", created=False, pending=0)
        else:  # an unsent round may exist at the provider already: it goes on, room or not
            if entry["requests"] != count or entry.get("input_tokens") != tally.tokens:
                entry.update(requests=count, input_bytes=size, input_tokens=tally.tokens)
                record.save()
            ctx.queue.claim(shard, entry["round"], own)
        intent = ctx.intent(record, entry)
        try:
            if provider.uploads_files and not entry.get("input_file_id"):
                ctx.check_leases()  # the fence: still this worker's shard, right before sending
                filename = f"curator-{ctx.run_id}-{shard}-r{entry['round']}.jsonl"
                entry["input_file_id"] = intent.input_file_id = provider.upload(path, filename)
                entry.update(state=UPLOADED, uploaded_at=time.time())
                record.save()
            info = _create(ctx, record, provider, path, intent)
        except QueueRefused as refused:
            return _create_refused(ctx, record, entry, refused.error)
        except BatchAPIError as exc:
            refusal = account_refusal(exc.status, exc.body)
            if refusal is not None:  # the account, not the input: the round stays unsent
                raise refusal_error(
                    refusal.kind,
                    refusal.message,
                    status=exc.status,
                    endpoint=getattr(provider, "base", provider.name),
                    retry_after=refusal.retry_after,
                    consequence=f"shard {shard}'s batch was not created and its requests stay "
                    "pending",
                ) from None
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
    ``None``: it may exist but cannot be told apart yet (the round stays unsent). Raises
    :class:`QueueRefused` when Anthropic's first answer is 429 (its batch queue, or its rate
    limit, refused the create: nothing was created)."""
    for attempt in range(CREATE_ATTEMPTS):
        ctx.check_leases()  # the fence: a worker frozen past its lease creates nothing
        try:
            return provider.create(path, intent.input_file_id, intent)
        except BatchAPIError as exc:
            if account_refusal(exc.status, exc.body) is not None:
                raise  # the account (credit, a spend limit), not the queue: _send says so
            if exc.status == 429 and ctx.backend == "anthropic":
                if attempt == 0:
                    raise QueueRefused(exc) from None
                return None  # an earlier attempt's answer was lost: reconcile before anything
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


def _create_refused(
    ctx: Context, record: BatchRecord, entry: dict[str, Any], error: BatchAPIError
) -> BatchShardState:
    """Anthropic answered the create 429: nothing was created. The round is closed as refused
    (not an attempt) and the shard waits at least the answer's ``retry-after``."""
    message = _error_message(error)
    refusal = {"kind": "requests", "limit": None, "message": f"HTTP 429: {message}"}
    own = Load(int(entry.get("input_tokens") or 0), int(entry["requests"]))
    record.close_refused(entry, refusal)
    record.save()
    verdict = ctx.queue.learn(
        record.shard,
        entry["round"],
        own,
        refusal,
        getattr(error, "retry_after", None),
        admitted_under=entry.get("admitted_under"),
    )
    return _queued(ctx, record, verdict, entry["requests"])


def _error_message(error: BatchAPIError) -> str:
    """The provider's own message of an error answer (its whole text when not JSON)."""
    try:
        body = orjson.loads(error.body)
        inner = body.get("error") if isinstance(body, dict) else None
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        pass
    return str(error)[:500]


# --------------------------------------------------------------------------- adopt
def _adopt(ctx: Context, record: BatchRecord, scan: ShardScan) -> BatchShardState | None:
    """A shard without a batch record: adopt the batch an earlier submit of this run made for
    it at the provider, if any (the record was lost, or its write never landed), instead of
    paying for a second one. The record is saved either way, so this is asked once.

    OpenAI batches name their run, shard and round (``metadata``): the newest round found is
    adopted, with the rounds before it as collected placeholders (a round is created only after
    the one before it was collected). Anthropic batches name nothing: the reconciliation
    heuristic of :mod:`.anthropic` decides, with this shard's pending requests as the round."""
    shard = record.shard
    since = float(ctx.manifest.get("created_at") or 0.0) - RECONCILE_SKEW
    provider = ctx.provider()
    members = pending_ids(ctx.store, shard, scan)
    if ctx.backend == "openai":
        info = provider.find_shard(ctx.run_id, shard, since)  # type: ignore[attr-defined]
        round_index = int(info.metadata["curator_round"]) if info is not None else 0
    else:
        others = [BatchRecord.load(ctx.store, s) for s in ctx.shards if s != shard]
        claimed = {batch_id for other in others for batch_id in other.batch_ids()}
        intent = RoundIntent(ctx.run_id, shard, 0, len(members), since + RECONCILE_SKEW)
        # shards that may own a batch of this size unseen: never submitted, or mid-create
        rivals = sum(
            1
            for other in others
            if not other.rounds or _unsent_of_size(other.current, len(members))
        )
        try:
            info = provider.find(intent, claimed, members.__contains__, rivals)  # type: ignore[call-arg]
        except Ambiguous as exc:
            return describe(ctx, record, "reconciling", created=False, candidates=exc.candidates)
        round_index = 0
    if info is None:
        record.save()  # looked up once: later submits of this shard need not ask again
        return None
    now = time.time()
    for index in range(round_index):  # collected before the record was lost
        record.rounds.append(
            {
                "round": index,
                "attempt": index + 1,
                "state": COLLECTED,
                "status": "lost",
                "adopted": "lost",
                "intent_at": info.created_at or now,
                "requests": 0,
                "collected": {"succeeded": 0, "failed": 0, "retry": 0, "foreign": 0},
            }
        )
    entry = {
        "round": round_index,
        "attempt": round_index + 1,
        "state": INTENT,
        "intent_at": info.created_at or now,
        "requests": info.total or len(members),
        "adopted": "provider",
    }
    record.rounds.append(entry)
    if record.data.get("campaign_started_at") is None:
        record.data["campaign_started_at"] = info.created_at or now
    entry.update(info.record_fields())
    entry["state"] = ENDED if info.ended else SUBMITTED
    entry["submitted_at"] = info.created_at or now
    if info.ended:
        entry["ended_at"] = now
    else:
        ctx.queue.claim(shard, round_index, Load(0, int(entry["requests"])))
    record.save()
    log.warning(
        "shard %s has no batch record: adopted batch %s (round %d, %s) that an earlier submit "
        "of this run created, instead of creating another",
        shard,
        info.id,
        round_index,
        info.status,
    )
    return describe(ctx, record, entry["state"], created=False, reattached=True)


def _rejected(
    ctx: Context, record: BatchRecord, entry: dict[str, Any], reason: str
) -> dict[str, Any]:
    """The provider refused the input outright: nothing runs, the round ends as ``rejected``."""
    entry.update(state=ENDED, status="rejected", errors=[reason[:1000]], ended_at=time.time())
    record.save()
    ctx.queue.release(record.shard, entry["round"])
    return describe(ctx, record, "ended", created=False)


# --------------------------------------------------------------------------- poll
def poll_shard(ctx: Context, shard: str) -> BatchShardState:
    """One status check of the shard's current batch; ``done`` = ready to collect, or, for a
    shard ``queued`` for room in the provider's batch queue, ready to be submitted.

    Holds no lease (sensors and triggers poll while a submit or collect may run): it saves what
    it learned only if nobody saved the record since it was read, and re-attaches an unsent
    round only when it can take the shard's lease."""
    record = ctx.record(shard)
    entry = record.current
    if entry is None or refusal_of(entry) is not None:
        queued = _queued_poll(ctx, record)
        if queued is not None:
            return queued
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
    if info.ended and refusal_of(entry) is not None:
        return _queued_poll(ctx, record) or describe(ctx, record, "ended", done=True)
    return describe(
        ctx, record, entry["state"], done=info.ended, request_counts=info.request_counts
    )


def still_queued(ctx: Context, shard: str) -> BatchShardState | None:
    """The ``queued`` state of a shard that waits for room in the provider's batch queue and
    still has none, read without taking its lease (so a long wait leaves no lease behind);
    ``None`` when the shard is not such a one or may go on (take the lease and submit)."""
    record = ctx.record(shard)
    entry = record.current
    waiting = (entry is None and record.stored) or (
        entry is not None and entry["state"] == COLLECTED and entry.get("refused")
    )
    if not waiting or cancelled(ctx.store, record):
        return None
    state = _queued_poll(ctx, record)
    if state is None or state["done"]:
        return None
    return state


def _queued_poll(ctx: Context, record: BatchRecord) -> BatchShardState | None:
    """The ``queued`` state of a shard that waits for room in the provider's batch queue (its
    last round was refused, or a submit found no room for its first: its record has no round);
    ``done`` once it would be admitted. ``None``: the shard is not waiting for the queue (a
    shard never submitted has no record at all)."""
    entry = record.current
    if entry is None:
        if not record.stored:
            return None
        scan = scan_responses(ctx.store, record.shard, record.campaign_start)
        owed = ctx.sizes[record.shard] - len(scan.succeeded) - len(scan.final_failed)
        if owed <= 0:
            return None
    else:
        owed = int(entry["requests"])
    try:
        verdict = ctx.queue.check(record.shard, next_load(ctx, record, owed))
    except ConfigError:  # it can never fit: submit says so
        verdict = Verdict(True)
    wait = verdict.wait_seconds or float(ctx.config("batch_check_interval", 60.0))
    return describe(
        ctx,
        record,
        "queued",
        done=verdict.admitted,
        status="queued",
        pending=owed,
        wait_seconds=0.0 if verdict.admitted else wait,
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
            entry["status"] = info.status  # what the provider finished by now (``status``)
            entry["request_counts"] = info.request_counts or entry.get("request_counts") or {}
            record.save_if_unchanged()
        except BatchAPIError as exc:
            errors.append({"shard": shard, "batch_id": entry.get("batch_id"), "error": str(exc)})
    return {
        "run_uri": ctx.store.uri,
        "run_id": ctx.run_id,
        "cancelled_at": flag["at"],
        "batches": batches,
        "errors": errors,
    }
