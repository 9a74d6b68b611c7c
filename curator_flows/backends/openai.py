"""OpenAI chat completions (and any OpenAI-compatible ``base_url``).

Invariant: the request body is ``{<constant template>, "messages": [...]}``; the constant part is
encoded once per run and the per-request work is one byte concatenation.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from .base import Attempt, LearnedLimits, as_int, parse_duration
from .http import HttpBackendBase

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def strict_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a pydantic JSON schema in the form OpenAI's strict mode accepts: every object
    closed (``additionalProperties: false``) with all properties required, no ``default``."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("default", None)
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node["properties"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def response_format_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name[:64], "schema": strict_json_schema(schema), "strict": True},
    }


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


def parse_chat_completion(data: Any) -> Attempt:
    """An OpenAI ``chat.completion`` object → ``ok`` attempt, or ``retryable`` if malformed."""
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
        self.prefix = orjson.dumps(template)[:-1] + b',"messages":'

    async def complete(self, messages: list[dict[str, Any]]) -> Attempt:
        result = await self.post(self.prefix + orjson.dumps(messages) + b"}")
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
