"""Builds the online backend of an LLM from its settings and a resolved endpoint.

Invariant: the API key reaches a backend only here, from
:func:`curator_flows.credentials.resolve_endpoint`; backends never read the environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..credentials import Credentials, resolve_endpoint
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..llm import LLM

#: output tokens assumed per request when nothing bounds them (rate limiting and estimates)
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


def output_estimate(llm: LLM) -> int:
    """Output tokens budgeted per request: the request's own cap, else a default."""
    params = llm.generation_params
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(params.get(key), int):
            return params[key]
    if llm.config.params.max_tokens:  # every mode's params have it
        return llm.config.params.max_tokens
    if llm.backend == "anthropic":  # always sent; Anthropic counts it against OTPM up front
        from .anthropic import DEFAULT_MAX_TOKENS

        return DEFAULT_MAX_TOKENS
    return DEFAULT_OUTPUT_ESTIMATE
