"""Progress of long work: a one-line bar on a terminal, else a log line every few seconds (what
Airflow and Prefect task logs show).

Invariants:
- reporting is rate-limited (≤ 4 redraws or one log line per interval), so it costs nothing
  measurable per request;
- every line names the shards it counts (:func:`shard_label`), so the lines of shards running
  at once (parallel Airflow tasks, mapped Prefect tasks) can be told apart.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("curator_flows.progress")


@dataclass
class Counters:
    total: int = 0
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0


#: up to this many shards are named one by one in a progress line; more are summarised
NAMED_SHARDS = 4


def shard_label(shards: Sequence[str]) -> str:
    """How a progress line names its shards: ``shard 00002``, ``shards 00000,00003`` or, past
    :data:`NAMED_SHARDS`, ``50 shards 00000..00049`` (first and last)."""
    names = list(shards)
    if len(names) == 1:
        return f"shard {names[0]}"
    if len(names) <= NAMED_SHARDS:
        return f"shards {','.join(names)}"
    return f"{len(names)} shards {names[0]}..{names[-1]}"


class Progress:
    """Counters of ``total`` requests and their reporting; ``label`` (the model and the run)
    and ``shards`` (the shards counted) open every line."""

    def __init__(
        self,
        label: str,
        total: int,
        mode: str = "auto",
        log_interval: float = 5.0,
        *,
        shards: Sequence[str] = (),
    ):
        self.label = f"{label} {shard_label(shards)}" if shards else label
        self.counters = Counters(total=total)
        interactive = sys.stderr.isatty()
        self.mode = ("bar" if interactive else "log") if mode == "auto" else mode
        self.interval = 0.25 if self.mode == "bar" else log_interval
        self.started = time.monotonic()
        self.last = self.started

    def tick(self, force: bool = False) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        line = self.render(now)
        if self.mode == "bar":
            sys.stderr.write("\r" + line[:160].ljust(100))
            sys.stderr.flush()
        elif logging.getLogger().hasHandlers() or log.handlers:
            log.info(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def render(self, now: float) -> str:
        c = self.counters
        elapsed = max(now - self.started, 1e-9)
        finished = c.done + c.failed
        pct = 100.0 * finished / c.total if c.total else 100.0
        width = 20
        filled = int(width * pct / 100)
        bar = "#" * filled + "-" * (width - filled)
        return (
            f"{self.label} [{bar}] {finished}/{c.total} ({pct:.0f}%) done={c.done} "
            f"failed={c.failed} in_flight={c.in_flight} {finished / elapsed:.1f} req/s "
            f"tokens={c.input_tokens}+{c.output_tokens} cost=${c.cost:.4f}"
        )

    def close(self) -> None:
        if self.mode == "off":
            return
        self.tick(force=True)
        if self.mode == "bar":
            sys.stderr.write("\n")
            sys.stderr.flush()
