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
from array import array
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
    duplicate prompts are still sent once each, and editing one row changes one id.

    Memory is 8 to 16 bytes per distinct request (a table of the first 63 bits of each digest,
    kept at most half full), plus a counter per repeated request. Two different requests whose
    digests share those bits (about 5e-8 for a million rows) count as a repeat: the later one
    gets an ordinal id, still unique and deterministic."""

    _EMPTY_SLOTS = 1 << 12

    def __init__(self, family: str) -> None:
        self.family = family
        self._prefix = hashlib.blake2b(digest_size=16)
        data = family.encode()
        self._prefix.update(len(data).to_bytes(8, "little"))
        self._prefix.update(data)
        self._table = array("Q", bytes(8 * self._EMPTY_SLOTS))
        self._mask = self._EMPTY_SLOTS - 1
        self._size = 0
        self._repeats: dict[str, int] = {}

    def next_id(self, request_body: bytes) -> str:
        hasher = self._prefix.copy()  # == digest(family, request_body)
        hasher.update(len(request_body).to_bytes(8, "little"))
        hasher.update(request_body)
        raw = hasher.digest()
        base = raw.hex()
        key = int.from_bytes(raw[:8], "little") | 1  # 0 marks an empty slot
        table, mask = self._table, self._mask
        slot = key & mask
        while True:
            held = table[slot]
            if held == 0:
                table[slot] = key
                self._size += 1
                if self._size * 2 > mask:
                    self._grow()
                return base
            if held == key:
                break
            slot = (slot + 1) & mask
        ordinal = self._repeats.get(base, 1)
        self._repeats[base] = ordinal + 1
        return digest(base, str(ordinal))

    def _grow(self) -> None:
        old = self._table
        self._mask = mask = self._mask * 2 + 1
        self._table = table = array("Q", bytes(8 * (mask + 1)))
        for key in old:
            if key:
                slot = key & mask
                while table[slot]:
                    slot = (slot + 1) & mask
                table[slot] = key
