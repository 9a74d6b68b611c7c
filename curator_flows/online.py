"""The online runner: sends a run's pending requests under its limits and appends each finished
request to its shard's response file.

Invariants:
- pending = requests of the shard with no successful response line; nothing else is sent, and
  the step holds the leases of its shards while it sends (:mod:`curator_flows.lease`);
- a fixed pool of ``max_concurrent_requests`` workers (no task per request) pulls from one
  queue: ready retries first, then first attempts, so retries interleave with fresh work;
- every answered request ends with exactly one line: success (content, usage, cost, timings)
  or final failure (reason), written the moment it is known; on object stores buffered lines
  reach the store within ``flush_seconds`` (a timer flushes them, not the next response);
- dispatch waits for the first answer (it carries the provider's limits): one request in
  flight, twice as many every ``WARMUP_SECONDS`` without an answer (slow answers, such as a
  reasoning model's, never release a burst the provider refuses), up to the configured or
  conservative limits; then it keeps learning from every answer's rate-limit headers;
- every request reserves, before it is sent, what its provider counts up front and what the run
  has observed its answers to use (:mod:`curator_flows.ratelimit`), and its estimated cost
  (:mod:`curator_flows.budget`: a reservation that does not fit waits for those in flight); both
  are settled on every answer;
- 429s pause all dispatch and are not counted against ``max_retries``; 5xx, timeouts, dropped
  connections, malformed bodies, invalid finish reasons and schema-invalid content are; other
  4xx fail at once;
- a request the endpoint accepted and gave no answer to within ``request_timeout`` is a timeout
  (one WARNING per run says to raise ``request_timeout``), not an unreachable endpoint: after
  ``max_retries`` it ends as a failure line (``retryable``) like any failure; only an endpoint
  that never accepted a connection (refused, unknown host, connect timeout) is unreachable;
- the run stops dispatching (in-flight requests finish, nothing new is sent, unsent requests
  stay pending and get no line) and raises at the end when: the provider answers 401/403/404
  (:class:`~curator_flows.errors.AuthenticationError`), the account is out of credit or over a
  spend limit (:class:`~curator_flows.errors.QuotaExceededError`) or a per-day limit
  (:class:`~curator_flows.errors.DailyLimitError`, retryable), the endpoint never accepts a
  connection (:class:`~curator_flows.errors.EndpointUnreachableError`), the budget is
  reached and nothing in flight could make room
  (:class:`~curator_flows.errors.BudgetExceededError`), a write to the run directory fails
  (:class:`~curator_flows.errors.StorageWriteError`, retryable as its cause is, after retrying
  the write of what arrived for ``WRITE_RETRY_SECONDS`` unless the cause is permanent, such as
  a refused permission; answers that still cannot be written, every one of them paid, are kept
  in a spill file that the next step of the run merges, :mod:`curator_flows.spill`)
  or the shard lease was lost (:class:`~curator_flows.errors.LeaseLostError`);
- every send is fenced: right before it, the worker checks (no I/O) that its shard leases are
  still certainly its own, so a worker that was frozen past its lease sends nothing more when
  it wakes (only what was already in flight at the freeze can be sent twice).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .acceptance import Acceptance
from .backends.account import DAILY_LIMIT, QUOTA, refusal_error
from .backends.base import Attempt, OnlineBackend
from .backends.factory import OutputRule, build_online_backend, output_estimate, output_rule
from .budget import NO_HOLD, Budget, Hold, LedgerRead
from .cost import Prices, resolve_prices
from .credentials import Credentials
from .errors import (
    AuthenticationError,
    BudgetExceededError,
    ConfigError,
    CuratorFlowsError,
    EndpointUnreachableError,
    LeaseLostError,
    StorageWriteError,
    is_retryable,
)
from .lease import ShardLeases
from .ledger import StepLedger
from .pending import WorkItem, count_pending, done_ids, pending_items
from .progress import Progress
from .ratelimit import RateLimiter, Reservation
from .results import ShardResult, make
from .runs import RunRef, llm_for, open_run, shard_names, shard_sizes
from .spill import spill
from .store import RunStore
from .tokens import Observed

if TYPE_CHECKING:
    from .llm import LLM

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 256
HOUSEKEEPING_SECONDS = 0.5
MAX_RATE_LIMIT_RETRIES = 100
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
WARMUP_IN_FLIGHT = 1  # requests in flight before the first answer tells us the limits
#: every this long without that first answer, twice as many requests may be in flight
WARMUP_SECONDS = 3.0
#: in-flight cap when neither the user nor the provider's headers say anything about limits
UNKNOWN_LIMITS_CONCURRENCY = 64
#: answers that mean "wrong key, no access, wrong endpoint or model": stop at once
AUTH_STATUSES = (401, 403, 404)
#: an endpoint that gave no answer for this long while connections kept failing is unreachable
UNREACHABLE_WINDOW = 30.0
#: how long the end of a run keeps retrying a failing write before it spills what arrived
WRITE_RETRY_SECONDS = 30.0


@dataclass
class OnlineSummary:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    elapsed: float = 0.0
    max_in_flight: int = 0
    latency_total: float = 0.0
    limits: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class OnlineRunner:
    def __init__(
        self,
        store: RunStore,
        backend: OnlineBackend,
        limiter: RateLimiter,
        *,
        concurrency: int,
        concurrency_is_explicit: bool = False,
        max_retries: int,
        pause_on_rate_limit: float,
        acceptance: Acceptance,
        prices: Prices,
        output_rule: OutputRule,
        progress: Progress,
        output_prior: int | None = None,
        ledger: StepLedger | None = None,
        budget: Budget | None = None,
        leases: ShardLeases | None = None,
        keep_completions: bool = False,
        run_id: str = "",
        spill_dir: str | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.spill_dir = spill_dir
        self.keep_completions = keep_completions
        self.backend = backend
        self.limiter = limiter
        self.concurrency = concurrency
        self.allowed = concurrency
        self.concurrency_is_explicit = concurrency_is_explicit
        self.max_retries = max_retries
        self.pause_on_rate_limit = pause_on_rate_limit
        self.acceptance = acceptance
        self.ledger = ledger
        self.budget = budget
        self.leases = leases
        self.prices = prices
        self.output_rule = output_rule
        #: output tokens per answer (per choice) observed so far: what requests reserve
        self.outputs = Observed(output_prior or output_rule.cap or 256)
        self.progress = progress
        self.summary = OnlineSummary()
        self.appenders: dict[str, Any] = {}
        self.retries: list[tuple[float, int, WorkItem]] = []
        self.retry_seq = 0
        self.fresh: Iterator[WorkItem] | None = None
        self.active = 0
        self.in_flight = 0
        self.warm = False
        self.warm_in_flight = WARMUP_IN_FLIGHT
        self.warm_event: asyncio.Event | None = None
        self.warm_deadline = 0.0
        self.last_answer_at: float | None = None
        self.stop_error: CuratorFlowsError | None = None
        self.timeout_warned = False
        self.ledger_lock = threading.Lock()
        self.ledger_closed = False
        self.snapshots = self.snapshot_written = 0
        if budget is not None:
            budget.publish = self.sync_budget
            budget.window = concurrency

    async def run(self, pending: Iterator[WorkItem]) -> OnlineSummary:
        """Send everything pending; raise the reason dispatch stopped, if it did (after every
        line that arrived was written)."""
        self.fresh = pending
        self.warm_event = asyncio.Event()
        self.warm_deadline = time.monotonic() + WARMUP_SECONDS
        started = time.monotonic()
        await self.backend.open()
        housekeeping = asyncio.create_task(self.housekeeping())
        try:
            workers = [asyncio.create_task(self.worker(i)) for i in range(self.concurrency)]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for task in workers:
                    task.cancel()
                raise
        finally:
            housekeeping.cancel()
            await self.backend.close()
            await self.close_appenders()
            self.summary.elapsed = time.monotonic() - started
            self.summary.limits = self.limiter.limits()
            self.record_ledger(self.ledger_snapshot(), final=True)
            self.progress.close()
        if isinstance(self.stop_error, BudgetExceededError) and self.budget is not None:
            self.stop_error = self.budget.exceeded()  # with what in-flight requests cost
        if self.stop_error is not None:
            raise self.stop_error
        return self.summary

    def stop(self, error: CuratorFlowsError) -> None:
        """Stop dispatching: nothing new is sent; the first reason wins."""
        if self.stop_error is None:
            log.error("stopping dispatch: %s", error)
            self.stop_error = error

    # --------------------------------------------------------------- housekeeping
    async def housekeeping(self) -> None:
        """Twice a second: buffered response lines whose time has come reach the store (a slow
        request never holds paid responses back), a lost lease stops dispatch, and, in a
        thread (their I/O never stalls requests in flight), the ledger is written and what
        parallel steps spent and reserved is read. The ledger's figures are taken, and what
        was read is applied, in the loop: a thread never sees a request half settled (paid
        but still held, or neither)."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                for appender in self.appenders.values():
                    appender.flush_if_due()
            except OSError as exc:
                self.stop(self._write_error(exc))
            if self.leases is not None:
                try:
                    self.leases.check()  # renewed by their own thread; lost = stop sending
                except CuratorFlowsError as exc:
                    self.stop(exc)
            snapshot = self.ledger_snapshot()
            read = await asyncio.to_thread(self._bookkeeping, snapshot)
            if read is not None and self.budget is not None:
                self.budget.absorb(read)

    def _bookkeeping(self, snapshot: tuple[int, dict[str, Any]]) -> LedgerRead | None:
        self.record_ledger(snapshot)
        return self.budget.read_others() if self.budget is not None else None

    def sync_budget(self) -> None:
        """Announce this step's spending and what it holds now (the budget's allotments)."""
        self.record_ledger(self.ledger_snapshot(), force=True)

    def ledger_snapshot(self) -> tuple[int, dict[str, Any]]:
        """``(sequence number, counters)``: the step's counters and holds at one instant of the
        loop (taken in the loop, never between a request's settlement and its charge)."""
        s = self.summary
        budget = self.budget
        self.snapshots += 1
        return self.snapshots, {
            "sent": s.sent,
            "succeeded": s.succeeded,
            "failed": s.failed,
            "rate_limited": s.rate_limited,
            "input_tokens": s.input_tokens,
            "output_tokens": s.output_tokens,
            "cost": s.cost,
            "latency_total": s.latency_total,
            "max_in_flight": s.max_in_flight,
            "limits": self.limiter.limits(),
            "reserved": budget.reserved if budget is not None else 0.0,
            "open_output": budget.open_output if budget is not None else 0,
            "open_choices": budget.open_choices if budget is not None else 0,
            "longest_output": int(self.outputs.largest or 0),
        }

    def record_ledger(
        self, snapshot: tuple[int, dict[str, Any]], final: bool = False, force: bool = False
    ) -> None:
        """Write a snapshot of the step's counters (from the housekeeping thread, or from the
        loop; a snapshot older than one already written is dropped, and once the final write
        happened, a late periodic one never overwrites it)."""
        if self.ledger is None:
            return
        seq, counters = snapshot
        with self.ledger_lock:
            if self.ledger_closed or seq <= self.snapshot_written:
                return
            self.snapshot_written = seq
            self.ledger.set(**counters)
            try:
                if final:
                    self.ledger_closed = True
                    self.ledger.close()
                else:
                    self.ledger.flush(force=force)
            except OSError as exc:
                log.warning("could not write the step's statistics: %s", exc)

    # ------------------------------------------------------------- scheduling
    def _take(self) -> WorkItem | None | bool:
        """A ready item; ``False`` when there is nothing ready yet; ``None`` when all is done."""
        if self.retries and self.retries[0][0] <= time.monotonic():
            return heapq.heappop(self.retries)[2]
        if self.fresh is not None:
            try:
                item = next(self.fresh, None)
            except CuratorFlowsError as exc:  # a damaged requests file: in-flight ones finish
                self.fresh = None
                self.stop(exc)
                return None
            if item is not None:
                return item
            self.fresh = None
        if not self.retries and self.active == 0:
            return None
        return False

    async def next_item(self, worker: int) -> WorkItem | None:
        while True:
            if self.stop_error is not None:
                return None
            if not self.warm and self.active >= self.warm_in_flight:
                remaining = self.warm_deadline - time.monotonic()
                if remaining <= 0:
                    self.warm_in_flight *= 2
                    self.warm_deadline = time.monotonic() + WARMUP_SECONDS
                    if self.warm_in_flight >= UNKNOWN_LIMITS_CONCURRENCY:
                        log.info("no answer yet: dispatching without known limits")
                        self.warm_up()
                    continue
                try:
                    await asyncio.wait_for(self.warm_event.wait(), min(remaining, 0.05))
                except TimeoutError:
                    pass
                continue
            if worker >= self.allowed:
                if self.fresh is None and not self.retries:
                    return None  # beyond the in-flight cap and nothing left to hand out
                await asyncio.sleep(0.05)
                continue
            item = self._take()
            if item is None:
                return None
            if item is not False:
                self.active += 1
                return item
            delay = self.retries[0][0] - time.monotonic() if self.retries else 0.02
            await asyncio.sleep(min(max(delay, 0.001), 0.05))

    def warm_up(self) -> None:
        """Open dispatch up to the concurrency cap, which is conservative when nobody (user or
        provider headers) said anything about limits."""
        self.warm = True
        if not self.concurrency_is_explicit and not self.limiter.learned and self.limiter.unlimited:
            self.allowed = min(self.concurrency, UNKNOWN_LIMITS_CONCURRENCY)
        self.warm_event.set()

    def _retry_later(self, item: WorkItem, delay: float) -> None:
        self.retry_seq += 1
        heapq.heappush(self.retries, (time.monotonic() + delay, self.retry_seq, item))

    @staticmethod
    def backoff(attempt: int) -> float:
        return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0)

    # --------------------------------------------------------------- workers
    async def worker(self, index: int) -> None:
        while True:
            item = await self.next_item(index)
            if item is None:
                return
            try:
                await self.process(item)
            finally:
                self.active -= 1

    async def process(self, item: WorkItem) -> None:
        counters = self.progress.counters
        rule = self.output_rule.for_row(item.params)
        hold = NO_HOLD
        if self.budget is not None:
            held = await self.reserve_budget(item, rule)
            if held is None:
                return  # not sent: stays pending
            hold = held

        def reservation() -> Reservation:  # what the run has observed when its turn comes
            output = rule.reserve(self.outputs.high(rule.cap))
            return Reservation(item.est_input, output, rule.counted)

        charge = await self.limiter.acquire(reservation)
        self.fence()
        if self.stop_error is not None:
            self.limiter.refund(charge)
            if self.budget is not None:
                self.budget.settle(hold, 0.0)
            return  # dispatch stopped while this one waited for its turn: not sent
        self.in_flight += 1
        counters.in_flight = self.in_flight
        if self.in_flight > self.summary.max_in_flight:
            self.summary.max_in_flight = self.in_flight
        self.summary.sent += 1
        started = time.perf_counter()
        try:
            attempt = await self.backend.complete(item.messages, item.params)
        finally:
            self.in_flight -= 1
            counters.in_flight = self.in_flight
        latency = time.perf_counter() - started
        paid = self.prices.cost(attempt.input_tokens, attempt.output_tokens)
        if self.budget is not None:
            self.budget.settle(hold, paid if attempt.kind == "ok" else 0.0)
        self.settle_limits(charge, item, rule, attempt)
        self.observe(attempt, charge)
        if attempt.kind == "ok":
            self.charge(attempt.input_tokens, attempt.output_tokens, paid)
            problem = self.check(attempt)
            if problem is None:
                self.succeed(item, attempt, latency)
            else:
                item.waste(attempt.input_tokens, attempt.output_tokens, paid)
                self.retry_or_fail(item, problem, attempt, retryable=False)
        elif attempt.kind == "rate_limited":
            self.summary.rate_limited += 1
            item.rate_limited += 1
            pause = (
                attempt.retry_after if attempt.retry_after is not None else self.pause_on_rate_limit
            )
            self.limiter.pause(pause)
            if item.rate_limited > MAX_RATE_LIMIT_RETRIES:
                self.fail(
                    item, f"rate limited {item.rate_limited} times; last: {attempt.error}", True
                )
            else:
                self._retry_later(item, max(pause, self.backoff(item.rate_limited)))
        elif attempt.kind == "retryable":
            self.retry_or_fail(item, attempt.error or "retryable error", attempt, retryable=True)
        elif attempt.kind in (QUOTA, DAILY_LIMIT):  # the account, not the request: stays pending
            self.stop(
                refusal_error(
                    attempt.kind,
                    attempt.error or "",
                    status=attempt.status,
                    endpoint=self.backend.endpoint,
                    retry_after=attempt.retry_after,
                    consequence="nothing more was sent and no request was recorded as "
                    "answered for it",
                )
            )
        elif attempt.status in AUTH_STATUSES:
            self.stop(
                AuthenticationError(
                    f"{self.backend.endpoint} refused the request ({attempt.error}); nothing more "
                    "was sent and no request was recorded as answered, so a run with the right "
                    "key, model or endpoint sends every request",
                    status=attempt.status,
                    endpoint=self.backend.endpoint,
                )
            )
        else:
            item.attempts += 1
            self.fail(item, attempt.error or "request rejected", False)
        self.progress.tick()

    def fence(self) -> None:
        """Right before a send: stop dispatch unless the shard leases are still certainly ours
        (no I/O: the renewal thread's last confirmed renewal and its age)."""
        if self.leases is not None:
            try:
                self.leases.check()
            except LeaseLostError as exc:
                self.stop(exc)

    async def reserve_budget(self, item: WorkItem, rule: OutputRule) -> Hold | None:
        """Reserve the request's estimated cost; while it does not fit but reservations are
        in flight (here or in parallel steps), wait for them to settle. ``None``: dispatch
        stopped (the budget is reached, or another reason) and nothing is held."""
        budget = self.budget
        while self.stop_error is None:
            held = budget.reserve(budget.cost_of(item.est_input, rule, self.outputs))
            if held is not None:
                return held
            if not budget.outstanding():
                self.stop(budget.exceeded())
                break
            await budget.wait()
        return None

    def settle_limits(self, charge: int, item: WorkItem, rule: OutputRule, attempt: Attempt):
        """Settle the request's rate-limit reservation: an answer to its usage (and the run
        learns from it), a 429 refunded whole, another answered failure to what the provider
        counts up front; a request that got no answer (or no usage) is charged all it held."""
        if attempt.kind == "ok" and (attempt.input_tokens or attempt.output_tokens):
            self.limiter.settle(charge, attempt.input_tokens, attempt.output_tokens)
            self.outputs.observe(attempt.output_tokens / rule.choices)
            if self.budget is not None:
                self.budget.observe(item.est_input, attempt.input_tokens)
        elif attempt.kind == "rate_limited":
            self.limiter.refund(charge)
        elif attempt.status is not None:
            self.limiter.settle(charge, item.est_input, rule.counted)
        else:
            self.limiter.keep(charge)

    def observe(self, attempt: Attempt, charge: int | None = None) -> None:
        """Learn from an answer: it proves the endpoint reachable, its headers carry limits."""
        if attempt.status is not None or attempt.kind == "ok":
            self.last_answer_at = time.monotonic()
        if attempt.headers is not None and not (self.limiter.learned and self.limiter.unlimited):
            # (once the provider said "no limits", its headers have nothing left to teach)
            learned = self.backend.learn(attempt.headers)
            if learned is not None:
                self.limiter.observe(learned, charge)
                if self.warm and self.allowed < self.concurrency and not self.limiter.unlimited:
                    self.allowed = self.concurrency  # limits known now: the pacer holds them
        if not self.warm and (attempt.kind != "retryable" or attempt.headers is not None):
            self.warm_up()

    def check(self, attempt: Attempt) -> str | None:
        return self.acceptance.problem(attempt.finish_reason, attempt.content)

    def retry_or_fail(self, item: WorkItem, reason: str, attempt: Attempt, retryable: bool) -> None:
        item.attempts += 1
        if self.stop_error is not None:
            return  # dispatch stopped: the request stays pending for the next run
        if attempt.transport == "timeout" and not self.timeout_warned:
            self.timeout_warned = True
            log.warning(
                "requests to %s get no answer within request_timeout=%gs although the endpoint "
                "accepted them (the provider may bill them): %s",
                self.backend.endpoint,
                getattr(self.backend, "request_timeout", 0),
                attempt.error,
            )
        if item.attempts <= self.max_retries:
            self._retry_later(item, self.backoff(item.attempts))
            return
        if attempt.transport == "unreachable" and self._unreachable():
            self.stop(
                EndpointUnreachableError(
                    f"could not reach {self.backend.endpoint}: {reason} (after {item.attempts} "
                    "attempts, no answer from the endpoint); nothing was recorded, every request "
                    "stays pending for the next run",
                    endpoint=self.backend.endpoint,
                )
            )
            return
        self.fail(item, f"{reason} (after {item.attempts} attempts)", retryable)

    def _unreachable(self) -> bool:
        return (
            self.last_answer_at is None
            or time.monotonic() - self.last_answer_at > UNREACHABLE_WINDOW
        )

    # ------------------------------------------------------------ persistence
    def appender(self, shard: str) -> Any:
        appender = self.appenders.get(shard)
        if appender is None:
            appender = self.appenders[shard] = self.store.appender(f"responses/{shard}")
        return appender

    def write(self, shard: str, record: dict[str, Any]) -> None:
        """Append one line; a failed write stops dispatch and keeps the line for a retry."""
        try:
            self.appender(shard).append(record)
        except OSError as exc:
            self.stop(self._write_error(exc))

    def _write_error(self, exc: OSError) -> StorageWriteError:
        retryable = is_retryable(exc)
        kept = "in memory while the write is retried" if retryable else "for a spill file"
        return StorageWriteError(
            f"writing to {self.store.uri} failed ({type(exc).__name__}: {exc}); dispatch stopped "
            f"and the responses that arrived are kept {kept}",
            retryable=retryable,
        )

    async def close_appenders(self) -> None:
        """Write what is still buffered, retrying a failing store for ``WRITE_RETRY_SECONDS``
        (not at all when the failure is permanent);
        lines that still cannot be written are spilled to a local file that the next step of
        the run merges (:mod:`curator_flows.spill`), and reported in a
        :class:`StorageWriteError` that says where they are."""
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        delay = 0.2
        while True:
            error: OSError | None = None
            for appender in self.appenders.values():
                try:
                    appender.flush()
                except OSError as exc:
                    error = exc
            if error is None or not is_retryable(error) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2 * delay, 5.0)
        unwritten = {s: a.unwritten_lines() for s, a in self.appenders.items() if a.unwritten}
        if unwritten:
            self.stop_error = self._spill(unwritten, error)
        for appender in self.appenders.values():
            try:
                appender.close()
            except OSError:
                pass

    def _spill(self, unwritten: dict[str, bytes], error: OSError | None) -> StorageWriteError:
        """Keep the paid lines the run directory would not take; the error says where."""
        lost = sum(data.count(b"\n") for data in unwritten.values())
        problem = f"{lost} paid response line(s) could not be written to {self.store.uri} "
        problem += f"({type(error).__name__}: {error})"
        retryable = error is None or is_retryable(error)
        try:
            folder = spill(self.store, self.run_id, unwritten, self.spill_dir)
        except OSError as exc:
            return StorageWriteError(
                f"{problem}, nor kept in a spill file ({type(exc).__name__}: {exc}); those "
                "requests stay pending and the next run sends them again",
                retryable=retryable,
            )
        for shard in unwritten:
            self.appenders[shard].discard()
        first = "free space in the run directory" if retryable else "fix what the error names"
        return StorageWriteError(
            f"{problem}; they were kept in {folder}, which the next step of this run on this "
            f"machine merges before it sends anything ({first} first; a step on another "
            "machine cannot see them and sends those requests again)",
            retryable=retryable,
        )

    def charge(self, input_tokens: int, output_tokens: int, cost: float) -> None:
        """Count a paid attempt the moment it is answered (accepted or not), so the step's
        ledger and the budget see every dollar even when dispatch stops before its line."""
        s = self.summary
        s.input_tokens += input_tokens
        s.output_tokens += output_tokens
        s.cost += cost
        c = self.progress.counters
        c.input_tokens = s.input_tokens
        c.output_tokens = s.output_tokens
        c.cost = s.cost

    def succeed(self, item: WorkItem, attempt: Attempt, latency: float) -> None:
        usage = (attempt.input_tokens, attempt.output_tokens)
        record = item.success_line(
            attempt.content or "",
            attempt.finish_reason,
            usage,
            self.prices.cost(*usage),
            latency,
            item.attempts + 1,
            {"completion": attempt.raw} if self.keep_completions else None,
        )
        if self.ledger is not None:
            record["step"] = self.ledger.id
        self.write(item.shard, record)
        self.summary.succeeded += 1
        self.summary.latency_total += latency
        self.progress.counters.done += 1

    def fail(self, item: WorkItem, reason: str, retryable: bool) -> None:
        record = item.failure_line(reason)
        record["retryable"] = retryable
        if self.ledger is not None:
            record["step"] = self.ledger.id
        self.write(item.shard, record)
        self.summary.failed += 1
        self.progress.counters.failed += 1


def run_sync(runner: OnlineRunner, pending: Iterator[WorkItem]) -> OnlineSummary:
    """Run ``runner`` to completion from synchronous code (a fresh event loop, or a worker
    thread when a loop is already running, e.g. inside Jupyter or an async Prefect task)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(runner.run(pending))
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, runner.run(pending)).result()


def run_online(
    run: RunRef,
    shard: str | list[str] | None = None,
    *,
    llm: LLM | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
    parallel_shards: int = 1,
) -> ShardResult:
    """Send the pending requests of ``shard`` (a name, a list, or ``None`` for all), append
    their responses and this step's ledger; see :func:`curator_flows.steps.run_online`."""
    if not isinstance(parallel_shards, int) or parallel_shards < 1:
        raise ConfigError(f"parallel_shards must be a positive integer, got {parallel_shards!r}")
    credentials = Credentials.coerce(credentials)
    store, manifest = open_run(run, credentials.storage_options, mode="online")
    llm = llm_for(manifest, llm)
    params = llm.config.params
    names = shard_names(manifest, shard)
    base = {"run_uri": store.uri, "run_id": manifest["run_id"], "shards": names}
    share = 1.0 / parallel_shards
    concurrency = max(1, math.ceil((params.max_concurrent_requests or DEFAULT_CONCURRENCY) * share))
    backend = build_online_backend(llm, credentials, concurrency)
    prices = resolve_prices(llm.model_name, params.in_mtok_cost, params.out_mtok_cost)
    budget = Budget.for_run(store, manifest, params.max_cost, prices) if params.max_cost else None
    with ShardLeases(store, names, params.lease_seconds) as leases:
        done = done_ids(store, names)  # read under the lease: nobody else is appending now
        pending = count_pending(shard_sizes(manifest), done)
        if pending == 0:
            return make(ShardResult, **base)
        # with a budget, parallel steps read each other's spending from the ledgers: write often
        ledger = StepLedger(
            store, "run_online", names, flush_seconds=0.5 if budget is not None else 2.0
        )
        ledger.tag_lines()
        if budget is not None:
            budget.exclude(ledger.rel, ledger.id)
        runner = OnlineRunner(
            store,
            backend,
            RateLimiter(
                params.max_requests_per_minute,
                params.max_tokens_per_minute,
                params.max_input_tokens_per_minute,
                params.max_output_tokens_per_minute,
                share=share,
            ),
            concurrency=min(concurrency, pending),
            concurrency_is_explicit=params.max_concurrent_requests is not None,
            max_retries=params.max_retries,
            pause_on_rate_limit=params.seconds_to_pause_on_rate_limit,
            acceptance=Acceptance(llm),
            prices=prices,
            output_rule=output_rule(llm),
            output_prior=output_estimate(llm),
            progress=Progress(
                f"{llm.model_name} {manifest['run_id']}", pending, params.progress, shards=names
            ),
            ledger=ledger,
            budget=budget,
            leases=leases,
            keep_completions=bool(llm.return_completions_object),
            run_id=manifest["run_id"],
            spill_dir=params.spill_dir,
        )
        summary = run_sync(runner, pending_items(store, names, done))
    return make(ShardResult, **base, pending_before=pending, **summary.to_dict())
