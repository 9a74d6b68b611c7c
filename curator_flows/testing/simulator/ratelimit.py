"""Token-bucket rate limits, what each provider counts against them, and the providers'
rate-limit headers.

What is counted (from the providers' rate-limit documentation):
- **OpenAI** counts a request up front as the tokens estimated from its characters plus
  ``n * max_tokens`` (``max_completion_tokens``) when the request sets one ("your rate limit is
  calculated as the maximum of max_tokens and the estimated number of tokens based on the
  character count of your request"; OpenAI's own parallel-processing example counts prompt +
  ``n * max_tokens``). The documentation does not say how the count is settled; the simulator
  adjusts it to the reported usage (``prompt_tokens + completion_tokens``) when the answer is
  complete, so over a run the limit holds the tokens actually processed. An unsuccessful request
  keeps its up-front count ("unsuccessful requests contribute to your per-minute limit").
- **Anthropic** estimates ITPM at the start of a request and OTPM "based on ``max_tokens`` at the
  beginning of each request", and adjusts both "at the end of the request to reflect the actual
  number of output tokens used"; ``input_tokens`` and ``cache_creation_input_tokens`` count
  towards ITPM, ``cache_read_input_tokens`` do not (on most models). Its ``*-tokens-remaining``
  headers are "rounded to the nearest thousand".

Invariants:
- A bucket with a per-minute limit L refills continuously at L/60 per second up to a capacity of
  ``max(1, L/60 * burst_seconds)``; it starts full. Refilling never lowers a level: an
  adjustment that gives back more than was taken since may lift a level above capacity, and the
  excess stays until it is spent (a request counts what it used, never more).
- `LimitSet.acquire` is all-or-nothing: either every bucket is charged, or none is and the
  caller gets the wait (> 0) until the most constrained bucket could admit the request.
- A cost larger than a bucket's capacity (but within the per-minute limit) is admitted when the
  bucket is full and drives it negative; a cost above the per-minute limit is never admitted
  (`too_large`).
- `LimitSet.settle` replaces what a request was charged up front by what it used, in every
  bucket (a refund or a further charge); it is applied once per admitted request.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Mapping

from .config import UNLIMITED


class TokenBucket:
    """A continuously refilled bucket for one limit (requests or tokens per minute)."""

    __slots__ = ("limit", "rate", "capacity", "level", "stamp")

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            if self.level < self.capacity:
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` can be taken (0 if now); call `refill` first."""
        needed = min(amount, self.capacity)
        if self.level >= needed:
            return 0.0
        return (needed - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def adjust(self, amount: float) -> None:
        """Give back (``amount > 0``) or take more (``< 0``) of what a request was charged."""
        self.level += amount

    @property
    def remaining(self) -> int:
        return max(0, int(self.level))

    @property
    def used(self) -> int:
        """What the bucket's window holds now (capacity minus level, never negative)."""
        return max(0, math.ceil(self.capacity - self.level))

    @property
    def reset_seconds(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)


class RateLimited(Exception):
    """Raised by `LimitSet.acquire` when a request is over a limit."""

    def __init__(
        self, bucket: str, wait: float, limit: float, cost: float, too_large: bool, used: int = 0
    ):
        super().__init__(bucket)
        self.bucket = bucket
        self.wait = wait
        self.limit = limit
        self.cost = cost
        self.too_large = too_large
        self.used = used


class LimitSet:
    """Named buckets (e.g. ``requests``, ``tokens``); a ``None`` limit is unlimited."""

    def __init__(
        self, limits: Mapping[str, float | None], burst_seconds: float, clock=time.monotonic
    ) -> None:
        self.clock = clock
        now = clock()
        self.buckets: dict[str, TokenBucket] = {
            name: TokenBucket(limit, burst_seconds, now)
            for name, limit in limits.items()
            if limit is not None
        }
        self.active = bool(self.buckets)

    def acquire(self, costs: Mapping[str, float]) -> float:
        """Charge `costs` to the buckets or raise `RateLimited`; returns the current clock."""
        now = self.clock()
        worst: RateLimited | None = None
        for name, cost in costs.items():
            bucket = self.buckets.get(name)
            if bucket is None:
                continue
            bucket.refill(now)
            if cost > bucket.limit:
                raise RateLimited(name, 60.0, bucket.limit, cost, too_large=True)
            wait = bucket.wait_for(cost)
            if wait > 0 and (worst is None or wait > worst.wait):
                worst = RateLimited(name, wait, bucket.limit, cost, False, bucket.used)
        if worst is not None:
            raise worst
        for name, cost in costs.items():
            bucket = self.buckets.get(name)
            if bucket is not None:
                bucket.take(cost)
        return now

    def settle(self, charged: Mapping[str, float], used: Mapping[str, float]) -> None:
        """Replace what a request was charged up front (`charged`, as given to `acquire`) by
        what it used, bucket by bucket (a bucket missing from `used` keeps its charge)."""
        now = self.clock()
        for name, cost in charged.items():
            bucket = self.buckets.get(name)
            if bucket is not None and name in used:
                bucket.refill(now)
                bucket.adjust(cost - used[name])

    def get(self, name: str) -> TokenBucket | None:
        return self.buckets.get(name)


def go_duration(seconds: float) -> str:
    """Format a duration like OpenAI's reset headers (Go style): ``120ms``, ``1s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    total_ms = math.ceil(seconds * 1000)
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    sec_text = f"{secs}.{ms:03d}".rstrip("0").rstrip(".") if ms else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def rfc3339(epoch: float) -> str:
    """UTC timestamp in RFC 3339 with a ``Z`` suffix (second precision)."""
    return _dt.datetime.fromtimestamp(int(epoch), tz=_dt.UTC).replace(tzinfo=None).isoformat() + "Z"


_UNLIMITED_TEXT = str(UNLIMITED)
_UNLIMITED_REMAINING = str(UNLIMITED - 1)

#: Headers advertised by an unlimited OpenAI endpoint.
OPENAI_UNLIMITED_HEADERS: dict[str, str] = {
    "x-ratelimit-limit-requests": _UNLIMITED_TEXT,
    "x-ratelimit-remaining-requests": _UNLIMITED_REMAINING,
    "x-ratelimit-reset-requests": "0s",
    "x-ratelimit-limit-tokens": _UNLIMITED_TEXT,
    "x-ratelimit-remaining-tokens": _UNLIMITED_REMAINING,
    "x-ratelimit-reset-tokens": "0s",
}


def openai_headers(limits: LimitSet) -> dict[str, str]:
    """OpenAI ``x-ratelimit-*`` headers for the current state of `limits`."""
    if not limits.active:
        return dict(OPENAI_UNLIMITED_HEADERS)
    now = limits.clock()
    headers: dict[str, str] = {}
    for name in ("requests", "tokens"):
        bucket = limits.get(name)
        if bucket is None:
            headers[f"x-ratelimit-limit-{name}"] = _UNLIMITED_TEXT
            headers[f"x-ratelimit-remaining-{name}"] = _UNLIMITED_REMAINING
            headers[f"x-ratelimit-reset-{name}"] = "0s"
        else:
            bucket.refill(now)
            headers[f"x-ratelimit-limit-{name}"] = str(int(bucket.limit))
            headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining)
            headers[f"x-ratelimit-reset-{name}"] = go_duration(bucket.reset_seconds)
    return headers


class _WallClockText:
    """Caches the RFC 3339 text of the current second (cheap per-request timestamps)."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.text = rfc3339(second)
        return self.text


_wall = _WallClockText()

_ANTHROPIC_BUCKETS = (
    ("requests", "requests"),
    ("input-tokens", "input_tokens"),
    ("output-tokens", "output_tokens"),
    ("tokens", "tokens"),
)


def nearest_thousand(value: float) -> int:
    """Anthropic's token ``remaining`` headers: rounded to the nearest thousand, never < 0."""
    return max(0, int(math.floor(value / 1000.0 + 0.5)) * 1000)


def anthropic_headers(limits: LimitSet) -> dict[str, str]:
    """Anthropic ``anthropic-ratelimit-*`` headers (reset as an RFC 3339 timestamp; token
    ``remaining`` rounded to the nearest thousand, as documented).

    ``tokens`` reports the combined bucket when ``tpm`` is set, else the more restrictive of
    the input and output buckets.
    """
    headers: dict[str, str] = {}
    now_text = _wall.now()
    mono = limits.clock()
    wall = time.time()
    for header, name in _ANTHROPIC_BUCKETS:
        bucket = limits.get(name)
        if bucket is None and name == "tokens":
            candidates = [b for b in (limits.get("input_tokens"), limits.get("output_tokens")) if b]
            bucket = min(candidates, key=lambda b: b.level, default=None)
        if bucket is None:
            headers[f"anthropic-ratelimit-{header}-limit"] = _UNLIMITED_TEXT
            headers[f"anthropic-ratelimit-{header}-remaining"] = _UNLIMITED_REMAINING
            headers[f"anthropic-ratelimit-{header}-reset"] = now_text
        else:
            bucket.refill(mono)
            remaining = bucket.remaining if name == "requests" else nearest_thousand(bucket.level)
            headers[f"anthropic-ratelimit-{header}-limit"] = str(int(bucket.limit))
            headers[f"anthropic-ratelimit-{header}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{header}-reset"] = rfc3339(
                math.ceil(wall + bucket.reset_seconds)
            )
    return headers


def retry_after_headers(wait: float) -> dict[str, str]:
    """``retry-after`` (whole seconds, >= 1) and ``retry-after-ms`` for a wait in seconds."""
    return {
        "retry-after": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
    }
