"""The simulator's shared in-memory state: config, stats, rate limits, stores, caches.

Invariants:
- All mutation happens on the server's event loop thread, except `Stats` (which locks) and
  `set_config` (a single attribute swap of an immutable config, plus rebuilt limits).
- ``config`` is replaced, never mutated; a handler reads it once and uses that snapshot.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from .account import ACCOUNT_FIELDS, Account
from .config import SimulatorConfig
from .ratelimit import LimitSet
from .responses import IdFactory
from .stats import Stats

_LIMIT_FIELDS = ("rpm", "tpm", "input_tpm", "output_tpm", "burst_seconds")
_CACHE_LIMIT = 50_000


def build_openai_limits(config: SimulatorConfig) -> LimitSet:
    return LimitSet({"requests": config.rpm, "tokens": config.tpm}, config.burst_seconds)


def build_anthropic_limits(config: SimulatorConfig) -> LimitSet:
    return LimitSet(
        {
            "requests": config.rpm,
            "input_tokens": config.input_tpm,
            "output_tokens": config.output_tpm,
            "tokens": config.tpm,
        },
        config.burst_seconds,
    )


class SimState:
    """Everything the request handlers share."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.ids = IdFactory()
        self.openai_limits = build_openai_limits(config)
        self.anthropic_limits = build_anthropic_limits(config)
        self.account = Account(config)
        self._jitter = random.Random(config.seed)
        self._cache: dict[Any, Any] = {}
        # Stores used by the batch modules (insertion order == creation order).
        self.files: dict[str, Any] = {}
        self.openai_batches: dict[str, Any] = {}
        self.anthropic_batches: dict[str, Any] = {}

    def set_config(self, config: SimulatorConfig) -> None:
        old, self.config = self.config, config
        self._cache.clear()
        if any(getattr(old, f) != getattr(config, f) for f in _LIMIT_FIELDS):
            self.openai_limits = build_openai_limits(config)
            self.anthropic_limits = build_anthropic_limits(config)
        if any(getattr(old, f) != getattr(config, f) for f in ACCOUNT_FIELDS):
            self.account = Account(config)  # a new credit or per-day limit: a fresh account

    def reset(self) -> None:
        """Clear stats (and with them the per-prompt attempt counters), refill the limits and
        the account's credit."""
        self.stats.reset()
        self.openai_limits = build_openai_limits(self.config)
        self.anthropic_limits = build_anthropic_limits(self.config)
        self.account = Account(self.config)

    # ---- content cache
    def cache_get(self, key: Any) -> Any:
        return self._cache.get(key)

    def cache_put(self, key: Any, value: Any) -> None:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = value

    # ---- latency
    async def delay(self, config: SimulatorConfig) -> None:
        """Sleep the configured latency (+ uniform jitter); no sleep at all when both are 0."""
        seconds = config.latency
        if config.latency_jitter:
            seconds += config.latency_jitter * self._jitter.random()
        if seconds > 0:
            await asyncio.sleep(seconds)
