"""The online runner: sends a run's pending requests under its limits and appends each finished
request to its shard's response file.

Invariants:
- pending = requests of the shard with no successful response line; nothing else is sent;
- a fixed pool of ``max_concurrent_requests`` workers (no task per request) pulls from one
  queue: ready retries first, then first attempts, so retries interleave with fresh work;
- every request ends with exactly one line: success (content, usage, cost, timings) or final
  failure (reason), written the moment it is known;
- 429s pause all dispatch and are not counted against ``max_retries``; 5xx, timeouts, dropped
  connections, malformed bodies, invalid finish reasons and schema-invalid content are; other
  4xx fail at once.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Attempt, OnlineBackend
from .cost import Prices
from .progress import Progress
from .ratelimit import RateLimiter
from .store import RunStore
from .tokens import estimate_prompt_tokens

MAX_RATE_LIMIT_RETRIES = 100
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
WARMUP_IN_FLIGHT = 1  # requests in flight before the first response tells us the limits
#: in-flight cap when neither the user nor the provider's headers say anything about limits
UNKNOWN_LIMITS_CONCURRENCY = 64


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

    def success_line(
        self,
        content: str,
        finish_reason: str | None,
        usage: tuple[int, int],
        cost: float,
        latency: float,
        attempts: int,
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
        return record

    def failure_line(self, reason: str) -> dict[str, Any]:
        """The response line of a final failure, with what its paid attempts cost."""
        record = {"id": self.id, "error": reason, "attempts": self.attempts, "ts": time.time()}
        if self.wasted_input or self.wasted_output:
            record["wasted"] = [self.wasted_input, self.wasted_output]
            record["cost"] = self.wasted_cost
        return record


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


def success_ids(store: RunStore, shard: str) -> set[str]:
    return {
        rec["id"] for rec in store.iter_records(f"responses/{shard}.*jsonl") if "content" in rec
    }


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
                yield WorkItem(shard, req["id"], messages, estimate_prompt_tokens(messages))


def count_pending(sizes: dict[str, int], done: dict[str, set[str]]) -> int:
    return sum(max(0, sizes[shard] - len(ids)) for shard, ids in done.items())


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
        invalid_finish_reasons: tuple[str, ...],
        validate: Callable[[str], str | None] | None,
        prices: Prices,
        output_estimate: int,
        progress: Progress,
    ) -> None:
        self.store = store
        self.backend = backend
        self.limiter = limiter
        self.concurrency = concurrency
        self.allowed = concurrency
        self.concurrency_is_explicit = concurrency_is_explicit
        self.max_retries = max_retries
        self.pause_on_rate_limit = pause_on_rate_limit
        self.invalid_finish_reasons = frozenset(invalid_finish_reasons)
        self.validate = validate
        self.prices = prices
        self.output_estimate = output_estimate
        self.progress = progress
        self.summary = OnlineSummary()
        self.appenders: dict[str, Any] = {}
        self.retries: list[tuple[float, int, WorkItem]] = []
        self.retry_seq = 0
        self.fresh: Iterator[WorkItem] | None = None
        self.active = 0
        self.in_flight = 0
        self.warm = False
        self.warm_event: asyncio.Event | None = None

    async def run(self, pending: Iterator[WorkItem]) -> OnlineSummary:
        self.fresh = pending
        self.warm_event = asyncio.Event()
        started = time.monotonic()
        await self.backend.open()
        try:
            workers = [asyncio.create_task(self.worker(i)) for i in range(self.concurrency)]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for task in workers:
                    task.cancel()
                raise
        finally:
            await self.backend.close()
            for appender in self.appenders.values():
                appender.close()
            self.summary.elapsed = time.monotonic() - started
            self.summary.limits = self.limiter.limits()
            self.progress.close()
        return self.summary

    # ------------------------------------------------------------- scheduling
    def _take(self) -> WorkItem | None | bool:
        """A ready item; ``False`` when there is nothing ready yet; ``None`` when all is done."""
        if self.retries and self.retries[0][0] <= time.monotonic():
            return heapq.heappop(self.retries)[2]
        if self.fresh is not None:
            item = next(self.fresh, None)
            if item is not None:
                return item
            self.fresh = None
        if not self.retries and self.active == 0:
            return None
        return False

    async def next_item(self, worker: int) -> WorkItem | None:
        while True:
            if not self.warm and self.active >= WARMUP_IN_FLIGHT:
                await self.warm_event.wait()
                continue
            if worker >= self.allowed:
                return None  # this worker is beyond the in-flight cap: retire it
            item = self._take()
            if item is None:
                return None
            if item is not False:
                self.active += 1
                return item
            delay = self.retries[0][0] - time.monotonic() if self.retries else 0.02
            await asyncio.sleep(min(max(delay, 0.001), 0.05))

    def warm_up(self) -> None:
        """The first response has arrived: open dispatch up to the concurrency cap, which is
        conservative when nobody (user or provider headers) said anything about limits."""
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
        await self.limiter.acquire(item.est_input, self.output_estimate)
        self.in_flight += 1
        counters.in_flight = self.in_flight
        if self.in_flight > self.summary.max_in_flight:
            self.summary.max_in_flight = self.in_flight
        self.summary.sent += 1
        started = time.perf_counter()
        try:
            attempt = await self.backend.complete(item.messages)
        finally:
            self.in_flight -= 1
            counters.in_flight = self.in_flight
        latency = time.perf_counter() - started
        if not self.warm:
            if attempt.headers is not None:
                learned = self.backend.learn(attempt.headers)
                if learned is not None:
                    self.limiter.learn(learned)
            if attempt.kind != "retryable" or attempt.headers is not None:
                self.warm_up()
        if attempt.kind == "ok":
            self.limiter.settle(
                item.est_input, self.output_estimate, attempt.input_tokens, attempt.output_tokens
            )
            problem = self.check(attempt)
            if problem is None:
                self.succeed(item, attempt, latency)
            else:
                item.wasted_input += attempt.input_tokens
                item.wasted_output += attempt.output_tokens
                item.wasted_cost += self.prices.cost(attempt.input_tokens, attempt.output_tokens)
                self.retry_or_fail(item, problem)
        elif attempt.kind == "rate_limited":
            self.summary.rate_limited += 1
            item.rate_limited += 1
            pause = (
                attempt.retry_after if attempt.retry_after is not None else self.pause_on_rate_limit
            )
            self.limiter.pause(pause)
            if item.rate_limited > MAX_RATE_LIMIT_RETRIES:
                self.fail(item, f"rate limited {item.rate_limited} times; last: {attempt.error}")
            else:
                self._retry_later(item, max(pause, self.backoff(item.rate_limited)))
        elif attempt.kind == "retryable":
            self.retry_or_fail(item, attempt.error or "retryable error")
        else:
            item.attempts += 1
            self.fail(item, attempt.error or "request rejected")
        self.progress.tick()

    def check(self, attempt: Attempt) -> str | None:
        if attempt.finish_reason in self.invalid_finish_reasons:
            return f"invalid finish_reason {attempt.finish_reason!r}"
        if self.validate is not None:
            return self.validate(attempt.content or "")
        return None

    def retry_or_fail(self, item: WorkItem, reason: str) -> None:
        item.attempts += 1
        if item.attempts > self.max_retries:
            self.fail(item, f"{reason} (after {item.attempts} attempts)")
        else:
            self._retry_later(item, self.backoff(item.attempts))

    # ------------------------------------------------------------ persistence
    def appender(self, shard: str) -> Any:
        appender = self.appenders.get(shard)
        if appender is None:
            appender = self.appenders[shard] = self.store.appender(f"responses/{shard}")
        return appender

    def succeed(self, item: WorkItem, attempt: Attempt, latency: float) -> None:
        usage = (attempt.input_tokens, attempt.output_tokens)
        record = item.success_line(
            attempt.content or "",
            attempt.finish_reason,
            usage,
            self.prices.cost(*usage),
            latency,
            item.attempts + 1,
        )
        cost = record["cost"]
        self.appender(item.shard).append(record)
        s = self.summary
        s.succeeded += 1
        s.input_tokens += attempt.input_tokens + item.wasted_input
        s.output_tokens += attempt.output_tokens + item.wasted_output
        s.cost += cost
        s.latency_total += latency
        c = self.progress.counters
        c.done += 1
        c.input_tokens = s.input_tokens
        c.output_tokens = s.output_tokens
        c.cost = s.cost

    def fail(self, item: WorkItem, reason: str) -> None:
        record = item.failure_line(reason)
        self.appender(item.shard).append(record)
        self.summary.failed += 1
        self.summary.cost += item.wasted_cost
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
