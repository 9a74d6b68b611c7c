"""OpenAI Batches (``/v1/batches``), in memory.

Invariants:
- A batch's status is a pure function of its timestamps and the current time (computed lazily
  on every read): ``validating -> in_progress -> finalizing -> completed``, or ``failed`` after
  validating, ``expired`` at the end of in_progress (when ``batch_expire_fraction`` is set), or
  ``cancelling -> cancelled`` after a cancel.
- Output and error files are built once, the first time a terminal status is observed; output
  lines are in a deterministic shuffled order, so clients must join on ``custom_id``.
- Every item of a batch that passed validation is counted in ``by_prompt`` and
  ``batch_items_by_prompt`` when the batch is created; its fault (markers / rates) is decided
  from that attempt number, like an online request.
- With ``batch_enqueued_token_limit`` set, a batch whose input tokens (the prompt tokens of its
  requests, as usage would count them; ``max_tokens`` is not counted) would take its model's
  live batches (validating, in_progress, finalizing, cancelling) past the limit is created and
  fails validation with OpenAI's ``token_limit_exceeded`` error; its items are never admitted.
- Items "done" at a cancel are the first ``floor(n * elapsed share of in_progress)`` items in
  processing order; an expired batch completes ``floor(n * batch_expire_fraction)`` items and
  lists every other one in the error file with code ``batch_expired``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .account import openai_quota_body
from .batch_common import (
    DAY,
    done_count,
    fraction,
    json_lines,
    paginate,
    parse_limit,
    processing_order,
)
from .faults import ERROR_KINDS, decide
from .files_openai import openai_error, store_file
from .openai_chat import (
    ChatRequest,
    build_completion,
    check_openai_auth,
    fault_error,
    parse_chat_request,
    unauthorized,
)
from .prompts import count_prompt_tokens, prompt_key
from .responses import InvalidRequest, json_response, openai_error_body
from .state import SimState

SUPPORTED_ENDPOINTS = ("/v1/chat/completions",)
MAX_VALIDATION_ERRORS = 100
#: the statuses whose batches hold their input tokens in the model's batch queue
ENQUEUED_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
#: the organization named in the enqueued-limit message
ORGANIZATION = "org-simulator"


def enqueued_limit_error(model: str, limit: int) -> dict[str, Any]:
    """The ``errors.data`` item of a batch past its model's enqueued token limit (OpenAI's
    code and wording)."""
    return {
        "code": "token_limit_exceeded",
        "message": f"Enqueued token limit reached for {model} in organization {ORGANIZATION}. "
        f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress batches "
        "have been completed.",
        "param": None,
        "line": None,
    }


@dataclass
class BatchItem:
    custom_id: str
    key: str
    request: ChatRequest | None
    error: InvalidRequest | None
    fault: str | None = None


@dataclass
class OpenAIBatch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: float
    timings: dict[str, float]
    expire_fraction: float | None
    errors: list[dict[str, Any]] | None
    items: list[BatchItem]  # in processing order
    fail_prefix: list[int]  # fail_prefix[k] = failed items among the first k
    model: str | None
    cancel_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    finished: bool = False
    usage: dict[str, int] = field(default_factory=dict)
    #: prompt tokens of its requests: what it holds of its model's enqueued token limit
    input_tokens: int = 0

    # ---- timeline
    @property
    def validated_at(self) -> float:
        return self.created_at + self.timings["validating"]

    @property
    def run_end(self) -> float:
        return self.validated_at + self.timings["in_progress"]

    def status(self, now: float) -> str:
        if self.errors is not None:
            return "validating" if now < self.validated_at else "failed"
        if self.cancel_at is not None:
            cancelled_at = self.cancel_at + self.timings["cancelling"]
            return "cancelling" if now < cancelled_at else "cancelled"
        if now < self.validated_at:
            return "validating"
        if now < self.run_end:
            return "in_progress"
        if self.expire_fraction is not None:
            return "expired"
        if now < self.run_end + self.timings["finalizing"]:
            return "finalizing"
        return "completed"

    def done(self, status: str, now: float) -> int:
        """Items processed by `now` (in processing order)."""
        n = len(self.items)
        if status in ("validating", "failed"):
            return 0
        if status in ("cancelling", "cancelled"):
            at = self.cancel_at if self.cancel_at is not None else now
            share = fraction(at - self.validated_at, self.timings["in_progress"])
            return 0 if at < self.validated_at else done_count(n, share)
        if status == "in_progress":
            return done_count(n, fraction(now - self.validated_at, self.timings["in_progress"]))
        if status == "expired":
            return done_count(n, self.expire_fraction or 0.0)
        return n

    def to_object(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        n = len(self.items)
        k = self.done(status, now)
        failed = self.fail_prefix[k]
        if status in ("validating", "failed"):
            counts = {"total": 0, "completed": 0, "failed": 0}
        elif status == "expired":
            counts = {"total": n, "completed": k - failed, "failed": failed + (n - k)}
        else:
            counts = {"total": n, "completed": k - failed, "failed": failed}
        t = self.timings
        cancelled_early = self.cancel_at is not None and self.cancel_at < self.validated_at
        started = self.errors is None and not cancelled_early and now >= self.validated_at
        finalizing = status in ("finalizing", "completed")
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors}
            if self.errors is not None and status == "failed"
            else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "in_progress_at": int(self.validated_at) if started else None,
            "expires_at": int(self.created_at + DAY),
            "finalizing_at": int(self.run_end) if finalizing else None,
            "completed_at": int(self.run_end + t["finalizing"]) if status == "completed" else None,
            "failed_at": int(self.validated_at) if status == "failed" else None,
            "expired_at": int(self.run_end) if status == "expired" else None,
            "cancelling_at": int(self.cancel_at) if self.cancel_at is not None else None,
            "cancelled_at": int(self.cancel_at + t["cancelling"])
            if status == "cancelled" and self.cancel_at is not None
            else None,
            "request_counts": counts,
            "metadata": self.metadata,
        }
        if self.finished and self.usage:
            obj["usage"] = self.usage
        return obj


# --------------------------------------------------------------------------- batches


def _validate_lines(
    data: bytes, endpoint: str, max_lines: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """Parse input lines: ``(records, validation errors, model)``."""
    errors: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None

    def err(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(errors) < MAX_VALIDATION_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": line})

    lines = [(i + 1, raw) for i, raw in enumerate(data.split(b"\n")) if raw.strip()]
    if not lines:
        err("empty_file", "The input file is empty.", None)
        return records, errors, None
    if len(lines) > max_lines:
        err(
            "too_many_requests",
            f"The input file has {len(lines)} requests; the maximum is {max_lines}.",
            None,
        )
        return records, errors, None
    for number, raw in lines:
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            err("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        if not isinstance(record, dict):
            err("invalid_json_line", "Each line must be a JSON object.", number)
            continue
        custom_id = record.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            err("missing_required_parameter", "Missing 'custom_id'.", number, "custom_id")
            continue
        if custom_id in seen:
            err(
                "duplicate_custom_id",
                f"The custom_id {custom_id!r} is used more than once.",
                number,
                "custom_id",
            )
            continue
        seen.add(custom_id)
        if record.get("method") != "POST":
            err("invalid_method", "The method must be 'POST'.", number, "method")
            continue
        if record.get("url") != endpoint:
            err(
                "invalid_url",
                f"The url must match the batch endpoint {endpoint!r}.",
                number,
                "url",
            )
            continue
        body = record.get("body")
        if not isinstance(body, dict):
            err("missing_required_parameter", "Missing 'body' object.", number, "body")
            continue
        line_model = body.get("model")
        if isinstance(line_model, str):
            if model is None:
                model = line_model
            elif line_model != model:
                err(
                    "mismatched_model",
                    "All requests in a batch must use the same model.",
                    number,
                    "body.model",
                )
                continue
        records.append(record)
    return records, errors, model


class OpenAIBatchesAPI:
    """``/v1/batches``: create, retrieve, list, cancel."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def _begin(self, request: web.Request) -> web.Response | None:
        self.state.stats.count_request()
        if not check_openai_auth(self.state.config, request):
            self.state.stats.record(401)
            return unauthorized()
        return None

    def _fail(self, message: str, param: str | None = None, status: int = 400) -> web.Response:
        self.state.stats.record(status)
        return openai_error(message, param, status)

    def _ok(self, payload: Any) -> web.Response:
        self.state.stats.record(200)
        return json_response(payload)

    async def create(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        state = self.state
        config = state.config
        if state.account.out_of_credit():  # a batch is a paid call (see `account`)
            state.stats.record(429, refused="insufficient_quota")
            return json_response(openai_quota_body(), 429)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._fail("We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return self._fail("The request body must be a JSON object.")
        input_file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        metadata = body.get("metadata")
        if not isinstance(input_file_id, str):
            return self._fail("Missing required parameter: 'input_file_id'.", "input_file_id")
        if endpoint not in SUPPORTED_ENDPOINTS:
            return self._fail(
                f"Invalid value for 'endpoint': {endpoint!r}. Supported: "
                + ", ".join(SUPPORTED_ENDPOINTS),
                "endpoint",
            )
        if window != "24h":  # the only window OpenAI's Batch API accepts
            state.stats.record(400)
            return openai_error(
                f"Invalid value: {window!r}. Supported values are: '24h'.",
                "completion_window",
                code="invalid_value",
            )
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            return self._fail(
                "Invalid 'metadata': at most 16 string keys with string values.", "metadata"
            )
        stored = state.files.get(input_file_id)
        if stored is None:
            return self._fail(f"No such File object: {input_file_id}", "input_file_id", 404)
        if stored.purpose != "batch":
            return self._fail(
                f"The file {input_file_id} has purpose {stored.purpose!r}; expected 'batch'.",
                "input_file_id",
            )

        if config.batch_fail_validation:
            records, errors, model = (
                [],
                [
                    {
                        "code": "simulated_validation_failure",
                        "message": "Batch validation failed (simulated: batch_fail_validation).",
                        "param": None,
                        "line": None,
                    }
                ],
                None,
            )
        else:
            records, errors, model = _validate_lines(stored.data, endpoint, config.max_batch_lines)
        input_tokens = 0
        if not errors:
            input_tokens = sum(count_prompt_tokens(r["body"].get("messages")) for r in records)
            refusal = self._enqueued_refusal(model, input_tokens)
            if refusal is not None:
                records, errors = [], [refusal]

        items: list[BatchItem] = []
        if not errors:
            for record in records:
                body_ = record["body"]
                try:
                    req, error = parse_chat_request(body_), None
                except InvalidRequest as exc:
                    req, error = None, exc
                key = req.key if req is not None else prompt_key(body_.get("messages"))
                items.append(BatchItem(record["custom_id"], key, req, error))
            state.account.spend(len(items))
            attempts = state.stats.admit_batch_items(
                [item.key for item in items],
                [item.request.system if item.request else None for item in items],
            )
            for item, attempt in zip(items, attempts, strict=True):
                if item.request is not None:
                    item.fault = decide(item.key, attempt, config.faults, config.seed)
            salt = hashlib.blake2b(stored.data, digest_size=16).digest()
            items = [items[i] for i in processing_order(config.seed, salt, len(items))]
        fail_prefix = [0]
        for item in items:
            failed = item.error is not None or item.fault in ERROR_KINDS
            fail_prefix.append(fail_prefix[-1] + int(failed))

        batch = OpenAIBatch(
            id=state.ids.make("batch_"),
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=window,
            metadata=metadata,
            created_at=time.time(),
            timings=config.timings,
            expire_fraction=config.batch_expire_fraction,
            errors=errors or None,
            items=items,
            fail_prefix=fail_prefix,
            model=model,
            input_tokens=0 if errors else input_tokens,
        )
        state.openai_batches[batch.id] = batch
        run_shard = None
        if metadata and "curator_run_id" in metadata and "curator_shard" in metadata:
            run_shard = f"{metadata['curator_run_id']}/{metadata['curator_shard']}"
        state.stats.batch_created("openai", run_shard)
        return self._ok(self._view(batch))

    def _enqueued_refusal(self, model: str | None, tokens: int) -> dict[str, Any] | None:
        """The validation error of a new batch of ``tokens`` input tokens that its model's
        enqueued token limit refuses (``None``: it fits, or there is no limit)."""
        limit = self.state.config.batch_enqueued_token_limit
        if limit is None:
            return None
        now = time.time()
        enqueued = sum(
            batch.input_tokens
            for batch in self.state.openai_batches.values()
            if batch.model == model and batch.status(now) in ENQUEUED_STATUSES
        )
        refused = enqueued + tokens > limit
        self.state.stats.batch_queue("openai", enqueued + (0 if refused else tokens), refused)
        return enqueued_limit_error(model or "unknown", limit) if refused else None

    def _view(self, batch: OpenAIBatch) -> dict[str, Any]:
        now = time.time()
        status = batch.status(now)
        if not batch.finished and status in ("completed", "expired", "cancelled"):
            self._finish(batch, status, now)
        return batch.to_object(now)

    def _finish(self, batch: OpenAIBatch, status: str, now: float) -> None:
        """Build the output and error files (once) for a batch in a terminal status."""
        state = self.state
        k = batch.done(status, now)
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        prompt_tokens = completion_tokens = cached_tokens = reasoning_tokens = 0
        for item in batch.items[:k]:
            line_id = state.ids.make("batch_req_")
            request_id = state.ids.make("req_")
            if item.error is not None:
                body = openai_error_body(
                    item.error.message, "invalid_request_error", item.error.param, item.error.code
                )
                errors.append(_line(line_id, item.custom_id, item.error.status, request_id, body))
                continue
            assert item.request is not None
            if item.fault is not None:
                state.stats.count_fault(item.fault)
            if item.fault in ERROR_KINDS:
                code, body = fault_error(item.fault if item.fault in ("429", "503") else "500")
                errors.append(_line(line_id, item.custom_id, code, request_id, body))
                continue
            try:
                completion = build_completion(
                    state, item.request, item.fault, state.ids.make("chatcmpl-")
                )
            except InvalidRequest as exc:
                body = openai_error_body(exc.message, "invalid_request_error", exc.param, exc.code)
                errors.append(_line(line_id, item.custom_id, exc.status, request_id, body))
                continue
            usage = completion["usage"]
            prompt_tokens += usage["prompt_tokens"]
            completion_tokens += usage["completion_tokens"]
            cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
            reasoning_tokens += usage["completion_tokens_details"]["reasoning_tokens"]
            outputs.append(_line(line_id, item.custom_id, 200, request_id, completion))
        if status == "expired":
            for item in batch.items[k:]:
                errors.append(
                    {
                        "id": state.ids.make("batch_req_"),
                        "custom_id": item.custom_id,
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed before the "
                            "completion window expired.",
                        },
                    }
                )
        if outputs:
            batch.output_file_id = store_file(
                state, f"{batch.id}_output.jsonl", "batch_output", json_lines(outputs, orjson.dumps)
            ).id
        if errors:
            batch.error_file_id = store_file(
                state, f"{batch.id}_error.jsonl", "batch_output", json_lines(errors, orjson.dumps)
            ).id
        batch.usage = {  # OpenAI's BatchUsage: both details objects are always there
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt_tokens + completion_tokens,
        }
        batch.finished = True

    async def retrieve(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        batch_id = request.match_info["batch_id"]
        batch = self.state.openai_batches.get(batch_id)
        if batch is None:
            return self._fail(f"No batch found with id '{batch_id}'.", "batch_id", 404)
        return self._ok(self._view(batch))

    async def list(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        try:
            limit = parse_limit(request.query.get("limit"), 20, 100)
        except ValueError as exc:
            return self._fail(str(exc), "limit")
        batches = list(reversed(self.state.openai_batches.values()))
        ids = [b.id for b in batches]
        page, has_more = paginate(batches, ids, limit, after_id=request.query.get("after"))
        data = [self._view(b) for b in page]
        return self._ok(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": has_more,
            }
        )

    async def cancel(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        batch_id = request.match_info["batch_id"]
        batch = self.state.openai_batches.get(batch_id)
        if batch is None:
            return self._fail(f"No batch found with id '{batch_id}'.", "batch_id", 404)
        now = time.time()
        status = batch.status(now)
        if status in ("validating", "in_progress"):
            if batch.errors is not None:
                # A batch that would fail validation and is cancelled first just ends cancelled.
                batch.errors = None
                batch.items, batch.fail_prefix = [], [0]
            batch.cancel_at = now
            self.state.stats.batch_cancelled()
        elif status not in ("cancelling", "cancelled"):
            return self._fail(f"Cannot cancel a batch with status '{status}'.", "batch_id", 400)
        return self._ok(self._view(batch))


def _line(
    line_id: str, custom_id: str, status: int, request_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
