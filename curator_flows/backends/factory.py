"""Builds the online backend of an LLM from its settings and a resolved endpoint.

Invariant: the API key reaches a backend only here, from
:func:`curator_flows.credentials.resolve_endpoint`; backends never read the environment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..credentials import Credentials, resolve_endpoint
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..llm import LLM

#: output tokens assumed per request when nothing bounds them, until a run observes its answers
DEFAULT_OUTPUT_ESTIMATE = 256


def build_online_backend(llm: LLM, credentials: Credentials | None, concurrency: int) -> Any:
    """The backend that sends ``llm``'s requests, over one pooled client of ``concurrency``."""
    schema = llm.schema()
    params = llm.config.params
    max_tokens = params.max_tokens
    if llm.backend in ("openai", "anthropic"):
        endpoint = resolve_endpoint(llm.provider, credentials, llm.backend_params)
        common = dict(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            request_timeout=params.request_timeout,
            pool_size=concurrency,
        )
        if llm.backend == "openai":
            from .openai import OpenAIChatBackend, request_template

            template = request_template(llm.model_name, llm.generation_params, schema, max_tokens)
            return OpenAIChatBackend(template, **common)
        from .anthropic import AnthropicMessagesBackend

        return AnthropicMessagesBackend(
            llm.model_name, llm.generation_params, schema, max_tokens, **common
        )
    if llm.backend == "litellm":
        from .litellm import LiteLLMBackend

        credentials = credentials or Credentials()
        base_url = credentials.base_url or params.base_url
        api_key = credentials.secret() or (
            params.api_key.get_secret_value() if params.api_key is not None else None
        )
        return LiteLLMBackend(
            llm.model_name,
            llm.generation_params,
            schema,
            max_tokens,
            base_url=base_url,
            api_key=api_key,
            request_timeout=params.request_timeout,
        )
    raise ConfigError(f"backend {llm.backend!r} has no online mode")


@dataclass(frozen=True)
class OutputRule:
    """A request's output as its provider counts it before answering (from the providers'
    rate-limit documentation): ``cap`` bounds it (``max_tokens``; ``None``: unbounded) and,
    when ``up_front``, the provider counts the whole cap against its limits the moment it admits
    the request (Anthropic always: ``max_tokens`` is always sent; OpenAI when the request sets
    one), then settles to the usage. ``choices`` is ``n``."""

    cap: int | None
    up_front: bool
    choices: int = 1

    def for_row(self, params: dict[str, Any] | None) -> OutputRule:
        """The rule of a row whose own generation params override the run's."""
        if not params:
            return self
        cap, choices = _cap(params), params.get("n")
        if cap is None and not isinstance(choices, int):
            return self
        cap = self.cap if cap is None else cap
        choices = choices if isinstance(choices, int) and choices >= 1 else self.choices
        return OutputRule(cap, self.up_front or cap is not None and self.cap is None, choices)

    @property
    def counted(self) -> int:
        """Output tokens the provider counts when it admits the request."""
        return self.cap * self.choices if self.up_front and self.cap is not None else 0

    def reserve(self, estimate: float) -> int:
        """Output tokens to hold for a request whose answer is estimated at ``estimate``:
        never less than the provider counts up front, never more than the cap allows."""
        per_choice = estimate if self.cap is None else min(estimate, self.cap)
        return max(self.counted, math.ceil(per_choice) * self.choices)


def _cap(params: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def output_rule(llm: LLM) -> OutputRule:
    """How ``llm``'s provider counts a request's output (see :class:`OutputRule`)."""
    params = llm.generation_params
    cap = _cap(params) or llm.config.params.max_tokens  # every mode's params have it
    choices = params.get("n") if isinstance(params.get("n"), int) and params["n"] >= 1 else 1
    if llm.backend == "anthropic":  # always sent; Anthropic counts it against OTPM up front
        from .anthropic import DEFAULT_MAX_TOKENS

        return OutputRule(cap or DEFAULT_MAX_TOKENS, True, choices)
    return OutputRule(cap, cap is not None, choices)


def output_estimate(llm: LLM) -> int:
    """Output tokens assumed per request before a run has observed any answer: the request's
    own cap, else a default (offline estimates, and the prior of a run's observations)."""
    return output_rule(llm).cap or DEFAULT_OUTPUT_ESTIMATE
