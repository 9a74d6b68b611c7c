"""Values made safe to show: JSON a browser parses exactly, text cut to a length.

Invariants:
- :func:`shown` returns plain JSON (``str``, ``int`` within ±2**53, finite ``float``, ``bool``,
  ``None``, lists, dicts with string keys) for any value (``datetime``, ``Decimal``, bytes,
  NaN, integers past 2**53, ...): what JavaScript cannot hold exactly becomes its text;
- a string longer than ``limit`` characters is cut and says how much was cut; a list longer
  than :data:`MAX_ITEMS` keeps its first items and says how many were left out;
- nothing here escapes HTML: the page puts every value into the document as text
  (``textContent``), never as markup, and :func:`embed_json` makes JSON safe inside a
  ``<script>`` element.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

#: items of a list shown before the rest is summarised
MAX_ITEMS = 200
_JS_SAFE_INT = (1 << 53) - 1


def clip(text: str, limit: int | None) -> str:
    """``text``, cut to ``limit`` characters with a note of what was cut."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def shown(value: Any, limit: int | None = None) -> Any:
    """``value`` as plain JSON a browser holds exactly (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_JS_SAFE_INT <= value <= _JS_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clip(value, limit)
    if isinstance(value, dict):
        return {str(key): shown(item, limit) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        out = [shown(item, limit) for item in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            out.append(f"… [{len(items) - MAX_ITEMS:,} more items]")
        return out
    if isinstance(value, bytes | bytearray | memoryview):
        return clip(repr(bytes(value)), limit)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return clip(str(value), limit)


def text_of(value: Any) -> str:
    """Every string and number inside ``value``, one per line (what a search looks in)."""
    parts: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
        elif item is not None:
            parts.append(str(item))
    return "\n".join(parts)


def dumps(value: Any) -> bytes:
    """``value`` (plain JSON, see :func:`shown`) as JSON bytes; a string holding a lone
    surrogate is written as its ``\\u`` escape (which ``JSON.parse`` reads), not refused."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        import json

        return json.dumps(value, ensure_ascii=True).encode()


def embed_json(value: Any) -> str:
    """``value`` as JSON to place inside ``<script type="application/json">``: ``<``, ``>``,
    ``&`` and the JavaScript line separators are escaped, so no text in it can close the
    element or open a comment; ``JSON.parse`` reads back the same value."""
    text = dumps(value).decode()
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
