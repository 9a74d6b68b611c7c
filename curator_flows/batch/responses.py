"""Reading a shard's response lines for the batch steps: what is done, what is still owed.

Invariants:
- a request is *succeeded* when a success line (``content``) stands for it: no later
  invalidation line (the rule of :mod:`curator_flows.pending`); it is *finally failed in the
  current campaign* when, after its last invalidation, it has a failure line written by a batch
  round ``>= campaign_start``; every other request is *pending* and goes into the next round;
- per-item errors that were retried are kept apart, in ``batches/<shard>.retries.jsonl``
  (``{"id", "round", "error", "usage", "cost"}``), so the tokens they wasted are charged to the
  request's final line and a re-run of collect never counts them twice (keyed by id and round).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..pending import INVALIDATED, supersedes
from ..store import RunStore
from .records import retries_stem


@dataclass
class ShardScan:
    succeeded: set[str] = field(default_factory=set)
    final_failed: set[str] = field(default_factory=set)
    ok_by_round: dict[int, int] = field(default_factory=dict)
    failed_by_round: dict[int, int] = field(default_factory=dict)

    def settled(self, request_id: str) -> bool:
        return request_id in self.succeeded or request_id in self.final_failed


def scan_responses(store: RunStore, shard: str, campaign_start: int) -> ShardScan:
    scan = ShardScan()
    for record in store.iter_records(f"responses/{shard}.*jsonl"):
        request_id = record.get("id")
        round_index = record.get("round")
        if "content" in record:
            scan.succeeded.add(request_id)
            if round_index is not None:
                scan.ok_by_round[round_index] = scan.ok_by_round.get(round_index, 0) + 1
        elif INVALIDATED in record:  # the stored success is refused now: owed again
            scan.succeeded.discard(request_id)
            scan.final_failed.discard(request_id)
        elif round_index is not None and round_index >= campaign_start:
            scan.final_failed.add(request_id)
            scan.failed_by_round[round_index] = scan.failed_by_round.get(round_index, 0) + 1
    scan.final_failed -= scan.succeeded
    return scan


def pending_requests(store: RunStore, shard: str, scan: ShardScan) -> Iterator[dict[str, Any]]:
    """The shard's requests that the next round must send, in shard order."""
    for request in store.iter_lines(f"requests/{shard}.jsonl"):
        if not scan.settled(request["id"]):
            yield request


def pending_ids(store: RunStore, shard: str, scan: ShardScan) -> set[str]:
    return {r["id"] for r in pending_requests(store, shard, scan)}


@dataclass
class Retries:
    """The retried per-item errors of a shard: wasted usage per id, and which (id, round) pairs
    are already recorded."""

    seen: set[tuple[str, int]] = field(default_factory=set)
    wasted: dict[str, list[float]] = field(default_factory=dict)

    def add(self, request_id: str, round_index: int, usage: list[int], cost: float) -> bool:
        key = (request_id, round_index)
        if key in self.seen:
            return False
        self.seen.add(key)
        if usage[0] or usage[1] or cost:
            entry = self.wasted.setdefault(request_id, [0, 0, 0.0])
            entry[0] += usage[0]
            entry[1] += usage[1]
            entry[2] += cost
        return True


def load_retries(store: RunStore, shard: str) -> Retries:
    retries = Retries()
    for record in store.iter_records(f"{retries_stem(shard)}*jsonl"):
        retries.add(
            record["id"], record["round"], record.get("usage") or [0, 0], record.get("cost") or 0.0
        )
    return retries


@dataclass
class ShardCounts:
    """Latest-line-per-request counts of a shard (what ``status`` reports)."""

    succeeded: int = 0
    failed: int = 0
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


def count_responses(store: RunStore, shard: str) -> ShardCounts:
    """Per request id the standing line (as in finalize): a success until a later invalidation;
    an invalidated request with no later line is pending, not failed. Cost and tokens count
    every paid success (invalidated ones too) and the standing failure."""
    latest: dict[str, dict[str, Any]] = {}
    counts = ShardCounts()
    for record in store.iter_records(f"responses/{shard}.*jsonl"):
        request_id = record.get("id")
        previous = latest.get(request_id)
        if supersedes(previous, record):
            if previous is not None and "content" in previous:
                _charge(counts, previous)  # a paid success, taken back: still paid
            latest[request_id] = record
    for record in latest.values():
        if "content" in record:
            counts.succeeded += 1
        elif INVALIDATED not in record:
            counts.failed += 1
        _charge(counts, record)
    return counts


def _charge(counts: ShardCounts, record: dict[str, Any]) -> None:
    used = record.get("usage") or [0, 0]
    wasted = record.get("wasted") or [0, 0]
    counts.cost += float(record.get("cost") or 0.0)
    counts.input_tokens += used[0] + wasted[0]
    counts.output_tokens += used[1] + wasted[1]
