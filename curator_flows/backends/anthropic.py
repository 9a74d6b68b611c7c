"""Anthropic Messages API (online), over the pooled HTTP client.

Invariant: system messages are lifted into the top-level ``system`` field; ``max_tokens`` is
always sent (Anthropic requires it); a row's own generation params override the run's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from .base import Attempt, LearnedLimits, as_int
from .http import HttpBackendBase

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
STRUCTURED_OUTPUTS_BETA = "structured-outputs-2025-11-13"
DEFAULT_MAX_TOKENS = 4096
#: Anthropic's token ``remaining`` headers are "rounded to the nearest thousand"
TOKENS_ROUNDING = 500


def anthropic_params(
    model: str,
    generation_params: dict[str, Any],
    schema: tuple[str, dict[str, Any]] | None,
    max_tokens: int | None,
    messages: list[dict[str, Any]],
) -> dict[str, Any]:
    """The Messages API body for one request (also the ``params`` of a batch item)."""
    params: dict[str, Any] = {"model": model, **generation_params}
    params.setdefault("max_tokens", max_tokens or DEFAULT_MAX_TOKENS)
    system = [m["content"] for m in messages if m.get("role") == "system"]
    if system:
        params["system"] = "\n\n".join(s if isinstance(s, str) else str(s) for s in system)
    params["messages"] = [m for m in messages if m.get("role") != "system"]
    if schema is not None:
        params["output_format"] = {"type": "json_schema", "schema": schema[1]}
    return params


def parse_message(data: Any) -> Attempt:
    try:
        text = "".join(
            block.get("text", "") for block in data["content"] if block.get("type") == "text"
        )
        usage = data.get("usage") or {}
        stop = data.get("stop_reason")
        finish = {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop"}.get(
            stop, stop
        )
        return Attempt(
            "ok",
            content=text,
            finish_reason=finish,
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            raw=data,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return Attempt("retryable", error=f"malformed response: {type(exc).__name__}: {exc}")


def _seconds_until(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def api_headers(api_key: str | None, structured: bool) -> dict[str, str]:
    headers = {"x-api-key": api_key or "", "anthropic-version": API_VERSION}
    if structured:
        headers["anthropic-beta"] = STRUCTURED_OUTPUTS_BETA
    return headers


class AnthropicMessagesBackend(HttpBackendBase):
    name = "anthropic"

    def __init__(
        self,
        model: str,
        generation_params: dict[str, Any],
        schema: tuple[str, dict[str, Any]] | None,
        max_tokens: int | None,
        base_url: str | None,
        api_key: str | None,
        request_timeout: float,
        pool_size: int,
    ) -> None:
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        super().__init__(
            f"{base}/v1/messages",
            api_headers(api_key, schema is not None),
            request_timeout,
            pool_size,
        )
        self.model = model
        self.generation_params = generation_params
        self.schema = schema
        self.max_tokens = max_tokens

    async def complete(
        self, messages: list[dict[str, Any]], params: dict[str, Any] | None = None
    ) -> Attempt:
        generation_params = (
            {**self.generation_params, **params} if params else self.generation_params
        )
        body = anthropic_params(
            self.model, generation_params, self.schema, self.max_tokens, messages
        )
        result = await self.post(orjson.dumps(body))
        if isinstance(result, Attempt):
            return result
        status, headers, raw = result
        failure = self.classify_status(status, headers, raw)
        if failure is not None:
            if status == 529:
                failure.kind = "rate_limited"
            return failure
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Attempt("retryable", error="malformed response body (not JSON)", headers=headers)
        attempt = parse_message(data)
        attempt.headers = headers
        return attempt

    def learn(self, headers: Any) -> LearnedLimits | None:
        rpm = as_int(headers.get("anthropic-ratelimit-requests-limit"))
        itpm = as_int(headers.get("anthropic-ratelimit-input-tokens-limit"))
        otpm = as_int(headers.get("anthropic-ratelimit-output-tokens-limit"))
        tpm = as_int(headers.get("anthropic-ratelimit-tokens-limit"))
        if rpm is None and itpm is None and otpm is None and tpm is None:
            return None
        combined = itpm is None and otpm is None

        def remaining(kind: str) -> int | None:  # documented as rounded to the nearest thousand
            value = as_int(headers.get(f"anthropic-ratelimit-{kind}-remaining"))
            return None if value is None else max(0, value - TOKENS_ROUNDING)

        def reset(kind: str) -> float | None:
            return _seconds_until(headers.get(f"anthropic-ratelimit-{kind}-reset"))

        return LearnedLimits(
            requests_per_minute=rpm,
            tokens_per_minute=tpm if combined else None,
            input_tokens_per_minute=itpm,
            output_tokens_per_minute=otpm,
            remaining_requests=as_int(headers.get("anthropic-ratelimit-requests-remaining")),
            remaining_tokens=remaining("tokens") if combined else None,
            remaining_input_tokens=remaining("input-tokens"),
            remaining_output_tokens=remaining("output-tokens"),
            reset_seconds=reset("requests"),
            reset_tokens=reset("tokens") if combined else None,
            reset_input_tokens=reset("input-tokens"),
            reset_output_tokens=reset("output-tokens"),
            reset_resolution=1.0,  # RFC 3339 timestamps to the second
            tokens_rounding=2 * TOKENS_ROUNDING,
        )
