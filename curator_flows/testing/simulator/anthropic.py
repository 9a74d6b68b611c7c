"""Anthropic Messages: ``POST /v1/messages``.

Invariants:
- Requests need an ``anthropic-version`` header and ``model``, ``max_tokens`` and a non-empty
  ``messages`` list; otherwise 400 ``invalid_request_error`` in Anthropic's error shape.
- ``usage.output_tokens <= max_tokens``; content cut short has ``stop_reason="max_tokens"``.
- Structured output (``output_format`` or ``output_config.format`` of type ``json_schema``)
  yields a text block whose JSON validates against the schema; a request with ``tools`` (unless
  ``tool_choice`` is ``{"type": "none"}``) yields a ``tool_use`` block whose ``input``
  validates against the tool's ``input_schema``; extended thinking (``thinking.type``
  ``"enabled"``) adds a ``thinking`` block first.
- A request is counted up front as its input tokens (ITPM) and its ``max_tokens`` (OTPM), and
  settled to its usage when the answer is complete (Anthropic's estimate-then-adjust; see
  :mod:`.ratelimit`); the answer's headers are read after that.
- `build_message` is shared with the message batches API.
- An account out of credit is refused before the rate limits with Anthropic's 400 (see
  `account`); Anthropic documents no per-day limits.
- Thinking (``"enabled"`` with a ``budget_tokens`` of at least 1024 and below ``max_tokens``,
  else Anthropic's 400; or ``"adaptive"``) is output: its tokens are spent from ``max_tokens``
  before the answer's and counted in ``output_tokens``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from . import content as gen
from .account import anthropic_credit_body
from .config import SimulatorConfig
from .faults import decide
from .prompts import count_prompt_tokens, estimate_tokens, prompt_key, system_text
from .ratelimit import LimitSet, RateLimited, anthropic_headers, retry_after_headers
from .responses import JSON, InvalidRequest, anthropic_error_body, json_response
from .state import SimState
from .streaming import stream_message


@dataclass(slots=True)
class MessagesRequest:
    """A validated Messages request."""

    body: dict[str, Any]
    model: str
    messages: list[Any]
    max_tokens: int
    input_tokens: int
    key: str
    system: str | None = None


def parse_messages_request(body: Any) -> MessagesRequest:
    """Validate a Messages body; raise `InvalidRequest` like Anthropic would."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required", "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required", "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required (a non-empty list)", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise InvalidRequest("system: Input should be a valid string or list of blocks")
    return MessagesRequest(
        body=body,
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        input_tokens=count_prompt_tokens(messages, system),
        key=prompt_key(messages),
        system=system_text(messages, system),
    )


def _output_schema(body: dict[str, Any]) -> Any:
    fmt = body.get("output_format")
    if fmt is None and isinstance(body.get("output_config"), dict):
        fmt = body["output_config"].get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("output_format.schema: Field required")
        return schema
    if fmt is not None:
        raise InvalidRequest("output_format.type: Input should be 'json_schema'")
    return None


def _tool_call(body: dict[str, Any], digest: bytes) -> tuple[str, Any] | None:
    """``(name, input schema)`` of the tool the answer uses, or ``None`` for a text answer: a
    request with ``tools`` uses one unless ``tool_choice`` is ``{"type": "none"}`` (the named
    tool, the first for ``any``, else one picked by the request's digest)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    choice = choice if isinstance(choice, dict) else {"type": "auto"}
    named = [t for t in tools if isinstance(t, dict) and t.get("name")]
    if choice.get("type") == "none" or not named:
        return None
    if choice.get("type") == "tool":
        for tool in named:
            if tool["name"] == choice.get("name"):
                return tool["name"], tool.get("input_schema") or {"type": "object"}
        raise InvalidRequest(f"tool_choice: no tool named {choice.get('name')!r}")
    tool = named[0] if choice.get("type") == "any" else named[digest[0] % len(named)]
    return tool["name"], tool.get("input_schema") or {"type": "object"}


def _thinking_block(body: dict[str, Any], digest: bytes, max_tokens: int) -> dict[str, Any] | None:
    """A ``thinking`` block when thinking is on (``thinking.type`` "enabled" or "adaptive")."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
        return None
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise InvalidRequest(
                "thinking.budget_tokens: Input should be greater than or equal to 1024"
            )
        if budget >= max_tokens:
            raise InvalidRequest(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                "documentation at https://docs.claude.com/en/docs/build-with-claude/"
                "extended-thinking#max-tokens-and-context-window-size"
            )
    text = gen.generate_text(digest[::-1], 8, 24)
    return {"type": "thinking", "thinking": text, "signature": "sig_" + digest[:16].hex()}


def _truncate(text: str, max_tokens: int, fault: str | None) -> tuple[str, str]:
    stop = "end_turn"
    if fault == "length":
        text, stop = text[: max(1, len(text) // 2)], "max_tokens"
    if estimate_tokens(text) > max_tokens:
        text, stop = gen.truncate_to_tokens(text, max_tokens), "max_tokens"
    return text, stop


def _content(
    state: SimState, req: MessagesRequest, fault: str | None
) -> tuple[list[dict[str, Any]], str, str | None, int]:
    """``(content blocks, stop_reason, stop_sequence, output_tokens)`` for the request."""
    cache_key = ("anthropic", gen.request_digest(req.body))
    digest = cache_key[1]
    if fault is None:
        cached = state.cache_get(cache_key)
        if cached is not None:
            return cached
    config: SimulatorConfig = state.config
    body = req.body
    thinking = _thinking_block(body, digest, req.max_tokens)
    thinking_tokens = 0 if thinking is None else estimate_tokens(thinking["thinking"])
    if thinking is not None and thinking_tokens >= req.max_tokens:  # cut short while thinking
        thinking["thinking"] = gen.truncate_to_tokens(thinking["thinking"], req.max_tokens)
        result = ([thinking], "max_tokens", None, req.max_tokens)
        if fault is None:
            state.cache_put(cache_key, result)
        return result
    if thinking is not None:  # the answer gets the max_tokens thinking left
        req = dataclasses.replace(req, max_tokens=req.max_tokens - thinking_tokens)
    tool = _tool_call(body, digest)
    stop_sequence = None
    if tool is not None:
        name, schema = tool
        try:
            if fault == "schema_invalid":
                arguments = gen.invalid_text_for_mode("json_schema", schema, digest)
            else:
                arguments = gen.text_for_mode("json_schema", schema, digest)
        except gen.SchemaError as exc:
            raise InvalidRequest(f"tools: invalid input_schema: {exc}") from exc
        text, stop = _truncate(arguments, req.max_tokens, fault)
        if stop == "max_tokens":
            blocks = [{"type": "text", "text": text}]
        else:
            try:
                tool_input = orjson.loads(text)
            except orjson.JSONDecodeError:
                tool_input = text
            blocks = [
                {
                    "type": "tool_use",
                    "id": "toolu_" + digest[:12].hex(),
                    "name": name,
                    "input": tool_input,
                }
            ]
            stop = "tool_use"
    else:
        schema = _output_schema(body)
        mode = "json_schema" if schema is not None else "text"
        if fault == "schema_invalid":
            text = gen.invalid_text_for_mode(mode, schema, digest)
        else:
            try:
                text = gen.text_for_mode(
                    mode,
                    schema,
                    digest,
                    config.min_words,
                    config.max_words,
                    config.completion_tokens,
                )
            except gen.SchemaError as exc:
                raise InvalidRequest(f"output_format.schema: invalid schema: {exc}") from exc
        text, stop = _truncate(text, req.max_tokens, fault)
        stops = body.get("stop_sequences")
        if isinstance(stops, list) and stop == "end_turn":
            for seq in stops:
                if isinstance(seq, str) and seq and seq in text:
                    text, stop, stop_sequence = text[: text.index(seq)], "stop_sequence", seq
                    break
        blocks = [{"type": "text", "text": text}]
    tokens = thinking_tokens + min(req.max_tokens, max(1, estimate_tokens(text)))
    if thinking is not None:
        blocks = [thinking, *blocks]
    result = (blocks, stop, stop_sequence, tokens)
    if fault is None:
        state.cache_put(cache_key, result)
    return result


def build_message(
    state: SimState, req: MessagesRequest, fault: str | None, message_id: str
) -> dict[str, Any]:
    """The ``message`` object for `req` (`fault` may be ``length``/``schema_invalid``)."""
    blocks, stop, stop_sequence, tokens = _content(state, req, fault)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": req.input_tokens,
            "output_tokens": tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


#: Status, error type and message for error faults.
FAULT_ERRORS: dict[str, tuple[int, str, str]] = {
    "500": (500, "api_error", "Internal server error"),
    "503": (503, "api_error", "Service unavailable"),
    "529": (529, "overloaded_error", "Overloaded"),
    "429": (429, "rate_limit_error", "Rate limit exceeded (simulated fault)"),
}


def fault_error(fault: str) -> tuple[int, dict[str, Any]]:
    """Status and Anthropic error body for an error fault (used online and in batches)."""
    status, type_, message = FAULT_ERRORS.get(fault, FAULT_ERRORS["500"])
    return status, anthropic_error_body(type_, message)


def counted_up_front(req: MessagesRequest) -> dict[str, int]:
    """What Anthropic counts when it admits a request: one request, its input tokens (ITPM),
    its ``max_tokens`` (OTPM), and both in a combined bucket (see :mod:`.ratelimit`)."""
    return {
        "requests": 1,
        "input_tokens": req.input_tokens,
        "output_tokens": req.max_tokens,
        "tokens": req.input_tokens + req.max_tokens,
    }


def settled_headers(
    limits: LimitSet, req: MessagesRequest, usage: dict[str, Any], request_id: str
) -> dict[str, str]:
    """Settle an answered request to its usage (ITPM counts ``input_tokens`` and
    ``cache_creation_input_tokens``, not cache reads); the answer's headers after it."""
    if limits.active:
        used_in = usage["input_tokens"] + (usage.get("cache_creation_input_tokens") or 0)
        used_out = usage["output_tokens"]
        limits.settle(
            counted_up_front(req),
            {"input_tokens": used_in, "output_tokens": used_out, "tokens": used_in + used_out},
        )
    headers = anthropic_headers(limits)
    headers["request-id"] = request_id
    return headers


#: the organization named in rate-limit messages (the real API names the caller's)
ORGANIZATION = "5a1e0c3d-7b2f-4e9a-8c6d-0f1e2d3c4b5a"


def rate_limit_message(exc: RateLimited) -> str:
    """Anthropic's 429 message for the bucket that refused the request."""
    label = exc.bucket.replace("_", " ")
    return (
        f"This request would exceed the rate limit for your organization ({ORGANIZATION}) of "
        f"{int(exc.limit):,} {label} per minute. For details, refer to: "
        "https://docs.anthropic.com/en/api/rate-limits. You can see the response headers for "
        "current usage. Please reduce the prompt length or the maximum tokens requested, or try "
        "again later. You may also contact sales at https://www.anthropic.com/contact-sales to "
        "discuss your options for a rate limit increase."
    )


def check_anthropic_auth(config: SimulatorConfig, request: web.Request) -> bool:
    required = config.require_api_key
    if not required:
        return True
    headers = request.headers
    return (
        headers.get("x-api-key") == required
        or headers.get("Authorization", "") == f"Bearer {required}"
    )


def anthropic_error(status: int, type_: str, message: str, headers=None) -> web.Response:
    return json_response(anthropic_error_body(type_, message), status, headers)


def require_version(request: web.Request) -> web.Response | None:
    if not request.headers.get("anthropic-version"):
        return anthropic_error(
            400, "invalid_request_error", "anthropic-version: header is required"
        )
    return None


def body_streams(req: MessagesRequest) -> bool:
    return req.body.get("stream") is True


class AnthropicMessagesAPI:
    """Request handler for ``POST /v1/messages``."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def messages(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        config = state.config
        stats = state.stats
        stats.count_request()
        if not check_anthropic_auth(config, request):
            stats.record(401)
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        missing = require_version(request)
        if missing is not None:
            stats.record(400)
            return missing
        raw = await request.read()
        try:
            req = parse_messages_request(orjson.loads(raw))
        except orjson.JSONDecodeError:
            stats.record(400)
            return anthropic_error(400, "invalid_request_error", "Request body is not valid JSON")
        except InvalidRequest as exc:
            stats.record(exc.status)
            return anthropic_error(exc.status, "invalid_request_error", exc.message)

        limits = state.anthropic_limits
        request_id = state.ids.make("req_")
        if state.account.out_of_credit():
            stats.record(400, refused="credit_balance")
            return json_response(anthropic_credit_body(request_id), 400, {"request-id": request_id})
        if limits.active:
            try:
                limits.acquire(counted_up_front(req))
            except RateLimited as exc:
                headers = anthropic_headers(limits)
                headers.update(retry_after_headers(exc.wait))
                headers["request-id"] = request_id
                stats.record(429)
                return anthropic_error(429, "rate_limit_error", rate_limit_message(exc), headers)

        state.account.spend()
        attempt = stats.admit("messages", req.key, req.system)
        fault = decide(req.key, attempt, config.faults, config.seed)
        if config.latency or config.latency_jitter:
            await state.delay(config)
        if fault in ("drop", "hang", "malformed") or fault in FAULT_ERRORS:
            return await self._fault(request, req, fault, request_id, config)
        try:
            message = build_message(state, req, fault, state.ids.make("msg_"))
        except InvalidRequest as exc:
            stats.record(exc.status)
            return anthropic_error(exc.status, "invalid_request_error", exc.message)
        output_tokens = message["usage"]["output_tokens"]
        headers = settled_headers(limits, req, message["usage"], request_id)
        stats.record(200, fault, req.input_tokens, output_tokens)
        if body_streams(req):
            return await stream_message(request, message, headers)
        return web.Response(
            body=orjson.dumps(message), headers=headers, content_type=JSON, status=200
        )

    async def _fault(
        self,
        request: web.Request,
        req: MessagesRequest,
        fault: str,
        request_id: str,
        config: SimulatorConfig,
    ) -> web.StreamResponse:
        state = self.state
        stats = state.stats
        headers = anthropic_headers(state.anthropic_limits)
        headers["request-id"] = request_id
        if fault == "drop":
            stats.record(None, "drop")
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if fault == "hang":
            stats.count_fault("hang")
            await asyncio.sleep(config.hang_seconds)
            message = build_message(state, req, None, state.ids.make("msg_"))
            headers = settled_headers(state.anthropic_limits, req, message["usage"], request_id)
            stats.record(200)
            if body_streams(req):
                return await stream_message(request, message, headers)
            return json_response(message, 200, headers)
        if fault == "malformed":
            message = build_message(state, req, None, state.ids.make("msg_"))
            headers = settled_headers(state.anthropic_limits, req, message["usage"], request_id)
            body = orjson.dumps(message)
            stats.record(200, fault)
            return web.Response(
                body=body[: len(body) // 2], headers=headers, content_type=JSON, status=200
            )
        status, error = fault_error(fault)
        if fault == "429":
            headers.update(retry_after_headers(1.0))
        stats.record(status, fault)
        return json_response(error, status, headers)
