"""What an account allows beyond the per-minute limits: its prepaid credit and OpenAI's per-day
limits, refused with the providers' own answers.

Invariants:
- **credit** (``credit_requests``) is counted in paid requests: every request admitted past the
  rate limits spends one, every item of a created batch spends one (at create). While the
  balance is above zero everything is served; at zero or below, every paid call (a chat
  completion, a message, a batch create) is refused and spends nothing. A batch may take the
  balance below zero, as a real balance goes negative by what was admitted at once. Reading
  results, files and batch states never costs credit.
- out of credit, OpenAI answers ``429`` with ``type`` and ``code`` ``insufficient_quota``
  ("You exceeded your current quota, ..."), Anthropic ``400 invalid_request_error`` ("Your
  credit balance is too low to access the Anthropic API. ...") with a ``request_id``.
- **per-day limits** (``rpd``, ``tpd``: OpenAI's RPD and TPD) refill continuously over 24
  hours up to the limit and start full, so "try again in" is the time until the request
  fits (``86400 / RPD`` for one request at zero: 7m12s at RPD 200). A refused request
  charges nothing; a request is charged only once every limit (per day and per minute)
  admitted it (:meth:`Account.day_check` before the per-minute buckets, :meth:`day_charge`
  after). Tokens count as for TPM: the prompt plus ``max_tokens`` (or the default).
- the per-day refusal is OpenAI's 429 ``rate_limit_exceeded`` naming the limit ("... on
  requests per day (RPD): Limit N, Used N, Requested 1. Please try again in 7m12s. ...");
  its ``x-ratelimit-*`` headers stay those of the per-minute limits (the per-day limit is
  only in the message) and it carries no ``retry-after``. Anthropic documents no per-day
  limits, so its endpoints have none.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from .config import SimulatorConfig
from .ratelimit import go_duration
from .responses import anthropic_error_body, openai_error_body

DAY = 86400.0

OPENAI_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
ANTHROPIC_CREDIT_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    "to upgrade or purchase credits."
)
_DAY_LABELS = {"requests": "requests per day (RPD)", "tokens": "tokens per day (TPD)"}

#: the config fields this module reads (a change rebuilds the account: credit refilled)
ACCOUNT_FIELDS = ("rpd", "tpd", "credit_requests")


class DayBucket:
    """One per-day limit: ``limit`` per 24 hours, refilled continuously, starting full."""

    __slots__ = ("limit", "level", "stamp")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.level = float(limit)
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(float(self.limit), self.level + (now - self.stamp) * self.limit / DAY)
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0: now); ``math.inf`` when it never does."""
        if amount > self.limit:
            return math.inf
        return max(0.0, (amount - self.level) * DAY / self.limit)

    @property
    def used(self) -> int:
        return min(self.limit, max(0, math.ceil(self.limit - self.level)))


class DayLimited(Exception):
    """A request the per-day limit ``bucket`` (``requests`` or ``tokens``) refuses."""

    def __init__(self, bucket: str, limit: int, used: int, requested: int, wait: float) -> None:
        super().__init__(bucket)
        self.bucket = bucket
        self.limit = limit
        self.used = used
        self.requested = requested
        self.wait = wait


class Account:
    """The credit balance and the per-day buckets of one simulated account (thread-safe)."""

    def __init__(self, config: SimulatorConfig, clock=time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.credit: int | None = config.credit_requests
        now = clock()
        self.days: dict[str, DayBucket] = {
            name: DayBucket(limit, now)
            for name, limit in (("requests", config.rpd), ("tokens", config.tpd))
            if limit is not None
        }

    # ---- credit
    def out_of_credit(self) -> bool:
        with self.lock:
            return self.credit is not None and self.credit <= 0

    def spend(self, requests: int = 1) -> None:
        with self.lock:
            if self.credit is not None:
                self.credit -= requests

    # ---- per-day limits
    def day_check(self, costs: dict[str, float]) -> None:
        """Raise :class:`DayLimited` when a per-day limit cannot take ``costs`` now."""
        if not self.days:
            return
        with self.lock:
            now = self.clock()
            for name, bucket in self.days.items():
                cost = costs.get(name, 0)
                bucket.refill(now)
                wait = bucket.wait_for(cost)
                if wait > 0:
                    raise DayLimited(name, bucket.limit, bucket.used, int(cost), wait)

    def day_charge(self, costs: dict[str, float]) -> None:
        with self.lock:
            for name, bucket in self.days.items():
                bucket.level -= costs.get(name, 0)


def openai_quota_body() -> dict[str, Any]:
    return openai_error_body(OPENAI_QUOTA_MESSAGE, "insufficient_quota", None, "insufficient_quota")


def anthropic_credit_body(request_id: str) -> dict[str, Any]:
    body = anthropic_error_body("invalid_request_error", ANTHROPIC_CREDIT_MESSAGE)
    body["request_id"] = request_id
    return body


def openai_day_body(exc: DayLimited, model: str) -> dict[str, Any]:
    """OpenAI's 429 for a per-day limit (``type`` ``requests`` or ``tokens``)."""
    label = _DAY_LABELS[exc.bucket]
    if math.isinf(exc.wait):
        message = (
            f"Request too large for {model} in organization org-simulator on {label}: Limit "
            f"{exc.limit}, Requested {exc.requested}. The input or output tokens must be reduced."
        )
    else:
        message = (
            f"Rate limit reached for {model} in organization org-simulator on {label}: Limit "
            f"{exc.limit}, Used {exc.used}, Requested {exc.requested}. Please try again in "
            f"{go_duration(exc.wait)}. Visit https://platform.openai.com/account/rate-limits to "
            "learn more."
        )
    return openai_error_body(message, exc.bucket, None, "rate_limit_exceeded")
