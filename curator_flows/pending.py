"""Pending work of a run, and the one rule every reader of response lines applies: which line
stands for a request, and what the lines cost.

**Which line stands.** Per request id, in the order :meth:`RunStore.iter_records` reads a
shard's lines (append order locally, part-name order on object stores): a success line
(``content``) stands until a later *invalidation* line (``{"id", "invalidated": reason}``,
appended by finalize when the current acceptance rule refuses the stored content) takes it
back; a later success stands again. A failure line (``error``) stands only while no success
does: it never undoes a success. A request whose standing line is not a success is pending:
the next run sends it.

**What it costs.** Every line a run paid for is charged exactly once, whether it stands or
not: a success's ``cost`` (which includes what its failed attempts wasted), a failure's
``cost`` (what its paid attempts wasted), and their tokens (``usage`` plus ``wasted``). A line
found twice (the same id and ``ts``: a line duplicated in the file) is one line, charged and
judged once. Lines a step tagged with its ledger id (``step``) are also summed per step
(``by_step``), so what that step's ledger paid beyond its lines can be added once
(:func:`curator_flows.ledger.unlined`). A
*copy* (a success copied from a sibling run, marked ``reused_from``) was paid by that run: it
is charged only while it stands, once per id, and is what ``cached_cost`` reports. Batch
per-item errors that were retried are logged apart (``batches/<shard>.retries.jsonl``, one
entry per id and round, :class:`RetryLog`); such an entry is charged by the first response
line of its id written in the same or a later round (collect folds it into that line's
``cost`` and ``wasted``) and, until that line exists, on its own. So a line's cost and a
retry's waste are never both counted.

Invariants:
- :class:`ShardLines` is that rule, and the only one: finalize, the batch scan, ``status``,
  reuse and the pending/done ids of every runner use it;
- the done ids of a shard are read once per step; pending requests are streamed shard by shard
  in request order, so memory holds one shard's ids (one shard's standing lines when a caller
  keeps them), never the run;
- a work item ends as exactly one response line: :meth:`WorkItem.success_line` (content, usage,
  cost including what failed attempts wasted, timings) or :meth:`WorkItem.failure_line`; every
  failure line says whether sending the request again may succeed (``retryable``), which is
  what finalize's :class:`~curator_flows.errors.IncompleteRunError` reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptRunError
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

    def failure_line(self, reason: str, *, retryable: bool = True) -> dict[str, Any]:
        """The response line of a final failure, with what its paid attempts cost.
        ``retryable``: whether sending the request again may succeed (a transient error), not
        a request refused for what it is (a 4xx, a prompt longer than the context, an answer
        the acceptance rule kept refusing)."""
        record = {
            "id": self.id,
            "error": reason,
            "retryable": retryable,
            "attempts": self.attempts,
            "ts": time.time(),
        }
        if self.wasted_input or self.wasted_output or self.wasted_cost:
            record["wasted"] = [self.wasted_input, self.wasted_output]
            record["cost"] = self.wasted_cost
        return record


INVALIDATED = "invalidated"
#: what a standing line is (:attr:`ShardLines.kinds`)
SUCCESS, FAILURE = "success", "failure"


def invalidation_line(request_id: str, reason: str) -> dict[str, Any]:
    """The line that takes back a stored success the current model refuses: the request is
    pending again (sent by the next run)."""
    return {"id": request_id, INVALIDATED: reason, "ts": time.time()}


def kind_of(record: dict[str, Any]) -> str:
    """``SUCCESS``, ``INVALIDATED`` or ``FAILURE``."""
    if "content" in record:
        return SUCCESS
    return INVALIDATED if INVALIDATED in record else FAILURE


def responses_pattern(shard: str) -> str:
    """Every response file of ``shard`` (the local file and object-store parts)."""
    return f"responses/{shard}.*jsonl"


def retries_stem(shard: str) -> str:
    """The batch retry log of ``shard`` (``<stem>.jsonl``, or its parts on object stores)."""
    return f"batches/{shard}.retries"


@dataclass
class Charge:
    """What lines cost: dollars and tokens (``usage`` plus ``wasted``)."""

    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, input_tokens: int, output_tokens: int, cost: float) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost += cost

    def add_line(self, record: dict[str, Any]) -> None:
        used = record.get("usage") or (0, 0)
        wasted = record.get("wasted") or (0, 0)
        self.add(used[0] + wasted[0], used[1] + wasted[1], float(record.get("cost") or 0.0))


@dataclass
class RetryLog:
    """A shard's retried batch per-item errors: per id, ``(round, input, output, cost)`` of
    each, recorded once per (id, round)."""

    seen: set[tuple[str, int]] = field(default_factory=set)
    entries: dict[str, list[tuple[int, int, int, float]]] = field(default_factory=dict)

    def add(self, request_id: str, round_index: int, usage: Iterable[int], cost: float) -> bool:
        """Record one retried error; ``False`` when this (id, round) is already recorded."""
        key = (request_id, round_index)
        if key in self.seen:
            return False
        self.seen.add(key)
        used_in, used_out = usage
        if used_in or used_out or cost:
            self.entries.setdefault(request_id, []).append((round_index, used_in, used_out, cost))
        return True

    def unfolded(self, request_id: str, after_round: int) -> Charge:
        """What the id's retries of rounds after ``after_round`` wasted (not yet on a line)."""
        charge = Charge()
        for round_index, used_in, used_out, cost in self.entries.get(request_id, ()):
            if round_index > after_round:
                charge.add(used_in, used_out, cost)
        return charge


def read_retry_log(store: RunStore, shard: str) -> RetryLog:
    log = RetryLog()
    for record in store.iter_records(f"{retries_stem(shard)}*jsonl"):
        log.add(
            record["id"], record["round"], record.get("usage") or (0, 0), record.get("cost") or 0.0
        )
    return log


class ShardLines:
    """One shard's response lines under the module's rule, fed in read order.

    ``kinds``: per id, what its standing line is; ``lines``: the standing lines themselves
    (only when ``keep``); ``rounds``: per id, the latest batch round of the run's own lines (the
    fold point of its retries); ``paid``: every line this run paid for; ``copies``: the
    standing copies (``reused_from``) by id."""

    __slots__ = (
        "keep",
        "kinds",
        "lines",
        "rounds",
        "paid",
        "copies",
        "by_step",
        "seen",
        "longest_output",
    )

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.kinds: dict[str, str] = {}
        self.lines: dict[str, dict[str, Any]] = {}
        self.rounds: dict[str, int] = {}
        self.paid = Charge()
        self.copies: dict[str, Charge] = {}
        self.by_step: dict[str, Charge] = {}
        self.seen: set[tuple[Any, Any]] = set()
        #: the most output tokens one paid answer used
        self.longest_output = 0

    def add(self, record: dict[str, Any]) -> bool:
        """Take the next line; ``True`` when it becomes the line that stands for its id."""
        request_id = record.get("id")
        stamp = record.get("ts")
        if stamp is not None:
            if (request_id, stamp) in self.seen:
                return False  # the same line again: it was paid and judged once
            self.seen.add((request_id, stamp))
        kind = kind_of(record)
        copy = "reused_from" in record  # charged below, only while it stands
        if not copy and kind != INVALIDATED:
            self.paid.add_line(record)
            step = record.get("step")
            if step is not None:
                self.by_step.setdefault(step, Charge()).add_line(record)
            usage = record.get("usage")
            if usage and usage[1] > self.longest_output:
                self.longest_output = int(usage[1])
            round_index = record.get("round")
            if type(round_index) is int and round_index > self.rounds.get(request_id, -1):
                self.rounds[request_id] = round_index
        if kind == FAILURE and self.kinds.get(request_id) == SUCCESS:
            return False  # a failure never undoes a success
        self.kinds[request_id] = kind
        if self.keep:
            self.lines[request_id] = record
        self.copies.pop(request_id, None)
        if copy and kind == SUCCESS:
            charge = self.copies[request_id] = Charge()
            charge.add_line(record)
        return True

    def charge_retries(self, log: RetryLog) -> None:
        """Charge the retries no line of their id has folded in yet."""
        for request_id in log.entries:
            waste = log.unfolded(request_id, self.rounds.get(request_id, -1))
            self.paid.add(waste.input_tokens, waste.output_tokens, waste.cost)

    # ------------------------------------------------------------------ what stands
    def success_ids(self) -> set[str]:
        return {i for i, kind in self.kinds.items() if kind == SUCCESS}

    @property
    def succeeded(self) -> int:
        return sum(1 for kind in self.kinds.values() if kind == SUCCESS)

    @property
    def failed(self) -> int:
        """Ids whose standing line is a failure (an invalidated id is pending, not failed)."""
        return sum(1 for kind in self.kinds.values() if kind == FAILURE)

    @property
    def cached_cost(self) -> float:
        return sum(charge.cost for charge in self.copies.values())

    @property
    def charge(self) -> Charge:
        """What the shard's lines cost: every paid line, the standing copies, and the retries
        charged with :meth:`charge_retries`."""
        total = Charge(self.paid.cost, self.paid.input_tokens, self.paid.output_tokens)
        for charge in self.copies.values():
            total.add(charge.input_tokens, charge.output_tokens, charge.cost)
        return total


def read_shard(
    store: RunStore, shard: str, *, keep: bool = False, retries: bool = False
) -> ShardLines:
    """The shard's lines under the rule; ``retries``: also charge its batch retry log."""
    lines = ShardLines(keep)
    for record in store.iter_records(responses_pattern(shard)):
        lines.add(record)
    if retries:
        lines.charge_retries(read_retry_log(store, shard))
    return lines


def success_ids(store: RunStore, shard: str) -> set[str]:
    """Ids of the shard with a standing success."""
    return read_shard(store, shard).success_ids()


def done_ids(store: RunStore, shards: list[str]) -> dict[str, set[str]]:
    """Per shard, the ids with a standing success (read once per step)."""
    return {shard: success_ids(store, shard) for shard in shards}


#: what every request line holds (written whole by prepare)
REQUEST_KEYS = ("id", "row", "messages", "input")


def iter_requests(store: RunStore, shard: str, expected: int | None = None) -> Iterator[dict]:
    """The request lines of ``shard``, in order. The file is written whole at prepare, so a
    line cut short, undecodable or missing a key, a missing file, or fewer lines than
    ``expected`` is damage: :class:`~curator_flows.errors.CorruptRunError` names the file and
    the line (and how to recover), never a silently dropped row."""
    rel = f"requests/{shard}.jsonl"
    count = 0
    try:
        for request in store.iter_lines(rel, whole=True):
            count += 1
            if not all(key in request for key in REQUEST_KEYS):
                missing = [key for key in REQUEST_KEYS if key not in request]
                raise CorruptRunError(
                    f"{store.uri}/{rel} is damaged: line {count} has no {', '.join(missing)}"
                )
            yield request
    except FileNotFoundError:
        raise damaged_run(store, f"{store.uri}/{rel} is missing") from None
    except CorruptRunError as exc:
        raise damaged_run(store, str(exc)) from None
    if expected is not None and count != expected:
        raise damaged_run(
            store,
            f"{store.uri}/{rel} is damaged: it holds {count} requests, the manifest says "
            f"{expected} (lines were cut off its end)",
        )


def damaged_run(store: RunStore, problem: str) -> CorruptRunError:
    """The error for a damaged file of the run at ``store`` that the run cannot rebuild in
    place (a requests file, the manifest), with the way back that pays for nothing twice."""
    run_id = store.uri.rsplit("/", 1)[-1]
    return CorruptRunError(
        f"{problem}. To recover without paying again: move the run directory aside within the "
        f"same working_dir (e.g. rename {run_id} to {run_id}-damaged) and prepare the run "
        "again with the same dataset; the new run copies every answer stored in the old one "
        "and sends only the rest"
    )


def pending_items(
    store: RunStore, shards: list[str], done: dict[str, set[str]]
) -> Iterator[WorkItem]:
    """Requests of ``shards`` without a standing success, streamed shard by shard."""
    for shard in shards:
        finished = done[shard]
        for req in iter_requests(store, shard):
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
    """Requests of the shards in ``done`` without a standing success."""
    return sum(max(0, sizes[shard] - len(ids)) for shard, ids in done.items())


def run_pending(store: RunStore, sizes: dict[str, int]) -> int:
    """Requests of the shards in ``sizes`` without a standing success, one shard's ids in
    memory at a time."""
    return sum(count_pending(sizes, {shard: success_ids(store, shard)}) for shard in sizes)
