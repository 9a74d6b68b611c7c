"""Client-side pacing never exceeds the configured rate."""

from __future__ import annotations

import asyncio
import time

from curator_flows.backends.base import LearnedLimits, parse_duration
from curator_flows.ratelimit import RateLimiter


def test_rpm_paces_requests():
    async def run():
        limiter = RateLimiter(rpm=1200)  # 20/s, 20 of burst
        start = time.monotonic()
        for _ in range(60):
            await limiter.acquire(10, 10)
        return time.monotonic() - start

    elapsed = asyncio.run(run())
    assert 1.8 <= elapsed <= 2.6  # (60 - 20 burst) / 20 per second


def test_separate_token_limits_and_settle():
    async def run():
        limiter = RateLimiter(input_tpm=6000, output_tpm=600)  # 100 in/s, 10 out/s
        await limiter.acquire(50, 10)
        limiter.settle(50, 10, 50, 2)  # 8 output tokens refunded
        return limiter.output_tokens.level

    level = asyncio.run(run())
    assert 7.9 <= level <= 8.2


def test_learned_limits_fill_only_unset_limits():
    limiter = RateLimiter(rpm=100)
    limiter.learn(LearnedLimits(requests_per_minute=10_000, tokens_per_minute=50_000))
    assert limiter.limits()["max_requests_per_minute"] == 100
    assert limiter.limits()["max_tokens_per_minute"] == 50_000


def test_huge_advertised_limits_mean_unlimited():
    limiter = RateLimiter()
    limiter.learn(LearnedLimits(requests_per_minute=1_000_000_000))
    assert limiter.unlimited


def test_openai_durations():
    assert parse_duration("1s") == 1.0
    assert parse_duration("120ms") == 0.12
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("1h2m3.5s") == 3723.5
