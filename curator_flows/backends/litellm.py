"""The long tail of providers through litellm, imported only when this backend is used.

Invariant: litellm never retries on its own (``num_retries=0``) and never fetches its price map
over the network; the runner's retry and rate-limit policy applies unchanged; a row's own
generation params override the run's.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..errors import ConfigError
from .account import account_refusal
from .base import Attempt, LearnedLimits, as_int
from .http import timeout_advice
from .openai import response_format_param


class LiteLLMBackend:
    name = "litellm"

    def __init__(
        self,
        model: str,
        generation_params: dict[str, Any],
        schema: tuple[str, dict[str, Any]] | None,
        max_tokens: int | None,
        base_url: str | None,
        api_key: str | None,
        request_timeout: float,
    ) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm
        except ImportError:
            raise ConfigError(
                "backend='litellm' needs litellm: pip install 'curator-flows[litellm]'"
            ) from None
        litellm.suppress_debug_info = True
        self.litellm = litellm
        self.kwargs: dict[str, Any] = {"model": model, **generation_params}
        if max_tokens is not None:
            self.kwargs.setdefault("max_tokens", max_tokens)
        if schema is not None:
            self.kwargs["response_format"] = response_format_param(*schema)
        if base_url:
            self.kwargs["api_base"] = base_url
        if api_key:
            self.kwargs["api_key"] = api_key
        self.kwargs["timeout"] = request_timeout
        self.kwargs["num_retries"] = 0
        self.request_timeout = request_timeout
        self.endpoint = f"{base_url or 'litellm'} (model {model})"

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def complete(
        self, messages: list[dict[str, Any]], params: dict[str, Any] | None = None
    ) -> Attempt:
        litellm = self.litellm
        kwargs = {**self.kwargs, **params} if params else self.kwargs
        try:
            response = await asyncio.wait_for(
                litellm.acompletion(messages=messages, **kwargs), self.request_timeout + 5
            )
        except (TimeoutError, litellm.Timeout):
            return Attempt(
                "retryable",
                error=f"timeout: no answer within {self.request_timeout:g}s; "
                f"{timeout_advice(self.request_timeout)}",
                transport="timeout",
            )
        except litellm.RateLimitError as exc:
            refused = _refused(exc, 429)
            if refused is not None:
                return refused
            return Attempt("rate_limited", error=f"rate limited: {exc}"[:300])
        except (
            litellm.BadRequestError,
            litellm.AuthenticationError,
            litellm.NotFoundError,
            litellm.PermissionDeniedError,
        ) as exc:
            status = getattr(exc, "status_code", None)
            refused = _refused(exc, status)
            if refused is not None:
                return refused
            return Attempt("fatal", error=f"{type(exc).__name__}: {exc}"[:300], status=status)
        except litellm.APIConnectionError as exc:
            error = f"connection error: {type(exc).__name__}: {exc}"[:300]
            return Attempt("retryable", error=error, transport="unreachable")
        except Exception as exc:  # noqa: BLE001 - litellm maps every transport failure differently
            return Attempt("retryable", error=f"{type(exc).__name__}: {exc}"[:300])
        try:
            choice = response.choices[0]
            usage = getattr(response, "usage", None)
            headers = (getattr(response, "_hidden_params", None) or {}).get(
                "additional_headers", {}
            )
            return Attempt(
                "ok",
                content=choice.message.content or "",
                finish_reason=choice.finish_reason,
                input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                headers=headers,
                raw=_completion_dict(response),
            )
        except (AttributeError, IndexError, TypeError) as exc:
            return Attempt("retryable", error=f"malformed response: {exc}")

    def learn(self, headers: Any) -> LearnedLimits | None:
        if not headers:
            return None
        rpm = as_int(headers.get("llm_provider-x-ratelimit-limit-requests"))
        tpm = as_int(headers.get("llm_provider-x-ratelimit-limit-tokens"))
        if rpm is None and tpm is None:
            return None
        return LearnedLimits(requests_per_minute=rpm, tokens_per_minute=tpm)


def _refused(exc: Exception, status: int | None) -> Attempt | None:
    """A ``quota`` or ``daily_limit`` attempt when litellm's exception carries the provider's
    account refusal (litellm maps it onto a plain rate-limit or bad-request error)."""
    refusal = account_refusal(status, str(getattr(exc, "message", None) or exc))
    if refusal is None:
        return None
    return Attempt(
        refusal.kind, error=refusal.message[:500], retry_after=refusal.retry_after, status=status
    )


def _completion_dict(response: Any) -> Any:
    """litellm's ``ModelResponse`` as a plain dict (the OpenAI chat completion shape)."""
    dump = getattr(response, "model_dump", None)
    if dump is None:
        return None
    try:
        return dump(mode="json")
    except TypeError:
        return dump()
