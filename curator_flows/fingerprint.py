"""Run and request identities.

Invariants:
- every fingerprint is a pure function of its inputs' *content*: the same in a fresh interpreter
  on another machine (no ``id()``, no addresses, no set or dict ordering, no paths);
- nothing secret is ever hashed: callers pass only model, code, schema, generation params and
  output-affecting backend params (``BackendConfig.output_params``) and row data;
- request ids match ``^[0-9a-f]{32}$``, valid as OpenAI and Anthropic ``custom_id``.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
import types
from typing import Any

import orjson

_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def canonical(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys); raises TypeError for non-JSON values."""
    return orjson.dumps(obj, option=_OPTS)


def digest(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def code_fingerprint(func: Any) -> str:
    """Hash of a function's source text (dedented), or of its code object when no source exists."""
    func = getattr(func, "__func__", func)
    try:
        source = textwrap.dedent(inspect.getsource(func))
        return digest("src", source)
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        if code is None:
            return digest("repr", repr(func))
        return digest("code", _code_bytes(code))


def _code_bytes(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(
            _code_bytes(const) if isinstance(const, types.CodeType) else repr(const).encode()
        )
    return b"\x00".join(parts)


class RequestIds:
    """Content-addressed request ids: the k-th identical request of a run gets its own id, so
    duplicate prompts are still sent once each, and editing one row changes one id."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.seen: dict[str, int] = {}

    def next_id(self, request_body: bytes) -> str:
        base = digest(self.family, request_body)
        ordinal = self.seen.get(base, 0)
        self.seen[base] = ordinal + 1
        return base if ordinal == 0 else digest(base, str(ordinal))
