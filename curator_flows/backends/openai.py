"""OpenAI chat completions (and any OpenAI-compatible ``base_url``).

Invariant: the request body is ``{<constant template>, "messages": [...]}``; the constant part is
encoded once per run and the per-request work is one byte concatenation. A row with its own
generation params is the one exception: its body is the template updated with them, encoded
whole.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from .base import Attempt, LearnedLimits, as_int, parse_duration
from .http import HttpBackendBase
from .strict_schema import strict_json_schema, strict_problem

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def response_format_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The ``response_format`` of a pydantic schema: strict when it qualifies (see
    :mod:`.strict_schema`), else the schema as pydantic wrote it, non-strict (logged once per
    schema and process)."""
    name = _SCHEMA_NAME.sub("_", name)[:64] or "response"
    converted = strict_json_schema(schema)
    problem = strict_problem(converted)
    if problem is None:
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": converted, "strict": True},
        }
    _log_non_strict(name, problem)
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]")
_logged_non_strict: set[tuple[str, str]] = set()


def _log_non_strict(name: str, problem: str) -> None:
    key = (name, problem)
    if key in _logged_non_strict:
        return
    _logged_non_strict.add(key)
    log.warning(
        "response_format %s is sent to OpenAI as a non-strict JSON schema: strict mode cannot "
        "express it (%s). The provider then does not enforce the schema; every response is still "
        "validated against %s and retried when it does not match",
        name,
        problem,
        name,
    )


def request_template(
    model: str,
    generation_params: dict[str, Any],
    schema: tuple[str, dict[str, Any]] | None,
    max_tokens: int | None,
) -> dict[str, Any]:
    """The constant part of every request body of a run (also used for batch input lines)."""
    template: dict[str, Any] = {"model": model, **generation_params}
    if max_tokens is not None and "max_tokens" not in template:
        key = "max_completion_tokens" if model.startswith(_REASONING_PREFIXES) else "max_tokens"
        template.setdefault(key, max_tokens)
    if schema is not None:
        template["response_format"] = response_format_param(*schema)
    return template


def request_body(
    template: dict[str, Any], messages: list[dict[str, Any]], params: dict[str, Any] | None
) -> dict[str, Any]:
    """The body of one request whose row overrides the run's generation params."""
    return {**template, **(params or {}), "messages": messages}


def chat_completion_object(
    model: str,
    request_id: str,
    content: str,
    finish_reason: str | None,
    usage: tuple[int, int] | list[int],
) -> dict[str, Any]:
    """A plain answer in the shape of an OpenAI ``chat.completion`` (what vLLM's
    OpenAI-compatible server returns), for ``return_completions_object``."""
    prompt_tokens, completion_tokens = int(usage[0]), int(usage[1])
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def parse_chat_completion(data: Any) -> Attempt:
    """An OpenAI ``chat.completion`` object → ``ok`` attempt (``raw`` is the whole object; a
    tool-call answer has empty content), or ``retryable`` if malformed."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        content = message.get("content")
        if content is None and message.get("refusal"):
            return Attempt("retryable", error=f"refusal: {message['refusal'][:200]}")
        return Attempt(
            "ok",
            content=content if content is not None else "",
            finish_reason=choice.get("finish_reason"),
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            raw=data,
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        return Attempt("retryable", error=f"malformed response: {type(exc).__name__}: {exc}")


def learn_openai_headers(headers: Any) -> LearnedLimits | None:
    rpm = as_int(headers.get("x-ratelimit-limit-requests"))
    tpm = as_int(headers.get("x-ratelimit-limit-tokens"))
    if rpm is None and tpm is None:
        return None
    return LearnedLimits(
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        remaining_requests=as_int(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=as_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_seconds=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


class OpenAIChatBackend(HttpBackendBase):
    name = "openai"

    def __init__(
        self,
        template: dict[str, Any],
        base_url: str | None,
        api_key: str | None,
        request_timeout: float,
        pool_size: int,
    ) -> None:
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        headers = {"authorization": f"Bearer {api_key or 'none'}"}
        super().__init__(f"{base}/chat/completions", headers, request_timeout, pool_size)
        self.template = template
        self.prefix = orjson.dumps(template)[:-1] + b',"messages":'

    async def complete(
        self, messages: list[dict[str, Any]], params: dict[str, Any] | None = None
    ) -> Attempt:
        if params:
            body = orjson.dumps(request_body(self.template, messages, params))
        else:
            body = self.prefix + orjson.dumps(messages) + b"}"
        result = await self.post(body)
        if isinstance(result, Attempt):
            return result
        status, headers, raw = result
        failure = self.classify_status(status, headers, raw)
        if failure is not None:
            return failure
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Attempt("retryable", error="malformed response body (not JSON)", headers=headers)
        attempt = parse_chat_completion(data)
        attempt.headers = headers
        return attempt

    def learn(self, headers: Any) -> LearnedLimits | None:
        return learn_openai_headers(headers)
