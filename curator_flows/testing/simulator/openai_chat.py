"""OpenAI chat completions: ``POST /v1/chat/completions``, ``GET /v1/models``.

Invariants:
- A response body is a pure function of the request body (content is seeded by a digest of
  it) except for ``id``/``created``; the same request always gets the same content.
- ``completion_tokens <= max_tokens`` whenever ``max_tokens``/``max_completion_tokens`` is set;
  content that would exceed it is truncated with ``finish_reason="length"``.
- With ``response_format={"type": "json_schema", ...}`` the content validates against the schema
  unless the ``schema_invalid`` or ``length`` fault was injected (or max_tokens truncated it).
- A request with ``tools`` is answered with a tool call (``content: null``, ``tool_calls``)
  unless ``tool_choice`` is ``"none"``; its arguments validate against the function's
  parameters.
- Strict schemas (``response_format`` or a ``strict`` function) that OpenAI's strict mode
  refuses get OpenAI's 400 answer (see `strict`), online and as batch error lines.
- `build_completion` is shared with the batch API, so batch items get the same content as the
  same request sent online.
- Reasoning models (:data:`REASONING_PREFIXES`) think first: ``usage.completion_tokens`` holds
  ``completion_tokens_details.reasoning_tokens`` (more for a higher ``reasoning_effort``), and
  ``max_completion_tokens`` bounds both, so a small one ends with empty content and
  ``finish_reason="length"``; they refuse ``max_tokens`` with OpenAI's 400
  ``unsupported_parameter``.
- An account out of credit, or over a per-day limit, is refused before the per-minute limits
  with OpenAI's answers (see `account`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from . import content as gen
from .account import DayLimited, openai_day_body, openai_quota_body
from .anthropic import anthropic_error, check_anthropic_auth
from .config import SimulatorConfig
from .faults import decide
from .prompts import count_prompt_tokens, estimate_tokens, prompt_key, system_text
from .ratelimit import (
    LimitSet,
    RateLimited,
    go_duration,
    openai_headers,
    retry_after_headers,
)
from .responses import JSON, InvalidRequest, json_response, openai_error_body
from .state import SimState
from .streaming import stream_chat_completion
from .strict import check_strict_request

MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5-mini",
    "o4-mini",
    "sim-model",
)


#: model prefixes of OpenAI's reasoning models (see the module invariants)
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
#: reasoning tokens per ``reasoning_effort``: this many, plus up to as many again by the
#: request's digest (unknown efforts count as the default, ``medium``)
EFFORT_TOKENS = {"none": 0, "minimal": 16, "low": 64, "medium": 192, "high": 512, "xhigh": 1024}


@dataclass(slots=True)
class ChatRequest:
    """A validated chat completion request."""

    body: dict[str, Any]
    model: str
    messages: list[Any]
    max_tokens: int | None
    n: int
    prompt_tokens: int
    key: str
    system: str | None = None


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a chat completion body; raise `InvalidRequest` like OpenAI would."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model", "missing_required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "Invalid 'messages': expected a non-empty array of messages.",
            "messages",
            "invalid_value",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(
                f"Invalid 'messages[{i}]': expected an object with a 'role'.",
                f"messages[{i}]",
                "invalid_value",
            )
    if model.startswith(REASONING_PREFIXES) and body.get("max_tokens") is not None:
        raise InvalidRequest(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.",
            "max_tokens",
            "unsupported_parameter",
        )
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise InvalidRequest(
            "Invalid 'max_tokens': integer below minimum value 1.", "max_tokens", "invalid_value"
        )
    n = body.get("n") or 1
    if not isinstance(n, int) or not 1 <= n <= 128:
        raise InvalidRequest("Invalid 'n': must be between 1 and 128.", "n", "invalid_value")
    check_strict_request(body)
    return ChatRequest(
        body=body,
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        n=n,
        prompt_tokens=count_prompt_tokens(messages),
        key=prompt_key(messages),
        system=system_text(messages),
    )


# --------------------------------------------------------------------------- content


def _tool_call(body: dict[str, Any], digest: bytes) -> tuple[str, Any, bool] | None:
    """``(name, parameters schema, named)`` of the function the answer calls, or ``None`` for a
    text answer: a request with ``tools`` calls one unless ``tool_choice`` is ``"none"`` (the
    named function, else the first for ``"required"``, else one picked by the request's
    digest for ``"auto"`` or no ``tool_choice``)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    functions = [
        t["function"]
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")
    ]
    if not functions:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        for fn in functions:
            if fn["name"] == name:
                return name, fn.get("parameters") or {"type": "object"}, True
        raise InvalidRequest(f"Invalid 'tool_choice': no function named {name!r}.", "tool_choice")
    fn = functions[0] if choice == "required" else functions[digest[0] % len(functions)]
    return fn["name"], fn.get("parameters") or {"type": "object"}, False


def _response_schema(body: dict[str, Any]) -> tuple[str, Any]:
    """``("text"|"json_object"|"json_schema", schema)`` from ``response_format``."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return "text", None
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not spec.get("name"):
            raise InvalidRequest(
                "Missing required parameter: 'response_format.json_schema.name'.",
                "response_format.json_schema.name",
                "missing_required_parameter",
            )
        schema = spec.get("schema")
        return "json_schema", schema if isinstance(schema, dict) else None
    if kind == "json_object":
        return "json_object", None
    if kind in (None, "text"):
        return "text", None
    raise InvalidRequest(
        f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', 'text'.",
        "response_format.type",
        "invalid_value",
    )


def _choice_digest(digest: bytes, index: int) -> bytes:
    if index == 0:
        return digest
    return hashlib.blake2b(digest + index.to_bytes(2, "little"), digest_size=32).digest()


def _tool_arguments(schema: Any, digest: bytes) -> str:
    try:
        return gen.text_for_mode("json_schema", schema, digest)
    except gen.SchemaError as exc:
        raise InvalidRequest(f"Invalid schema for function: {exc}", "tools") from exc


def _reasoning_tokens(req: ChatRequest, digest: bytes) -> int:
    """Tokens a reasoning model thinks before answering (0 for other models)."""
    if not req.model.startswith(REASONING_PREFIXES):
        return 0
    effort = req.body.get("reasoning_effort")
    if not isinstance(effort, str) or effort not in EFFORT_TOKENS:
        effort = "medium"
    base = EFFORT_TOKENS[effort]
    return base + int.from_bytes(digest[4:6], "little") % (base + 1)


def _choice(
    state: SimState, req: ChatRequest, digest: bytes, index: int, fault: str | None
) -> tuple[dict[str, Any], int, int]:
    """One ``choices[]`` entry, its completion tokens and the reasoning tokens among them."""
    cache_key = (digest, index) if fault is None else None
    if cache_key is not None:
        cached = state.cache_get(cache_key)
        if cached is not None:
            return cached
    config = state.config
    body = req.body
    cdigest = _choice_digest(digest, index)
    reasoning = _reasoning_tokens(req, cdigest)
    limit = req.max_tokens  # what is left for the visible answer
    if limit is not None and reasoning:
        if reasoning >= limit:  # thinking used the whole budget: nothing visible
            message = {"role": "assistant", "content": "", "refusal": None, "annotations": []}
            choice = {
                "index": index,
                "message": message,
                "finish_reason": "length",
                "logprobs": None,
            }
            result = (choice, limit, limit)
            if cache_key is not None:
                state.cache_put(cache_key, result)
            return result
        limit -= reasoning
    tool = _tool_call(body, cdigest)
    message: dict[str, Any]
    if tool is not None:
        name, schema, named = tool
        if fault == "schema_invalid":
            arguments = gen.violate_schema(schema, cdigest)
        else:
            arguments = _tool_arguments(schema, cdigest)
        finish = "stop" if named else "tool_calls"
        if fault == "length":
            arguments = arguments[: max(1, len(arguments) // 2)]
            finish = "length"
        if limit is not None and estimate_tokens(arguments) > limit:
            arguments = gen.truncate_to_tokens(arguments, limit)
            finish = "length"
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_" + cdigest[:12].hex(),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
            "refusal": None,
            "annotations": [],
        }
        tokens = max(1, estimate_tokens(arguments))
    else:
        mode, schema = _response_schema(body)
        if fault == "schema_invalid":
            text = gen.invalid_text_for_mode(mode, schema, cdigest)
        else:
            try:
                text = gen.text_for_mode(
                    mode,
                    schema,
                    cdigest,
                    config.min_words,
                    config.max_words,
                    config.completion_tokens,
                )
            except gen.SchemaError as exc:
                raise InvalidRequest(
                    f"Invalid schema for response_format: {exc}", "response_format"
                ) from exc
        finish = "stop"
        if fault == "length":
            text = text[: max(1, len(text) // 2)]
            finish = "length"
        if limit is not None and estimate_tokens(text) > limit:
            text = gen.truncate_to_tokens(text, limit)
            finish = "length"
        message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        tokens = max(1, estimate_tokens(text))
        if limit is not None:
            tokens = min(tokens, limit)
    choice = {"index": index, "message": message, "finish_reason": finish, "logprobs": None}
    result = (choice, tokens + reasoning, reasoning)
    if cache_key is not None:
        state.cache_put(cache_key, result)
    return result


def build_completion(
    state: SimState, req: ChatRequest, fault: str | None, completion_id: str
) -> dict[str, Any]:
    """The ``chat.completion`` object for `req` (`fault` may be ``length``/``schema_invalid``)."""
    digest = gen.request_digest(req.body)
    choices = []
    completion_tokens = reasoning_tokens = 0
    for index in range(req.n):
        choice, tokens, reasoning = _choice(state, req, digest, index, fault)
        choices.append(choice)
        completion_tokens += tokens
        reasoning_tokens += reasoning
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": req.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_simulator",
    }


# --------------------------------------------------------------------------- errors

SERVER_ERRORS: dict[str, tuple[int, str]] = {
    "500": (500, "The server had an error while processing your request. Sorry about that!"),
    "503": (503, "The engine is currently overloaded, please try again later."),
    "529": (529, "The server is overloaded, please try again later."),
}


def fault_error(fault: str) -> tuple[int, dict[str, Any]]:
    """Status and OpenAI error body for an error fault (used online and in batches)."""
    if fault == "429":
        return 429, openai_error_body(
            "Rate limit reached (simulated fault). Please try again in 1s.",
            "requests",
            None,
            "rate_limit_exceeded",
        )
    status, message = SERVER_ERRORS.get(fault, SERVER_ERRORS["500"])
    return status, openai_error_body(message, "server_error")


def rate_limit_body(exc: RateLimited, model: str) -> dict[str, Any]:
    unit = "requests" if exc.bucket == "requests" else "tokens"
    label = "requests per min (RPM)" if unit == "requests" else "tokens per min (TPM)"
    if exc.too_large:
        message = (
            f"Request too large for {model} on {label}: Limit {int(exc.limit)}, "
            f"Requested {int(exc.cost)}. The input or output tokens must be reduced."
        )
    else:
        message = (
            f"Rate limit reached for {model} in organization org-simulator on {label}: "
            f"Limit {int(exc.limit)}, Used {exc.used}, Requested {int(exc.cost)}. "
            f"Please try again in {go_duration(exc.wait)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
    return openai_error_body(message, unit, None, "rate_limit_exceeded")


def counted_up_front(req: ChatRequest) -> dict[str, int]:
    """What OpenAI counts against the limits when it admits a request: one request, and the
    tokens estimated from its characters plus ``n * max_tokens`` when it sets a cap (see
    :mod:`.ratelimit`)."""
    return {"requests": 1, "tokens": req.prompt_tokens + (req.max_tokens or 0) * req.n}


def settled_headers(
    limits: LimitSet, charged: dict[str, int], usage: dict[str, Any], request_id: str
) -> dict[str, str]:
    """Settle an answered request to its usage; the answer's rate-limit headers after it."""
    if limits.active:
        limits.settle(charged, {"tokens": usage["total_tokens"]})
    headers = openai_headers(limits)
    headers["x-request-id"] = request_id
    return headers


def check_openai_auth(config: SimulatorConfig, request: web.Request) -> bool:
    """True unless ``require_api_key`` is set and the bearer token does not match it."""
    required = config.require_api_key
    if not required:
        return True
    return request.headers.get("Authorization", "") == f"Bearer {required}"


def unauthorized() -> web.Response:
    return json_response(
        openai_error_body(
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            "invalid_api_key",
        ),
        401,
    )


# --------------------------------------------------------------------------- handlers


async def _stream(
    request: web.Request, req: ChatRequest, completion: dict[str, Any], headers: dict[str, str]
) -> web.StreamResponse:
    options = req.body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return await stream_chat_completion(request, completion, headers, include_usage)


class OpenAIChatAPI:
    """Request handlers for the OpenAI chat completion and model endpoints."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        config = state.config
        stats = state.stats
        stats.count_request()
        if not check_openai_auth(config, request):
            stats.record(401)
            return unauthorized()
        raw = await request.read()
        try:
            req = parse_chat_request(orjson.loads(raw))
        except orjson.JSONDecodeError:
            stats.record(400)
            return json_response(
                openai_error_body(
                    "We could not parse the JSON body of your request. (HINT: This likely means"
                    " you aren't using your HTTP library correctly.)",
                    "invalid_request_error",
                ),
                400,
            )
        except InvalidRequest as exc:
            stats.record(exc.status)
            return json_response(
                openai_error_body(exc.message, "invalid_request_error", exc.param, exc.code),
                exc.status,
            )

        limits = state.openai_limits
        account = state.account
        request_id = state.ids.make("req_")
        if account.out_of_credit():
            headers = openai_headers(limits)
            headers["x-request-id"] = request_id
            stats.record(429, refused="insufficient_quota")
            return json_response(openai_quota_body(), 429, headers)
        charged = counted_up_front(req)
        try:
            account.day_check(charged)
        except DayLimited as exc:
            headers = openai_headers(limits)
            headers["x-request-id"] = request_id
            stats.record(429, refused="rpd" if exc.bucket == "requests" else "tpd")
            return json_response(openai_day_body(exc, req.model), 429, headers)
        if limits.active:
            try:
                limits.acquire(charged)
            except RateLimited as exc:
                headers = openai_headers(limits)
                headers.update(retry_after_headers(exc.wait))
                headers["x-request-id"] = request_id
                stats.record(429)
                return json_response(rate_limit_body(exc, req.model), 429, headers)
        account.day_charge(charged)
        account.spend()
        headers = openai_headers(limits)
        headers["x-request-id"] = request_id

        attempt = stats.admit("chat_completions", req.key, req.system)
        fault = decide(req.key, attempt, config.faults, config.seed)
        if config.latency or config.latency_jitter:
            await state.delay(config)
        if fault is not None:
            return await self._fault(request, req, fault, headers, config)
        try:
            completion = build_completion(state, req, None, state.ids.make("chatcmpl-"))
        except InvalidRequest as exc:
            stats.record(exc.status)
            return json_response(
                openai_error_body(exc.message, "invalid_request_error", exc.param, exc.code),
                exc.status,
                headers,
            )
        usage = completion["usage"]
        headers = settled_headers(limits, charged, usage, request_id)
        stats.record(200, None, usage["prompt_tokens"], usage["completion_tokens"])
        if req.body.get("stream") is True:
            return await _stream(request, req, completion, headers)
        return web.Response(
            body=orjson.dumps(completion), headers=headers, content_type=JSON, status=200
        )

    async def _fault(
        self,
        request: web.Request,
        req: ChatRequest,
        fault: str,
        headers: dict[str, str],
        config: SimulatorConfig,
    ) -> web.StreamResponse:
        state = self.state
        stats = state.stats
        limits, charged = state.openai_limits, counted_up_front(req)
        request_id = headers["x-request-id"]
        if fault == "drop":
            stats.record(None, "drop")
            transport = request.transport
            if transport is not None:
                transport.abort()
            # Writing to the aborted transport fails quietly; the client sees a disconnect.
            return web.Response(status=500)
        if fault == "hang":
            stats.count_fault("hang")
            await asyncio.sleep(config.hang_seconds)
            completion = build_completion(state, req, None, state.ids.make("chatcmpl-"))
            headers = settled_headers(limits, charged, completion["usage"], request_id)
            stats.record(200)
            if req.body.get("stream") is True:
                return await _stream(request, req, completion, headers)
            return json_response(completion, 200, headers)
        if fault in ("length", "schema_invalid", "malformed"):
            inner = None if fault == "malformed" else fault
            completion = build_completion(state, req, inner, state.ids.make("chatcmpl-"))
            usage = completion["usage"]
            headers = settled_headers(limits, charged, usage, request_id)
            stats.record(200, fault, usage["prompt_tokens"], usage["completion_tokens"])
            if fault != "malformed" and req.body.get("stream") is True:
                return await _stream(request, req, completion, headers)
            body = orjson.dumps(completion)
            if fault == "malformed":
                body = body[: len(body) // 2]
                if req.body.get("stream") is True:
                    body = b"data: " + body + b"\n\n"
            return web.Response(body=body, headers=headers, content_type=JSON, status=200)
        status, error = fault_error(fault)
        if fault == "429":
            headers.update(retry_after_headers(1.0))
        stats.record(status, fault)
        return json_response(error, status, headers)

    def _refused(self, request: web.Request) -> web.Response | None:
        """401 in the provider's shape when a key is required and this one is wrong."""
        config = self.state.config
        if request.headers.get("anthropic-version"):
            if check_anthropic_auth(config, request):
                return None
            self.state.stats.record(401)
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        if check_openai_auth(config, request):
            return None
        self.state.stats.record(401)
        return unauthorized()

    async def models(self, request: web.Request) -> web.Response:
        self.state.stats.count_request()
        refused = self._refused(request)
        if refused is not None:
            return refused
        if request.headers.get("anthropic-version"):
            data = [
                {
                    "type": "model",
                    "id": name,
                    "display_name": name,
                    "created_at": "2025-01-01T00:00:00Z",
                }
                for name in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
            ]
            self.state.stats.record(200)
            return json_response(
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"],
                    "last_id": data[-1]["id"],
                }
            )
        self.state.stats.record(200)
        return json_response(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 1700000000, "owned_by": "simulator"}
                    for name in MODELS
                ],
            }
        )

    async def model(self, request: web.Request) -> web.Response:
        self.state.stats.count_request()
        refused = self._refused(request)
        if refused is not None:
            return refused
        self.state.stats.record(200)
        name = request.match_info["model"]
        return json_response(
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "simulator"}
        )
