"""Deciding which fault (if any) to inject into a request.

Two sources, markers first:

1. Markers in the prompt text (the prompt key): ``[[sim:KIND]]`` or ``[[sim:KINDxN]]``.
   Markers are consumed in order of appearance: ``[[sim:KINDxN]]`` covers the next N attempts
   of that prompt, ``[[sim:KIND]]`` covers every remaining attempt. So ``[[sim:500x2]]`` fails
   attempts 0 and 1 and then answers normally, and ``[[sim:500x1]][[sim:dropx1]]`` answers
   attempt 0 with a 500, drops attempt 1, and answers attempt 2 normally.
2. Global rates ``faults={"500": 0.1, ...}``: for each kind (in sorted order) a uniform draw that
   is a pure function of (seed, prompt key, attempt, kind) is compared with the rate; the first
   kind whose draw falls below its rate is injected.

The attempt number of a request is how many earlier requests with the same prompt key the
simulator admitted, so retries get independent draws and a run is reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping

from .config import FAULT_KINDS

MARKER_PREFIX = "[[sim:"
_MARKER_RE = re.compile(r"\[\[sim:\s*([a-z0-9_]+?)\s*(?:x\s*(\d+))?\s*\]\]", re.IGNORECASE)

#: Kinds that make a request fail (as opposed to a 200 with degraded content).
ERROR_KINDS: frozenset[str] = frozenset({"500", "503", "529", "429", "hang", "drop", "malformed"})


@functools.lru_cache(maxsize=4096)
def parse_markers(text: str) -> tuple[tuple[str, int | None], ...]:
    """The ``(kind, count)`` markers in `text`, in order; unknown kinds are skipped."""
    markers = []
    for match in _MARKER_RE.finditer(text):
        kind = match.group(1).lower()
        if kind not in FAULT_KINDS:
            continue
        count = match.group(2)
        markers.append((kind, int(count) if count is not None else None))
    return tuple(markers)


def marker_fault(text: str, attempt: int) -> str | None:
    """The fault a marker in `text` asks for on `attempt` (0-based), if any."""
    if MARKER_PREFIX not in text:
        return None
    start = 0
    for kind, count in parse_markers(text):
        if count is None:
            return kind
        if attempt < start + count:
            return kind
        start += count
    return None


def draw(seed: int, key: str, attempt: int, kind: str) -> float:
    """A uniform number in [0, 1) determined by its arguments (stable across processes)."""
    digest = hashlib.blake2b(
        f"{seed}\x00{attempt}\x00{kind}\x00{key}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") / 18446744073709551616.0


def rate_fault(faults: Mapping[str, float], seed: int, key: str, attempt: int) -> str | None:
    """The first kind (sorted) whose deterministic draw falls below its rate, if any."""
    for kind in sorted(faults):
        rate = faults[kind]
        if rate <= 0.0:
            continue
        if rate >= 1.0 or draw(seed, key, attempt, kind) < rate:
            return kind
    return None


def decide(key: str, attempt: int, faults: Mapping[str, float] | None, seed: int) -> str | None:
    """The fault to inject for this attempt of the prompt `key` (markers win over rates)."""
    kind = marker_fault(key, attempt)
    if kind is None and faults:
        kind = rate_fault(faults, seed, key, attempt)
    return kind
