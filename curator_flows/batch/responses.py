"""Reading a shard's response lines for the batch steps: what is done, what is still owed.

Invariants:
- the standing line of a request and what lines cost follow the one rule of
  :mod:`curator_flows.pending`; a request is *succeeded* when a success stands for it; it is
  *finally failed in the current campaign* when the line that stands for it is a failure
  written by a batch round ``>= campaign_start``; every other request is *pending* and goes
  into the next round;
- per-item errors that were retried are kept apart, in the shard's retry log
  (``batches/<shard>.retries.jsonl``: ``{"id", "round", "error", "usage", "cost"}``), so the
  tokens they wasted are charged to the request's next response line (collect folds in the
  entries of rounds after the id's latest line) and a re-run of collect never counts them twice
  (keyed by id and round).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..pending import (
    FAILURE,
    SUCCESS,
    Charge,
    ShardLines,
    iter_requests,
    read_shard,
    responses_pattern,
)
from ..store import RunStore


@dataclass
class ShardScan:
    """A shard's lines read once, judged for the campaign that starts at ``campaign_start``."""

    lines: ShardLines
    campaign_start: int = 0
    succeeded: set[str] = field(default_factory=set)
    final_failed: set[str] = field(default_factory=set)
    ok_by_round: dict[int, int] = field(default_factory=dict)
    failed_by_round: dict[int, int] = field(default_factory=dict)

    def settled(self, request_id: str) -> bool:
        return request_id in self.succeeded or request_id in self.final_failed

    def for_campaign(self, campaign_start: int) -> ShardScan:
        """The same lines judged for a campaign starting at ``campaign_start`` (nothing read)."""
        if campaign_start == self.campaign_start:
            return self
        return _judged(
            ShardScan(
                self.lines,
                campaign_start,
                ok_by_round=dict(self.ok_by_round),
                failed_by_round=dict(self.failed_by_round),  # campaigns only move forward
            ),
            self.lines,
        )


def scan_responses(store: RunStore, shard: str, campaign_start: int) -> ShardScan:
    lines = ShardLines()
    scan = ShardScan(lines, campaign_start)
    for record in store.iter_records(responses_pattern(shard)):
        lines.add(record)
        round_index = record.get("round")
        if round_index is None or "reused_from" in record:
            continue  # not one of this run's batch lines
        if "content" in record:
            scan.ok_by_round[round_index] = scan.ok_by_round.get(round_index, 0) + 1
        elif "error" in record:
            scan.failed_by_round[round_index] = scan.failed_by_round.get(round_index, 0) + 1
    return _judged(scan, lines)


def _judged(scan: ShardScan, lines: ShardLines) -> ShardScan:
    """Fill ``succeeded`` and ``final_failed`` (and keep the failures counted by round to the
    campaign's rounds)."""
    start = scan.campaign_start
    rounds = lines.rounds
    for request_id, kind in lines.kinds.items():
        if kind == SUCCESS:
            scan.succeeded.add(request_id)
        elif kind == FAILURE and rounds.get(request_id, -1) >= start:
            scan.final_failed.add(request_id)
    scan.failed_by_round = {r: n for r, n in scan.failed_by_round.items() if r >= start}
    return scan


def pending_requests(store: RunStore, shard: str, scan: ShardScan) -> Iterator[dict[str, Any]]:
    """The shard's requests that the next round must send, in shard order."""
    for request in iter_requests(store, shard):
        if not scan.settled(request["id"]):
            yield request


def pending_ids(store: RunStore, shard: str, scan: ShardScan) -> set[str]:
    return {r["id"] for r in pending_requests(store, shard, scan)}


@dataclass
class ShardCounts:
    """Standing-line counts of a shard and what its lines cost (what ``status`` reports)."""

    succeeded: int = 0
    failed: int = 0
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    #: what the lines of each step that tags its lines charge
    by_step: dict[str, Charge] = field(default_factory=dict)


def count_responses(store: RunStore, shard: str, batch: bool = False) -> ShardCounts:
    """The shard's standing lines counted and its lines charged, as finalize does
    (:mod:`curator_flows.pending`); ``batch``: the retries no line holds yet are charged too.
    An invalidated request with no later line is pending, not failed."""
    lines = read_shard(store, shard, retries=batch)
    charge = lines.charge
    return ShardCounts(
        succeeded=lines.succeeded,
        failed=lines.failed,
        cost=charge.cost,
        input_tokens=charge.input_tokens,
        output_tokens=charge.output_tokens,
        by_step=lines.by_step,
    )
