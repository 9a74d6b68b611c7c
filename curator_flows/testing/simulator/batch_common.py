"""Helpers shared by the OpenAI and Anthropic batch APIs.

Invariants:
- `processing_order` is a deterministic permutation of ``range(n)`` given (seed, salt): the order
  items "finish" in, which is also the (shuffled) order of result lines.
- `done_count` is monotonic in elapsed time and equals ``n`` once the processing phase is over.
- `paginate` pages over a newest-first list by cursor ids without ever repeating an item.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import random
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

DAY = 86_400.0


def processing_order(seed: int, salt: bytes, n: int) -> list[int]:
    """A deterministic shuffle of ``range(n)`` seeded by (seed, salt)."""
    digest = hashlib.blake2b(seed.to_bytes(8, "little", signed=True) + salt, digest_size=16)
    order = list(range(n))
    random.Random(int.from_bytes(digest.digest(), "little")).shuffle(order)
    return order


def fraction(elapsed: float, duration: float) -> float:
    """Elapsed share of a phase, clamped to [0, 1] (a zero-length phase is complete)."""
    if duration <= 0:
        return 1.0
    return min(1.0, max(0.0, elapsed / duration))


def done_count(n: int, share: float) -> int:
    """How many of `n` items are done after `share` of the processing phase."""
    return min(n, max(0, math.floor(n * share + 1e-9)))


def rfc3339_precise(epoch: float) -> str:
    """UTC RFC 3339 timestamp with microseconds and a ``Z`` suffix."""
    text = _dt.datetime.fromtimestamp(epoch, tz=_dt.UTC).replace(tzinfo=None).isoformat()
    if "." not in text:
        text += ".000000"
    return text + "Z"


def paginate(
    items_newest_first: Sequence[T],
    ids: Sequence[str],
    limit: int,
    after_id: str | None = None,
    before_id: str | None = None,
) -> tuple[list[T], bool]:
    """``(page, has_more)``: up to `limit` items after (older than) `after_id`, or the `limit`
    items right before (newer than) `before_id`, or the newest `limit` items."""
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(ids)
        page = list(items_newest_first[start : start + limit])
        return page, start + limit < len(items_newest_first)
    if before_id is not None:
        end = ids.index(before_id) if before_id in ids else 0
        start = max(0, end - limit)
        return list(items_newest_first[start:end]), start > 0
    return list(items_newest_first[:limit]), limit < len(items_newest_first)


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    """A page size from a query parameter (ValueError when not an int in 1..maximum)."""
    if raw is None or raw == "":
        return default
    value = int(raw)
    if not 1 <= value <= maximum:
        raise ValueError(f"limit must be between 1 and {maximum}")
    return value


def json_lines(records: Sequence[Any], dumps) -> bytes:
    """Newline-terminated JSON lines."""
    return b"".join(dumps(r) + b"\n" for r in records)
