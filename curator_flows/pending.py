"""Pending work of a run: requests without a successful response line, and the work item a
runner carries for each.

Invariants:
- pending = requests of a shard with no standing success; nothing else is ever sent. A success
  line stands until a later *invalidation* line for its id (``{"id", "invalidated": reason}``,
  appended by finalize when the current ``response_format`` refuses the stored content); a
  later success stands again. "Later" is the order :meth:`RunStore.iter_records` reads lines
  in (append order locally, part-name order on object stores). Failure lines never undo a
  success. :func:`supersedes` is this rule for readers that keep one line per id;
- the done ids of a shard are read once per step; pending requests are streamed shard by shard
  in request order, so memory holds one shard's ids, never the requests;
- a work item ends as exactly one response line: :meth:`WorkItem.success_line` (content, usage,
  cost including what failed attempts wasted, timings) or :meth:`WorkItem.failure_line`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .store import RunStore
from .tokens import estimate_prompt_tokens


@dataclass(slots=True)
class WorkItem:
    shard: str
    id: str
    messages: list[dict[str, Any]]
    est_input: int
    attempts: int = 0
    rate_limited: int = 0
    wasted_input: int = 0
    wasted_output: int = 0
    wasted_cost: float = 0.0
    #: the row's own generation params (its request line's ``params``), over the LLM's
    params: dict[str, Any] | None = None

    def waste(self, input_tokens: int, output_tokens: int, cost: float) -> None:
        """Charge a paid attempt whose answer was not accepted to this request."""
        self.wasted_input += input_tokens
        self.wasted_output += output_tokens
        self.wasted_cost += cost

    def success_line(
        self,
        content: str,
        finish_reason: str | None,
        usage: tuple[int, int],
        cost: float,
        latency: float,
        attempts: int,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The response line of a success; ``cost`` includes what failed attempts wasted."""
        record = {
            "id": self.id,
            "content": content,
            "finish_reason": finish_reason,
            "usage": list(usage),
            "cost": cost + self.wasted_cost,
            "latency": round(latency, 4),
            "attempts": attempts,
            "ts": time.time(),
        }
        if self.wasted_input or self.wasted_output:
            record["wasted"] = [self.wasted_input, self.wasted_output]
        if extra:
            record.update(extra)
        return record

    def failure_line(self, reason: str) -> dict[str, Any]:
        """The response line of a final failure, with what its paid attempts cost."""
        record = {"id": self.id, "error": reason, "attempts": self.attempts, "ts": time.time()}
        if self.wasted_input or self.wasted_output or self.wasted_cost:
            record["wasted"] = [self.wasted_input, self.wasted_output]
            record["cost"] = self.wasted_cost
        return record


INVALIDATED = "invalidated"


def is_success(record: dict[str, Any]) -> bool:
    return "content" in record


def is_invalidation(record: dict[str, Any]) -> bool:
    return INVALIDATED in record


def invalidation_line(request_id: str, reason: str) -> dict[str, Any]:
    """The line that takes back a stored success the current model refuses: the request is
    pending again (sent by the next run)."""
    return {"id": request_id, INVALIDATED: reason, "ts": time.time()}


def supersedes(previous: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    """Whether ``record`` (read after ``previous``) becomes the line that stands for its id: a
    success or an invalidation always does; a failure does unless a success stands."""
    return (
        previous is None
        or "content" not in previous
        or "content" in record
        or (INVALIDATED in record)
    )


def success_ids(store: RunStore, shard: str) -> set[str]:
    """Ids of the shard with a standing success (see the module's rule)."""
    done: set[str] = set()
    for record in store.iter_records(f"responses/{shard}.*jsonl"):
        if "content" in record:
            done.add(record["id"])
        elif INVALIDATED in record:
            done.discard(record["id"])
    return done


def done_ids(store: RunStore, shards: list[str]) -> dict[str, set[str]]:
    """Per shard, the ids that already have a successful response line (read once per step)."""
    return {shard: success_ids(store, shard) for shard in shards}


def pending_items(
    store: RunStore, shards: list[str], done: dict[str, set[str]]
) -> Iterator[WorkItem]:
    """Requests of ``shards`` without a successful response, streamed shard by shard."""
    for shard in shards:
        finished = done[shard]
        for req in store.iter_lines(f"requests/{shard}.jsonl"):
            if req["id"] not in finished:
                messages = req["messages"]
                yield WorkItem(
                    shard,
                    req["id"],
                    messages,
                    estimate_prompt_tokens(messages),
                    params=req.get("params"),
                )


def count_pending(sizes: dict[str, int], done: dict[str, set[str]]) -> int:
    return sum(max(0, sizes[shard] - len(ids)) for shard, ids in done.items())
