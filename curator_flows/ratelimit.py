"""Client-side pacing: RPM, TPM (combined, or input/output separately) and 429 pauses.

The limiter mirrors the provider's token buckets (what each provider counts, from its
documentation: :mod:`curator_flows.testing.simulator.ratelimit`): a request is charged its
reservation when it is sent and settled to its usage when it is answered.

Invariants:
- each limit is a token bucket refilled continuously at ``limit / 60`` per second up to its
  capacity: one second of the limit until the provider's headers show it holds more
  (``remaining`` plus what refills by its ``reset``, less ``ADMISSION_SLACK_SECONDS`` of refill:
  a full provider bucket refills nothing while a request is on its way), never more than the
  limit;
- a bucket's ``level`` mirrors the provider's: it is charged what the provider counts when it
  admits a request (the input estimate, and ``max_tokens`` where the provider counts it up
  front: :class:`~curator_flows.backends.factory.OutputRule`) and settled to the usage when
  the request is answered, exactly as the provider adjusts; what the request is expected to use
  beyond that (the output the run has observed, when the provider counts none up front) is held
  apart as ``pending`` until the answer. A request goes out when ``level - pending`` holds its
  whole reservation; one whose counted part exceeds the capacity only into a full bucket that
  the provider's last ``reset`` says is full too;
- **settling loses nothing**: the provider's adjustment is added to the level uncapped
  (refilling only stops adding at capacity, it never lowers a level), so a refund that arrives
  while a bucket is near capacity lifts it above capacity until it is spent, as the provider's
  own adjustment does, and the expected part never enters the level (it cannot be lost at
  capacity either). A request refused with 429 gets back all it was charged (the provider did
  not count it); an answered failure keeps what the provider counts up front; a request that
  got no answer is charged its expected part too (it may have been counted);
- the client stays below the provider: it counts what the provider counts, no later, settles no
  earlier, and its capacity is no larger, so its level never exceeds the provider's (refilling
  and settling are monotone, capped alike); each answer's ``remaining`` header lowers a level
  above it and, for a runner alone (``share == 1``) with nothing else in flight, sets the level
  to it (the provider's burst, learned at the first answer);
- waiters are served first come, first served (one lock) and wake when a settlement may let
  them through;
- a 429 pauses *all* dispatch until the pause ends; limits learned from headers only fill in
  limits the user did not set;
- with ``share < 1`` (one of several shards running in parallel against the same provider)
  every limit, capacity and remaining count is that share of the provider's, so N parallel
  runners together hold the aggregate limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .backends.base import LearnedLimits
from .errors import ConfigError

_EFFECTIVELY_UNLIMITED = 100_000_000
#: a request reaches the provider a little after it is charged here; while the provider's
#: bucket is full it refills nothing meanwhile, so what this runner learns of the provider's
#: burst is taken this many seconds of refill short
ADMISSION_SLACK_SECONDS = 0.25
#: how long charges are remembered for raising a level to what an answer's header says
_CHARGE_MEMORY_SECONDS = 600.0


@dataclass
class Bucket:
    rate: float  # units per second
    capacity: float
    level: float
    updated: float
    #: the largest capacity the bucket may learn: the per-minute limit
    limit: float
    #: when the provider's own bucket is full again (its last ``reset``, plus what was charged
    #: since); a reservation above capacity waits for it
    full_at: float = 0.0
    #: what requests in flight are expected to use beyond what the provider counted up front
    pending: float = 0.0

    @classmethod
    def per_minute(cls, limit: int, now: float) -> Bucket:
        rate = limit / 60.0
        capacity = max(rate, 1.0)
        return cls(rate, capacity, capacity, now, float(limit), now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            if self.level < self.capacity:
                self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, counted: float, expected: float, now: float) -> float:
        """Seconds until a request counted ``counted`` by the provider and expected to use
        ``expected`` more may go; 0 if it may now (call :meth:`refill` first). A counted part
        above capacity that the level does not hold needs a full bucket, here and at the
        provider."""
        available = self.level - self.pending
        cost = counted + expected
        if available >= cost:
            return 0.0
        need = min(cost, self.capacity) - available
        wait = 0.0 if need <= 0 else need / self.rate
        if counted > self.capacity:
            wait = max(wait, self.full_at - now)
        return wait

    def take(self, counted: float, expected: float, now: float) -> None:
        self.level -= counted
        self.pending += expected
        self.full_at = max(self.full_at, now) + counted / self.rate

    def adjust(self, amount: float, expected: float = 0.0) -> None:
        """The provider's adjustment of a request (``amount > 0``: gives back, ``< 0``:
        takes more), never capped; ``expected``: its pending part, released."""
        self.level += amount
        self.pending = max(0.0, self.pending - expected)

    def follow(
        self,
        remaining: float,
        charged_since: float,
        full_in: float | None,
        now: float,
        rounding: float = 0.0,
    ):
        """A provider's ``remaining`` (this runner's share) and, when it says, the seconds
        until its bucket is full again (``full_in``, an upper bound): a level above
        ``remaining`` is lowered to it (one that may not be, when the provider rounds its
        count down by up to ``rounding``, is left alone); when this runner charged nothing the
        provider may not have counted yet (``charged_since``: no other request in flight, none
        sent since), the level is what the provider holds, above capacity if it holds that
        much."""
        self.refill(now)
        if full_in is not None:
            self.full_at = now + full_in + charged_since / self.rate
        self.lower(remaining, rounding)
        if charged_since == 0 and remaining > 0:  # (0 may hide an overdrawn bucket)
            self.level = max(self.level, remaining - ADMISSION_SLACK_SECONDS * self.rate)

    def lower(self, remaining: float, rounding: float = 0.0) -> None:
        """A level certainly above what the provider holds (more than ``remaining`` plus its
        ``rounding``) is lowered to ``remaining``."""
        if self.level > remaining + rounding:
            self.level = remaining

    def grow(self, remaining: float, full_in: float | None, resolution: float) -> None:
        """Learn the capacity from a provider's bucket that is neither full nor overdrawn (a
        remaining count of 0 may hide a negative level): what remains plus what refills it
        (less the uncertainty of ``full_in``), never more than the limit."""
        if full_in is not None and full_in > resolution and remaining > 0:
            shown = remaining + (full_in - resolution - ADMISSION_SLACK_SECONDS) * self.rate
            self.capacity = max(self.capacity, min(shown, self.limit))


@dataclass(frozen=True)
class Reservation:
    """What one request holds in the limiter: input and output tokens, of which the provider
    counts ``counted_output`` when it admits the request (default: all of them)."""

    input_tokens: int
    output_tokens: int
    counted_output: int | None = None

    @property
    def counted(self) -> int:
        """Output tokens the provider counts up front."""
        if self.counted_output is None:
            return self.output_tokens
        return min(self.counted_output, self.output_tokens)

    @property
    def expected(self) -> int:
        """Output tokens beyond those, expected to be used."""
        return self.output_tokens - self.counted


class RateLimiter:
    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        input_tpm: int | None = None,
        output_tpm: int | None = None,
        share: float = 1.0,
    ) -> None:
        if not 0 < share <= 1:
            raise ConfigError(f"share must be in (0, 1], got {share}")
        self.share = share
        rpm, tpm, input_tpm, output_tpm = (self._part(v) for v in (rpm, tpm, input_tpm, output_tpm))
        now = time.monotonic()
        self.user_set = {
            "rpm": rpm is not None,
            "tpm": tpm is not None or input_tpm is not None or output_tpm is not None,
        }
        self.requests = Bucket.per_minute(rpm, now) if rpm else None
        self.tokens = Bucket.per_minute(tpm, now) if tpm else None
        self.input_tokens = Bucket.per_minute(input_tpm, now) if input_tpm else None
        self.output_tokens = Bucket.per_minute(output_tpm, now) if output_tpm else None
        self.paused_until = 0.0
        self.lock = asyncio.Lock()
        self.learned = False
        self.settled = asyncio.Event()
        #: (time, sequence, reservation) of recent charges, and the unanswered ones by sequence:
        #: what the provider may not have counted when an answer's headers were written
        self.charges: deque[tuple[float, int, Reservation]] = deque()
        self.outstanding: dict[int, Reservation] = {}
        self.sequence = 0

    def _part(self, limit: int | None) -> int | None:
        return None if limit is None else max(1, int(limit * self.share))

    @property
    def unlimited(self) -> bool:
        return not (self.requests or self.tokens or self.input_tokens or self.output_tokens)

    def limits(self) -> dict[str, int | None]:
        def per_minute(bucket: Bucket | None) -> int | None:
            return round(bucket.rate * 60) if bucket else None

        return {
            "max_requests_per_minute": per_minute(self.requests),
            "max_tokens_per_minute": per_minute(self.tokens),
            "max_input_tokens_per_minute": per_minute(self.input_tokens),
            "max_output_tokens_per_minute": per_minute(self.output_tokens),
        }

    async def acquire(self, reservation: Reservation | Callable[[], Reservation]) -> int:
        """Wait until a request holding ``reservation`` (or what the callable says it holds
        when its turn comes: estimates move while requests queue) may be sent, then charge it;
        returns the charge's number, for :meth:`settle` (or :meth:`refund`, :meth:`keep`) and
        :meth:`observe` once the request ends."""
        current = reservation if callable(reservation) else (lambda: reservation)
        if self.unlimited and self.paused_until == 0.0:
            return self._remember(current(), time.monotonic())
        async with self.lock:
            while True:
                now = time.monotonic()
                held = current()
                wait = self.paused_until - now
                if wait <= 0:
                    wait = 0.0
                    for bucket, counted, expected in self._charges(held):
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(counted, expected, now))
                if wait <= 0:
                    for bucket, counted, expected in self._charges(held):
                        bucket.take(counted, expected, now)
                    return self._remember(held, now)
                self.settled.clear()
                try:  # a settlement may let this request through before the wait ends
                    await asyncio.wait_for(self.settled.wait(), wait)
                except TimeoutError:
                    pass

    def _remember(self, reservation: Reservation, now: float) -> int:
        self.sequence += 1
        self.outstanding[self.sequence] = reservation
        self.charges.append((now, self.sequence, reservation))
        while self.charges and self.charges[0][0] < now - _CHARGE_MEMORY_SECONDS:
            self.charges.popleft()
        return self.sequence

    def _charges(self, reservation: Reservation):
        """``(bucket, counted up front, expected beyond)`` of each bucket a request uses."""
        counted_out, expected = reservation.counted, reservation.expected
        if self.requests:
            yield self.requests, 1, 0
        if self.tokens:
            yield self.tokens, reservation.input_tokens + counted_out, expected
        if self.input_tokens:
            yield self.input_tokens, reservation.input_tokens, 0
        if self.output_tokens:
            yield self.output_tokens, counted_out, expected

    def settle(self, charge: int, used_in: int, used_out: int) -> None:
        """Charge ``charge``'s request was answered having used ``used_in`` / ``used_out``:
        replace what the provider counted by that (a refund, or a further charge) and release
        its expected part."""
        reservation = self.outstanding.pop(charge, None)
        if reservation is None:
            return
        counted_in, counted_out = reservation.input_tokens, reservation.counted
        expected = reservation.expected
        if self.tokens:
            self.tokens.adjust(counted_in + counted_out - used_in - used_out, expected)
        if self.input_tokens:
            self.input_tokens.adjust(counted_in - used_in)
        if self.output_tokens:
            self.output_tokens.adjust(counted_out - used_out, expected)
        self.settled.set()

    def refund(self, charge: int) -> None:
        """A request the provider refused (429): nothing of it was counted."""
        if charge in self.outstanding and self.requests:
            self.requests.adjust(1)
        self.settle(charge, 0, 0)

    def keep(self, charge: int) -> None:
        """A request that got no answer: it may have been counted, and may have used what it
        was expected to use."""
        reservation = self.outstanding.pop(charge, None)
        if reservation is not None:
            expected = reservation.expected
            for bucket in (self.tokens, self.output_tokens):
                if bucket is not None:
                    bucket.adjust(-expected, expected)

    def pause(self, seconds: float) -> None:
        """Stop all dispatch for ``seconds`` (extends, never shortens, a running pause)."""
        until = time.monotonic() + seconds
        if until > self.paused_until:
            self.paused_until = until
            for bucket in (self.requests, self.tokens, self.input_tokens, self.output_tokens):
                if bucket:  # restart from empty after a 429: the server's window is spent
                    bucket.level = min(bucket.level, 0.0)
                    bucket.updated = until
                    bucket.full_at = max(bucket.full_at, until + bucket.capacity / bucket.rate)

    def learn(self, limits: LearnedLimits) -> None:
        """Adopt advertised limits the user did not set (first advertisement wins). Limits of
        100M+ a minute are treated as no limit."""
        if self.learned:
            return
        self.learned = True
        now = time.monotonic()
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "input_tokens_per_minute",
            "output_tokens_per_minute",
        ):
            if (getattr(limits, name) or 0) >= _EFFECTIVELY_UNLIMITED:
                setattr(limits, name, None)
        part = self._part
        if not self.user_set["rpm"] and limits.requests_per_minute:
            self.requests = Bucket.per_minute(part(limits.requests_per_minute), now)
        if not self.user_set["tpm"]:
            if limits.tokens_per_minute:
                self.tokens = Bucket.per_minute(part(limits.tokens_per_minute), now)
            if limits.input_tokens_per_minute:
                self.input_tokens = Bucket.per_minute(part(limits.input_tokens_per_minute), now)
            if limits.output_tokens_per_minute:
                self.output_tokens = Bucket.per_minute(part(limits.output_tokens_per_minute), now)

    def observe(self, limits: LearnedLimits, charge: int | None = None) -> None:
        """Every answer's headers: adopt limits the first time, then follow what the provider
        says remains (this runner's share of it). ``charge``: the answered request's (from
        :meth:`acquire`); without it a header only lowers levels."""
        if not self.learned:
            self.learn(limits)
        now = time.monotonic()
        since = self._charged_since(charge)
        share = self.share
        resolution = limits.reset_resolution
        rounding = limits.tokens_rounding * share
        for bucket, remaining, full_in, charged, rounded in (
            (self.requests, limits.remaining_requests, limits.reset_seconds, since[0], 0.0),
            (
                self.tokens,
                limits.remaining_tokens,
                limits.reset_tokens,
                since[1] + since[2],
                rounding,
            ),
            (
                self.input_tokens,
                limits.remaining_input_tokens,
                limits.reset_input_tokens,
                since[1],
                rounding,
            ),
            (
                self.output_tokens,
                limits.remaining_output_tokens,
                limits.reset_output_tokens,
                since[2],
                rounding,
            ),
        ):
            if bucket is None or remaining is None:
                continue
            bucket.grow(float(remaining) * share, full_in, resolution)
            if charge is None or share < 1:  # other runners' charges are unknown: only lower
                bucket.refill(now)
                bucket.lower(float(remaining) * share, rounded)
                continue
            bucket.follow(float(remaining) * share, charged, full_in, now, rounded)

    def _charged_since(self, charge: int | None) -> tuple[float, float, float]:
        """Requests, input and output tokens the provider may not have counted when charge
        ``charge``'s answer was written: every other unanswered request, and every request
        sent after it."""
        requests = tokens_in = tokens_out = 0.0
        if charge is None:
            return requests, tokens_in, tokens_out
        for seq, reservation in self.outstanding.items():
            if seq != charge:
                requests += 1
                tokens_in += reservation.input_tokens
                tokens_out += reservation.output_tokens
        for _, seq, reservation in reversed(self.charges):
            if seq <= charge:
                break
            if seq not in self.outstanding:
                requests += 1
                tokens_in += reservation.input_tokens
                tokens_out += reservation.output_tokens
        return requests, tokens_in, tokens_out
