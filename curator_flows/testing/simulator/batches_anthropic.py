"""Anthropic Message Batches (``/v1/messages/batches``), in memory.

Invariants:
- ``processing_status`` is computed lazily from timestamps: ``in_progress`` until
  ``created + validating + in_progress + finalizing``, then ``ended``; after a cancel,
  ``canceling`` for ``batch_timings["cancelling"]`` seconds, then ``ended``.
- While not ended every request counts as ``processing``; once ended each request is exactly
  one of succeeded / errored / canceled / expired and results are available (``results_url``
  is set) as JSONL in a deterministic shuffled order.
- Items are counted in ``by_prompt``/``batch_items_by_prompt`` at creation; their faults are
  decided from those attempt numbers. Error faults make an item ``errored``; ``length`` and
  ``schema_invalid`` make it succeed with degraded content.
- ``batch_expire_fraction`` ends the batch with only that fraction processed, the rest
  ``expired``; a cancel processes the elapsed share, the rest ``canceled``.
- With ``batch_queue_request_limit`` set, a create whose requests would take the requests of the
  batches not yet ended (the processing queue) past the limit is refused: 429
  ``rate_limit_error`` with a ``retry-after`` header (seconds until the first queued batch ends);
  nothing is created and no item is admitted.
- ``batch_fail_validation`` (no ``failed`` state exists here) makes every item ``errored`` with
  ``invalid_request_error``; such items are not counted in ``by_prompt``.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .account import anthropic_credit_body
from .anthropic import (
    MessagesRequest,
    anthropic_error,
    build_message,
    check_anthropic_auth,
    fault_error,
    parse_messages_request,
)
from .batch_common import (
    DAY,
    done_count,
    fraction,
    json_lines,
    paginate,
    parse_limit,
    processing_order,
    rfc3339_precise,
)
from .faults import ERROR_KINDS, decide
from .prompts import prompt_key
from .ratelimit import retry_after_headers
from .responses import InvalidRequest, anthropic_error_body, json_response
from .state import SimState

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class MessageBatchItem:
    custom_id: str
    key: str
    request: MessagesRequest | None
    error: str | None  # invalid params message
    fault: str | None = None


@dataclass
class MessageBatch:
    id: str
    created_at: float
    timings: dict[str, float]
    expire_fraction: float | None
    fail_validation: bool
    items: list[MessageBatchItem]  # in processing order
    cancel_at: float | None = None
    results: bytes | None = None
    counts: dict[str, int] | None = None

    @property
    def run_time(self) -> float:
        return self.timings["validating"] + self.timings["in_progress"]

    @property
    def end_time(self) -> float:
        return self.created_at + self.run_time + self.timings["finalizing"]

    def ended_at(self) -> float:
        if self.cancel_at is not None:
            return self.cancel_at + self.timings["cancelling"]
        return self.end_time

    def status(self, now: float) -> str:
        if now >= self.ended_at():
            return "ended"
        return "canceling" if self.cancel_at is not None else "in_progress"

    def done(self) -> int:
        n = len(self.items)
        if self.cancel_at is not None:
            return done_count(n, fraction(self.cancel_at - self.created_at, self.run_time))
        if self.expire_fraction is not None:
            return done_count(n, self.expire_fraction)
        return n


class AnthropicBatchesAPI:
    """``/v1/messages/batches``: create, retrieve, list, results, cancel, delete."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def _begin(self, request: web.Request) -> web.Response | None:
        stats = self.state.stats
        stats.count_request()
        if not check_anthropic_auth(self.state.config, request):
            stats.record(401)
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            stats.record(400)
            return anthropic_error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        return None

    def _fail(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        self.state.stats.record(status)
        return anthropic_error(status, type_, message, headers)

    def _ok(self, payload: Any, status: int = 200) -> web.Response:
        self.state.stats.record(status)
        return web.Response(
            body=orjson.dumps(payload), status=status, content_type="application/json"
        )

    def _get(self, request: web.Request) -> MessageBatch | web.Response:
        batch_id = request.match_info["batch_id"]
        batch = self.state.anthropic_batches.get(batch_id)
        if batch is None:
            return self._fail(404, f"Message batch {batch_id} not found", "not_found_error")
        return batch

    async def create(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        state = self.state
        config = state.config
        if state.account.out_of_credit():  # a batch is a paid call (see `account`)
            request_id = state.ids.make("req_")
            state.stats.record(400, refused="credit_balance")
            return json_response(anthropic_credit_body(request_id), 400, {"request-id": request_id})
        raw = await request.read()
        if len(raw) > config.max_anthropic_batch_bytes:
            return self._fail(
                413,
                f"Request exceeds the maximum size of {config.max_anthropic_batch_bytes} bytes",
                "request_too_large",
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._fail(400, "Request body is not valid JSON")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return self._fail(400, "requests: Field required (a non-empty list)")
        if len(requests) > config.max_anthropic_batch_requests:
            return self._fail(
                400,
                f"requests: a batch holds at most {config.max_anthropic_batch_requests} requests",
            )
        items: list[MessageBatchItem] = []
        seen: set[str] = set()
        for i, entry in enumerate(requests):
            if not isinstance(entry, dict):
                return self._fail(400, f"requests.{i}: Input should be an object")
            custom_id = entry.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                return self._fail(
                    400, f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
                )
            if custom_id in seen:
                return self._fail(400, f"requests.{i}.custom_id: duplicate custom_id {custom_id}")
            seen.add(custom_id)
            params = entry.get("params")
            if not isinstance(params, dict):
                return self._fail(400, f"requests.{i}.params: Field required")
            try:
                req, error = parse_messages_request(params), None
            except InvalidRequest as exc:
                req, error = None, exc.message
            key = req.key if req is not None else prompt_key(params.get("messages"))
            items.append(MessageBatchItem(custom_id, key, req, error))
        refused = self._queue_refusal(len(items))
        if refused is not None:
            return refused
        if config.batch_fail_validation:
            for item in items:
                item.error = "Request validation failed (simulated: batch_fail_validation)."
        else:
            state.account.spend(len(items))
            attempts = state.stats.admit_batch_items(
                [item.key for item in items],
                [item.request.system if item.request else None for item in items],
            )
            for item, attempt in zip(items, attempts, strict=True):
                if item.error is None:
                    item.fault = decide(item.key, attempt, config.faults, config.seed)
        salt = hashlib.blake2b(raw, digest_size=16).digest()
        items = [items[i] for i in processing_order(config.seed, salt, len(items))]
        batch = MessageBatch(
            id=state.ids.make("msgbatch_"),
            created_at=time.time(),
            timings=config.timings,
            expire_fraction=config.batch_expire_fraction,
            fail_validation=config.batch_fail_validation,
            items=items,
        )
        state.anthropic_batches[batch.id] = batch
        state.stats.batch_created("anthropic", None)
        return self._ok(self._view(batch, request))

    def _queue_refusal(self, requests: int) -> web.Response | None:
        """The 429 of a create of ``requests`` requests that the processing queue limit
        refuses (``None``: they fit, or there is no limit)."""
        state = self.state
        limit = state.config.batch_queue_request_limit
        if limit is None:
            return None
        now = time.time()
        live = [b for b in state.anthropic_batches.values() if b.status(now) != "ended"]
        queued = sum(len(b.items) for b in live)
        refused = queued + requests > limit
        state.stats.batch_queue("anthropic", queued + (0 if refused else requests), refused)
        if not refused:
            return None
        first_end = min((b.ended_at() for b in live), default=now + 1.0)
        headers = retry_after_headers(first_end - now)
        headers["request-id"] = state.ids.make("req_")
        return self._fail(
            429,
            f"This request would exceed your organization's rate limit of {limit:,} batch "
            f"requests in the processing queue ({queued:,} queued, {requests:,} in this batch). "
            "Please try again once some of your message batches have ended.",
            "rate_limit_error",
            headers,
        )

    def _view(self, batch: MessageBatch, request: web.Request) -> dict[str, Any]:
        now = time.time()
        status = batch.status(now)
        if status == "ended" and batch.results is None:
            self._finish(batch)
        n = len(batch.items)
        counts = batch.counts if status == "ended" and batch.counts else None
        if counts is None:
            counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results_url = None
        if status == "ended":
            results_url = (
                f"{request.scheme}://{request.host}/v1/messages/batches/{batch.id}/results"
            )
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": dict(counts),
            "ended_at": rfc3339_precise(batch.ended_at()) if status == "ended" else None,
            "created_at": rfc3339_precise(batch.created_at),
            "expires_at": rfc3339_precise(batch.created_at + DAY),
            "cancel_initiated_at": rfc3339_precise(batch.cancel_at)
            if batch.cancel_at is not None
            else None,
            "archived_at": None,
            "results_url": results_url,
        }

    def _finish(self, batch: MessageBatch) -> None:
        """Build the results (once) for an ended batch."""
        state = self.state
        k = batch.done()
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines: list[dict[str, Any]] = []
        for index, item in enumerate(batch.items):
            result: dict[str, Any]
            if index >= k:
                kind = "canceled" if batch.cancel_at is not None else "expired"
                result = {"type": kind}
                counts[kind] += 1
            elif item.error is not None or item.request is None:
                result = {
                    "type": "errored",
                    "error": anthropic_error_body("invalid_request_error", item.error or ""),
                }
                counts["errored"] += 1
            else:
                if item.fault is not None:
                    state.stats.count_fault(item.fault)
                if item.fault in ERROR_KINDS:
                    fault = item.fault if item.fault in ("429", "529", "503") else "500"
                    result = {"type": "errored", "error": fault_error(fault)[1]}
                    counts["errored"] += 1
                else:
                    try:
                        message = build_message(
                            state, item.request, item.fault, state.ids.make("msg_")
                        )
                        result = {"type": "succeeded", "message": message}
                        counts["succeeded"] += 1
                    except InvalidRequest as exc:
                        result = {
                            "type": "errored",
                            "error": anthropic_error_body("invalid_request_error", exc.message),
                        }
                        counts["errored"] += 1
            lines.append({"custom_id": item.custom_id, "result": result})
        batch.results = json_lines(lines, orjson.dumps)
        batch.counts = counts

    async def retrieve(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        batch = self._get(request)
        if isinstance(batch, web.Response):
            return batch
        return self._ok(self._view(batch, request))

    async def results(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        batch = self._get(request)
        if isinstance(batch, web.Response):
            return batch
        view = self._view(batch, request)
        if view["processing_status"] != "ended" or batch.results is None:
            return self._fail(
                400,
                f"Message batch {batch.id} has not ended yet "
                f"(processing_status={view['processing_status']}); results are not available.",
            )
        self.state.stats.record(200)
        return web.Response(body=batch.results, content_type="application/x-jsonl")

    async def list(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        try:
            limit = parse_limit(request.query.get("limit"), 20, 1000)
        except ValueError as exc:
            return self._fail(400, str(exc))
        batches = list(reversed(self.state.anthropic_batches.values()))
        ids = [b.id for b in batches]
        page, has_more = paginate(
            batches,
            ids,
            limit,
            after_id=request.query.get("after_id"),
            before_id=request.query.get("before_id"),
        )
        data = [self._view(b, request) for b in page]
        return self._ok(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def cancel(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        batch = self._get(request)
        if isinstance(batch, web.Response):
            return batch
        now = time.time()
        if batch.status(now) == "in_progress":
            batch.cancel_at = now
            self.state.stats.batch_cancelled()
        return self._ok(self._view(batch, request))

    async def delete(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        batch = self._get(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.status(time.time()) != "ended":
            return self._fail(400, f"Message batch {batch.id} cannot be deleted before it ends")
        del self.state.anthropic_batches[batch.id]
        return self._ok({"id": batch.id, "type": "message_batch_deleted"})
