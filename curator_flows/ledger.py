"""Per-step statistics in the run directory: the ledger that ``finalize`` sums and the cost
budget reads.

Layout: ``stats/<step>-<start ns>-<uuid8>.json``, one file per step invocation, written whole
(atomically) every ``flush_seconds`` while the step runs and once more when it ends::

    {"step": "run_online", "id": "run_online-<ns>-<uuid8>", "shards": [...],
     "started_at": ..., "ended_at": ..., "closed": bool, "tags_lines": bool,
     "sent": n, "succeeded": n, "failed": n, "rate_limited": n, "input_tokens": n,
     "output_tokens": n, "cost": $, "reserved": $, "open_output": n, "open_choices": n,
     "longest_output": n, "latency_total": s, "max_in_flight": n}

Invariants:
- a step's counters reach the store at most ``flush_seconds`` late, so a killed step loses at
  most that much of its statistics and of the spending the budget sees;
- statistics are the same whether a run was driven in one process or one step per process:
  both read the same ledger files; ``total_time`` is the union of the steps' intervals (parallel
  shards are not counted twice, idle time between steps is not counted);
- **what a run paid** is its response lines' charge (:mod:`curator_flows.pending`: every paid
  line once, duplicates once) plus, per step whose lines carry its id (``tags_lines``), what its
  ledger counted beyond those lines (:func:`unlined`): an attempt whose line a crash destroyed,
  or whose request dispatch stopped before it got a line. Neither deleting ``stats/`` (lines
  remain) nor losing lines (the ledger remains) forgets a paid attempt that either still holds,
  and an attempt both hold counts once;
- ``reserved`` is what a running step holds for requests in flight; it counts while the ledger
  is live (written within ``LIVE_SECONDS`` and not closed). ``open_output`` / ``open_choices``:
  the output tokens its holds without ``max_tokens`` assumed, for how many choices, so a reader
  tops them up to the longest output the run has seen since (:mod:`curator_flows.budget`);
- ledgers hold counts only: no prompts, no content, no secrets.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .pending import Charge
from .store import RunStore

STATS_DIR = "stats"
COUNTERS = (
    "sent",
    "succeeded",
    "failed",
    "rate_limited",
    "input_tokens",
    "output_tokens",
    "cost",
    "latency_total",
)


class StepLedger:
    """The counters of one step invocation, flushed to its own file."""

    def __init__(
        self,
        store: RunStore,
        step: str,
        shards: list[str],
        *,
        flush_seconds: float = 2.0,
        started_at: float | None = None,
    ) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.started_at = time.time() if started_at is None else started_at
        self.id = f"{step}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self.rel = f"{STATS_DIR}/{self.id}.json"
        self.data: dict[str, Any] = {
            "step": step,
            "id": self.id,
            "shards": list(shards),
            "started_at": self.started_at,
            "ended_at": self.started_at,
            **{name: 0 for name in COUNTERS},
            "max_in_flight": 0,
        }
        self.data["cost"] = 0.0
        self.data["latency_total"] = 0.0
        self.last_flush = 0.0
        self.dirty = False

    def set(self, **counters: Any) -> None:
        """Replace counters with the step's running totals."""
        self.data.update(counters)
        self.dirty = True

    def add(self, **counters: Any) -> None:
        for name, value in counters.items():
            self.data[name] = self.data.get(name, 0) + value
        self.dirty = True

    @property
    def cost(self) -> float:
        return float(self.data.get("cost") or 0.0)

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self.dirty or now - self.last_flush < self.flush_seconds):
            return
        self.last_flush = now
        self.dirty = False
        self.data["ended_at"] = max(time.time(), self.started_at)
        self.store.write_json(self.rel, self.data)

    def tag_lines(self) -> None:
        """The step writes its id into every response line it appends (``"step"``), so what it
        paid beyond its lines can be told (:func:`unlined`)."""
        self.data["tags_lines"] = True

    def close(self, ended_at: float | None = None) -> None:
        """Write the final counters (``ended_at``: the end of the work, default now); nothing
        stays reserved."""
        self.data["reserved"] = 0.0
        self.data["closed"] = True
        self.data["ended_at"] = max(time.time(), self.started_at) if ended_at is None else ended_at
        self.dirty = False
        self.store.write_json(self.rel, self.data)


def read_ledgers(store: RunStore, exclude: str | None = None) -> list[dict[str, Any]]:
    """Every step ledger of the run (``exclude``: one ledger's path, e.g. the caller's own)."""
    return LedgerReader(store).read(exclude)


class LedgerReader:
    """Reads a run's ledgers again and again cheaply: a closed ledger never changes, so it is
    read once."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.closed: dict[str, dict[str, Any]] = {}

    def read(self, exclude: str | None = None) -> list[dict[str, Any]]:
        out = []
        for rel in self.store.glob(f"{STATS_DIR}/*.json"):
            if rel == exclude or ".tmp-" in rel:
                continue
            entry = self.closed.get(rel)
            if entry is None:
                try:
                    entry = self.store.read_json(rel)
                except (OSError, ValueError):
                    continue  # a ledger being replaced right now; counted at the next read
                entry.setdefault("id", ledger_id(entry, rel))
                if entry.get("closed"):
                    self.closed[rel] = entry
            out.append(entry)
        return out


#: a ledger updated this recently belongs to a step still running: its reservations count
LIVE_SECONDS = 10.0


def ledger_id(entry: dict[str, Any], rel: str | None = None) -> str:
    """A ledger's step id (older ledgers: their file's stem)."""
    if entry.get("id"):
        return str(entry["id"])
    return (rel or "").rsplit("/", 1)[-1].removesuffix(".json")


def _live(entries: list[dict[str, Any]], now: float | None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    return [
        entry
        for entry in entries
        if not entry.get("closed") and now - float(entry.get("ended_at") or 0.0) < LIVE_SECONDS
    ]


def live_reserved(entries: list[dict[str, Any]], now: float | None = None) -> float:
    """What running steps hold for requests in flight (ledgers written within
    ``LIVE_SECONDS`` and not closed)."""
    return sum(float(entry.get("reserved") or 0.0) for entry in _live(entries, now))


def live_open_holds(
    entries: list[dict[str, Any]], now: float | None = None
) -> list[tuple[int, int]]:
    """``(open_choices, open_output)`` of each running step whose holds no ``max_tokens``
    bounds: how many choices they are for and the output tokens they assumed."""
    holds = []
    for entry in _live(entries, now):
        choices = int(entry.get("open_choices") or 0)
        if choices:
            holds.append((choices, int(entry.get("open_output") or 0)))
    return holds


def shortfall_tokens(holds: list[tuple[int, int]], output: float) -> float:
    """Output tokens by which ``(choices, assumed output)`` holds fall short of ``output``
    tokens per choice (per holder: one holder's excess never covers another's shortfall)."""
    return sum(max(0.0, choices * output - assumed) for choices, assumed in holds)


def unlined(entries: list[dict[str, Any]], lines_by_step: dict[str, Charge]) -> Charge:
    """What steps that tag their lines paid beyond the lines they wrote: per step, its ledger's
    counters less its lines' charge, when more (see the module's invariants)."""
    extra = Charge()
    for entry in entries:
        if not entry.get("tags_lines"):
            continue
        lines = lines_by_step.get(ledger_id(entry)) or Charge()
        cost = float(entry.get("cost") or 0.0) - lines.cost
        if cost > 1e-12:
            extra.add(
                max(0, int(entry.get("input_tokens") or 0) - lines.input_tokens),
                max(0, int(entry.get("output_tokens") or 0) - lines.output_tokens),
                cost,
            )
    return extra


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    total = 0.0
    end = float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def run_totals(store: RunStore) -> dict[str, Any]:
    """The sums of every ledger, plus ``total_time`` (union of the step intervals)."""
    ledgers = read_ledgers(store)
    totals: dict[str, Any] = {name: 0 for name in COUNTERS}
    totals["cost"] = 0.0
    totals["latency_total"] = 0.0
    totals["max_in_flight"] = 0
    intervals = []
    for entry in sorted(ledgers, key=lambda e: e.get("started_at") or 0.0):
        for name in COUNTERS:
            totals[name] += entry.get(name) or 0
        totals["max_in_flight"] = max(totals["max_in_flight"], entry.get("max_in_flight") or 0)
        if entry.get("limits"):
            totals["limits"] = entry["limits"]
        start, stop = entry.get("started_at"), entry.get("ended_at")
        if start is not None and stop is not None and stop >= start:
            intervals.append((float(start), float(stop)))
    totals["total_time"] = _busy_seconds(intervals)
    totals["steps"] = len(ledgers)
    return totals
