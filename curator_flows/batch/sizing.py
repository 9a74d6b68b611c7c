"""Sizes of batch input lines, for sharding a batch run within the provider's byte limit.

Invariant: ``len(messages_json) + line_overhead(llm)`` is the exact size of the OpenAI input line
of a request (newline included) and an upper bound of its Anthropic batch item (with its
separating comma and a spare byte; lifting system messages into ``system`` only shrinks an
item), so a shard's estimated bytes bound the create body from 14 items on (the spare bytes
cover the 15-byte ``{"requests":[...]}`` wrapper; a shard of fewer, multi-megabyte items could
exceed its estimate by at most 14 bytes).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

#: Provider batch limits: (requests, bytes) per batch input file. Bytes are decimal megabytes:
#: the stricter reading of the providers' "200 MB" / "256 MB".
BATCH_LIMITS = {"openai": (50_000, 200_000_000), "anthropic": (100_000, 256_000_000)}


def line_overhead(llm: Any) -> int:
    """Bytes of one batch input line of ``llm`` besides its ``messages`` JSON."""
    schema, max_tokens = llm.schema(), llm.config.params.max_tokens
    if llm.backend == "openai":
        from ..backends.openai import request_template
        from .openai import line_overhead as openai_overhead

        return openai_overhead(
            request_template(llm.model_name, llm.generation_params, schema, max_tokens)
        )
    if llm.backend == "anthropic":
        from ..backends.anthropic import anthropic_params
        from .anthropic import line_overhead as anthropic_overhead

        empty = anthropic_params(llm.model_name, llm.generation_params, schema, max_tokens, [])
        return anthropic_overhead(empty)
    raise ConfigError(f"backend {llm.backend!r} has no batch API")
