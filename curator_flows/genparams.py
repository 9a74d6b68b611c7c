"""Validation of online and batch ``generation_params`` against the provider's request body.

Invariants:
- checked at ``LLM`` construction, so a typo fails in the DAG file, not after requests were paid;
- ``stream`` is refused (responses are stored whole, a stream body is not a completion) and so is
  ``n > 1`` (only the first choice is kept: the others would be paid and dropped);
- an unknown key close to a known one fails with "did you mean"; on the provider's own endpoint
  any unknown key fails (with the allowed keys); an OpenAI-compatible server (a custom
  ``base_url``) or litellm may take provider-specific keys, so there only near-misses fail;
- known keys are type-checked (numbers are not booleans, counts are integers, numbers are
  finite) and range-checked: on the provider's own endpoint against the ranges its API
  documents (:data:`OPENAI_RANGES`, :data:`ANTHROPIC_RANGES`), elsewhere against what no
  sampler accepts (:data:`ANY_RANGES`: a negative temperature, ``top_p`` outside [0, 1], a
  token budget below 1).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from .errors import ConfigError

_NUMBER = "a number"
_INT = "an integer"
_BOOL = "a boolean"
_STR = "a string"
_STOP = "a string or a list of strings"
_ANY = "anything"
_LIST = "a list"
_DICT = "an object"

OPENAI_PARAMS: dict[str, str] = {
    "audio": _DICT, "frequency_penalty": _NUMBER, "function_call": _ANY, "functions": _LIST,
    "logit_bias": _DICT, "logprobs": _BOOL, "max_completion_tokens": _INT, "max_tokens": _INT,
    "metadata": _DICT, "modalities": _LIST, "n": _INT, "parallel_tool_calls": _BOOL,
    "prediction": _DICT, "presence_penalty": _NUMBER, "prompt_cache_key": _STR,
    "reasoning_effort": _STR, "response_format": _DICT, "safety_identifier": _STR, "seed": _INT,
    "service_tier": _STR, "stop": _STOP, "store": _BOOL, "stream": _BOOL,
    "stream_options": _DICT, "temperature": _NUMBER, "tool_choice": _ANY, "tools": _LIST,
    "top_logprobs": _INT, "top_p": _NUMBER, "user": _STR, "verbosity": _STR,
    "web_search_options": _DICT,
}  # fmt: skip
#: what OpenAI-compatible servers (vLLM, SGLang, ...) commonly add
COMPATIBLE_EXTRAS: dict[str, str] = {
    "top_k": _INT, "min_p": _NUMBER, "repetition_penalty": _NUMBER, "min_tokens": _INT,
    "extra_body": _DICT, "chat_template_kwargs": _DICT, "ignore_eos": _BOOL,
}  # fmt: skip
ANTHROPIC_PARAMS: dict[str, str] = {
    "max_tokens": _INT, "temperature": _NUMBER, "top_p": _NUMBER, "top_k": _INT,
    "stop_sequences": _LIST, "stream": _BOOL, "metadata": _DICT, "tools": _LIST,
    "tool_choice": _DICT, "thinking": _DICT, "service_tier": _STR, "container": _ANY,
    "mcp_servers": _LIST, "context_management": _DICT, "system": _ANY,
}  # fmt: skip

#: (lowest, highest) of a number, inclusive (``None``: unbounded), as each API documents them
OPENAI_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0, 2), "top_p": (0, 1), "frequency_penalty": (-2, 2),
    "presence_penalty": (-2, 2), "top_logprobs": (0, 20), "max_tokens": (1, None),
    "max_completion_tokens": (1, None),
}  # fmt: skip
ANTHROPIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0, 1), "top_p": (0, 1), "top_k": (0, None), "max_tokens": (1, None),
}  # fmt: skip
#: what no endpoint accepts (custom OpenAI-compatible servers, litellm's providers)
ANY_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0, None), "top_p": (0, 1), "max_tokens": (1, None),
    "max_completion_tokens": (1, None),
}  # fmt: skip

_CHECKS = {
    _NUMBER: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    _INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    _BOOL: lambda v: isinstance(v, bool),
    _STR: lambda v: isinstance(v, str),
    _STOP: lambda v: (
        isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
    ),
    _LIST: lambda v: isinstance(v, list),
    _DICT: lambda v: isinstance(v, dict),
    _ANY: lambda v: True,
}


def _suggest(key: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return close[0] if close else None


def validate_generation_params(
    backend: str, params: dict[str, Any], *, custom_endpoint: bool
) -> None:
    """Raise :class:`ConfigError` naming the first problem in ``params`` for ``backend``
    (``openai``, ``anthropic`` or ``litellm``)."""
    if backend == "anthropic":
        known = dict(ANTHROPIC_PARAMS)
        strict = not custom_endpoint
    else:
        known = {**OPENAI_PARAMS, **(COMPATIBLE_EXTRAS if backend != "openai" else {})}
        if backend == "openai" and custom_endpoint:
            known.update(COMPATIBLE_EXTRAS)
        strict = backend == "openai" and not custom_endpoint
    ranges = ANY_RANGES
    if strict:
        ranges = ANTHROPIC_RANGES if backend == "anthropic" else OPENAI_RANGES
    if params.get("stream"):
        raise ConfigError(
            "generation_params['stream']=True is not supported: every response is stored whole "
            "(a stream body is not a completion and would fail after being paid); remove it"
        )
    n = params.get("n")
    if n is not None and n != 1:
        raise ConfigError(
            f"generation_params['n']={n!r}: only one choice per request is kept, so n > 1 would "
            "pay for choices that are dropped; repeat the row n times instead"
        )
    names = sorted(known)
    for key, value in params.items():
        kind = known.get(key)
        if kind is None:
            guess = _suggest(key, names)
            if guess is not None:
                raise ConfigError(
                    f"unknown generation_params key {key!r} for the {backend} backend: "
                    f"did you mean {guess!r}?"
                )
            if strict:
                raise ConfigError(
                    f"unknown generation_params key {key!r} for the {backend} backend; "
                    f"allowed keys: {names}"
                )
            continue
        if value is not None and not _CHECKS[kind](value):
            raise ConfigError(
                f"generation_params[{key!r}] must be {kind}, got {type(value).__name__} ({value!r})"
            )
        if kind in (_NUMBER, _INT) and value is not None:
            _check_range(backend, key, value, ranges)


def _check_range(backend: str, key: str, value: float, ranges: dict[str, Any]) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"generation_params[{key!r}] must be a finite number, got {value!r}")
    low, high = ranges.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(
            f"generation_params[{key!r}]={value!r} is out of range: the {backend} backend takes "
            f"{bounds}"
        )
