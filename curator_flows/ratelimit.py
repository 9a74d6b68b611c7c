"""Client-side pacing: RPM, TPM (combined, or input/output separately) and 429 pauses.

Invariants:
- each limit is a token bucket refilled continuously at ``limit / 60`` per second with one
  second of burst, so the client never sends faster than the limit over any window ≥ 1 s;
- waiters are served first come, first served (one lock), so retries and first attempts interleave;
- a request costs its estimated input tokens plus its output budget; once usage is known the
  difference is refunded (or charged), so the budget tracks real usage;
- a 429 pauses *all* dispatch until the pause ends; limits learned from headers only fill in
  limits the user did not set;
- with ``share < 1`` (one of several shards running in parallel against the same provider) every
  limit, configured or learned, is that share of the provider's limit, and each answer's
  remaining-requests/tokens headers cap what this runner may still burst, so N parallel runners
  together hold the aggregate limit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .backends.base import LearnedLimits
from .errors import ConfigError

_EFFECTIVELY_UNLIMITED = 100_000_000


@dataclass
class Bucket:
    rate: float  # units per second
    capacity: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, limit: int, now: float) -> Bucket:
        rate = limit / 60.0
        capacity = max(rate, 1.0)
        return cls(rate, capacity, capacity, now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` (capped at capacity) is available; 0 if it is now."""
        need = min(cost, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.rate


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

    async def acquire(self, input_tokens: int, output_tokens: int) -> None:
        """Wait until one request of this size may be sent, then charge it."""
        if self.unlimited and self.paused_until == 0.0:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                wait = self.paused_until - now
                if wait <= 0:
                    wait = 0.0
                    for bucket, cost in self._charges(input_tokens, output_tokens):
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(cost))
                if wait <= 0:
                    for bucket, cost in self._charges(input_tokens, output_tokens):
                        bucket.level -= cost
                    return
                await asyncio.sleep(wait)

    def _charges(self, input_tokens: int, output_tokens: int):
        if self.requests:
            yield self.requests, 1
        if self.tokens:
            yield self.tokens, input_tokens + output_tokens
        if self.input_tokens:
            yield self.input_tokens, input_tokens
        if self.output_tokens:
            yield self.output_tokens, output_tokens

    def settle(self, reserved_in: int, reserved_out: int, used_in: int, used_out: int) -> None:
        """Refund (or charge) the difference between the estimate and reported usage."""
        if self.tokens:
            self.tokens.level += (reserved_in + reserved_out) - (used_in + used_out)
        if self.input_tokens:
            self.input_tokens.level += reserved_in - used_in
        if self.output_tokens:
            self.output_tokens.level += reserved_out - used_out

    def pause(self, seconds: float) -> None:
        """Stop all dispatch for ``seconds`` (extends, never shortens, a running pause)."""
        until = time.monotonic() + seconds
        if until > self.paused_until:
            self.paused_until = until
            for bucket in (self.requests, self.tokens, self.input_tokens, self.output_tokens):
                if bucket:  # restart from empty after a 429: the server's window is spent
                    bucket.level = min(bucket.level, 0.0)
                    bucket.updated = until

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
        # Buckets learned mid-run start full; requests already sent were within the server's
        # own bucket, so the server's remaining count bounds the burst.
        self.cap_burst(limits)

    def observe(self, limits: LearnedLimits) -> None:
        """Every answer's headers: adopt limits the first time, then cap the burst by what the
        provider says remains (this runner's share of it)."""
        if not self.learned:
            self.learn(limits)
        else:
            self.cap_burst(limits)

    def cap_burst(self, limits: LearnedLimits) -> None:
        now = time.monotonic()
        for bucket, remaining in (
            (self.requests, limits.remaining_requests),
            (self.tokens, limits.remaining_tokens),
        ):
            if bucket is not None and remaining is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, float(remaining) * self.share)
