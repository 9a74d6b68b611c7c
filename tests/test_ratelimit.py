"""Client-side pacing never exceeds the configured rate."""

from __future__ import annotations

import asyncio
import json
import time

from curator_flows.backends.base import LearnedLimits, parse_duration
from curator_flows.backends.factory import OutputRule
from curator_flows.ratelimit import RateLimiter, Reservation
from curator_flows.tokens import Observed


def test_rpm_paces_requests():
    async def run():
        limiter = RateLimiter(rpm=1200)  # 20/s, 20 of burst
        start = time.monotonic()
        for _ in range(60):
            await limiter.acquire(Reservation(10, 10))
        return time.monotonic() - start

    elapsed = asyncio.run(run())
    assert 1.8 <= elapsed <= 2.6  # (60 - 20 burst) / 20 per second


def test_separate_token_limits_and_settle():
    async def run():
        limiter = RateLimiter(input_tpm=6000, output_tpm=600)  # 100 in/s, 10 out/s
        charge = await limiter.acquire(Reservation(50, 10))
        limiter.settle(charge, 50, 2)  # 8 output tokens refunded
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


def test_a_share_takes_its_part_of_every_limit_and_remaining_caps_the_burst():
    limiter = RateLimiter(rpm=4000, share=0.25)
    assert limiter.limits()["max_requests_per_minute"] == 1000
    limiter.observe(LearnedLimits(tokens_per_minute=400_000, remaining_requests=8))
    assert limiter.limits()["max_tokens_per_minute"] == 100_000
    assert limiter.requests.level <= 2.0  # a quarter of what the provider says remains


def test_four_parallel_shards_hold_a_3000_rpm_limit_without_a_429_storm(sim, wd):
    """Four processes, one shard each, told only that they run 4 in parallel: together they stay
    within the provider's 3,000 RPM (learned from its headers), every row once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from curator_flows import steps
    from curator_flows.store import RunStore

    support = Path(__file__).parent / "support"
    sys.path.insert(0, str(support))
    from resume_llms import Numbered

    sim.configure(rpm=3000)
    llm = Numbered(
        "gpt-4o-mini",
        backend_params={"base_url": sim.base_url, "shard_size": 100, "progress": "off"},
    )
    run = steps.prepare(llm, [{"n": i} for i in range(400)], wd)
    assert len(run["shards"]) == 4
    code = (
        "import json, sys\n"
        "from curator_flows import steps\n"
        "out = steps.run_online(sys.argv[1], sys.argv[2], parallel_shards=4)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(support), "OPENAI_API_KEY": "k"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, run["run_uri"], shard],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in run["shards"]
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    stats = sim.stats()
    assert sum(r["succeeded"] for r in results) == 400
    # by_prompt counts admitted requests only: every row was admitted exactly once
    assert len(stats["by_prompt"]) == 400 and set(stats["by_prompt"].values()) == {1}
    assert stats["status_counts"]["200"] == 400
    assert stats["rate_limited"] <= 12  # no 429 storm: a handful at most while learning
    assert all(r["limits"]["max_requests_per_minute"] == 750 for r in results)
    # paced, not burst: 400 answers at 4 x 12.5/s, after at most the server's 2 s burst (100
    # requests), span at least (400 - 100) / 50 = 6 s between the first and the last answer
    lines = RunStore(run["run_uri"]).iter_records("responses/*.*jsonl")
    answered = sorted(r["ts"] for r in lines if "content" in r)
    assert answered[-1] - answered[0] >= 5.0


def test_a_refund_that_arrives_near_capacity_is_not_lost():
    """A settlement gives back the whole difference even when the bucket refilled meanwhile:
    the level may stand above capacity until it is spent (the provider adjusts the same way)."""

    async def run():
        limiter = RateLimiter(tpm=6000)  # 100 tokens/s, capacity 100
        charge = await limiter.acquire(Reservation(10, 590))  # above capacity: taken when full
        bucket = limiter.tokens
        bucket.level = 95.0  # the bucket refilled while the request was in flight
        limiter.settle(charge, 10, 20)  # it used 30 of the 600 it held
        bucket.refill(time.monotonic() + 1.0)
        level_after_refill = bucket.level
        started = time.monotonic()
        for _ in range(6):  # 6 x 100 tokens at once: only what the refund gave back allows it
            await limiter.acquire(Reservation(50, 50))
        return level_after_refill, time.monotonic() - started

    level, elapsed = asyncio.run(run())
    assert level == 95.0 + 570.0
    assert elapsed < 0.5  # nothing waited for a refill


def test_observed_outputs_a_high_quantile_bounded_by_max_tokens():
    outputs = Observed(256, quantile=0.95, warm=20)
    assert outputs.high() == 256 and outputs.high(cap=100) == 100  # the prior, capped
    for value in [20] * 5:
        outputs.observe(value)
    assert outputs.high() == 256  # a few answers say little: never below the prior yet
    for value in [20] * 94 + [600]:
        outputs.observe(value)
    assert outputs.high() == 20  # the 95th percentile: one long answer does not move it
    assert outputs.most() == 600 and outputs.most(cap=300) == 300
    for value in [600] * 10:
        outputs.observe(value)
    assert outputs.high() == 600
    assert outputs.high(cap=50) == 50


def test_reservations_hold_what_each_provider_counts_up_front():
    openai_free = OutputRule(cap=None, up_front=False)
    assert openai_free.counted == 0 and openai_free.reserve(37.2) == 38
    openai_capped = OutputRule(cap=20000, up_front=True)
    assert openai_capped.reserve(600) == 20000  # OpenAI counts max_tokens when set
    anthropic = OutputRule(cap=4096, up_front=True)
    assert anthropic.reserve(10) == 4096
    row = openai_free.for_row({"max_tokens": 50, "n": 2})  # a row's own params override
    assert row == OutputRule(cap=50, up_front=True, choices=2) and row.reserve(30) == 100


def test_a_tpm_bound_run_reserves_from_observed_answers_without_a_429(sim, wd, monkeypatch):
    """Anthropic counts max_tokens against OTPM until the answer is complete. Answers slower
    than the warm-up wait never release a burst the provider refuses, and each request holds
    what the provider counts, so not one 429 (the old runner sent everything at once after
    the warm-up wait: 429s)."""
    from curator_flows import LLM, steps

    monkeypatch.setattr("curator_flows.online.WARMUP_SECONDS", 0.5)
    # 6,000 OTPM: 100/s, a burst of 6,000: max_tokens 1,500 -> 4 requests in flight at most
    sim.configure(output_tpm=6000, burst_seconds=60, latency=0.6, completion_tokens=30)
    llm = LLM(
        "claude-sonnet-4-5",
        backend="anthropic",
        backend_params={
            "base_url": sim.url,
            "api_key": "k",
            "progress": "off",
            "max_tokens": 1500,
            "max_concurrent_requests": 16,
        },
    )
    run = steps.prepare(llm, [f"row {i}" for i in range(12)], wd)
    result = steps.run_online(run, llm=llm)
    stats = sim.stats()
    assert result["succeeded"] == 12 and result["rate_limited"] == 0
    assert stats["status_counts"] == {"200": 12}


def test_a_tpm_bound_openai_run_without_max_tokens_gets_no_429(sim, wd):
    """OpenAI counts the prompt when it admits a request and the output when it is generated:
    the client holds the output the run observed until each answer, learns the limit and the
    burst from the headers, and the provider refuses nothing."""
    from curator_flows import LLM, steps

    sim.configure(tpm=60_000, latency=0.2, completion_tokens=20)  # 1,000 tokens/s
    llm = LLM(
        "gpt-4o-mini",
        backend_params={"base_url": sim.base_url, "api_key": "k", "progress": "off"},
    )
    run = steps.prepare(llm, [f"paced prompt {i}" for i in range(200)], wd)
    result = steps.run_online(run, llm=llm)
    assert result["succeeded"] == 200 and result["rate_limited"] == 0
    assert sim.stats()["status_counts"] == {"200": 200}
    assert result["limits"]["max_tokens_per_minute"] == 60_000


def test_two_parallel_shards_hold_one_tpm_limit_together(sim, wd):
    """Two runners at once (threads here, each its own event loop), each told it is one of two:
    together they stay within the provider's TPM limit (learned from headers): no 429."""
    import concurrent.futures

    from curator_flows import LLM, steps

    sim.configure(tpm=30_000, latency=0.05, completion_tokens=40)  # 500 tokens/s
    llm = LLM(
        "gpt-4o-mini",
        backend_params={
            "base_url": sim.base_url,
            "api_key": "k",
            "progress": "off",
            "shard_size": 60,
        },
    )
    run = steps.prepare(llm, [f"row {i}" for i in range(120)], wd)
    assert len(run["shards"]) == 2
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda shard: steps.run_online(run, shard, llm=llm, parallel_shards=2),
                run["shards"],
            )
        )
    assert sum(r["succeeded"] for r in results) == 120
    assert sim.stats()["status_counts"] == {"200": 120}


def test_the_client_bucket_never_holds_more_than_the_providers():
    """The client's bucket mirrors the provider's (the simulator's, from the providers'
    documentation): OpenAI counts the prompt when it admits a request and the output when it is
    generated. The client holds the expected output apart (``pending``), so while the provider's
    bucket sits full the refunds of generous early estimates never lift the client above it,
    and the provider admits every request the client sends."""
    import random

    from curator_flows.ratelimit import Bucket
    from curator_flows.testing.simulator.ratelimit import LimitSet

    clock = [0.0]
    provider = LimitSet({"tokens": 60_000}, burst_seconds=2.0, clock=lambda: clock[0])
    client = Bucket.per_minute(60_000, 0.0)
    client.capacity = 2000.0  # learned from the provider's headers
    rng = random.Random(7)
    in_flight: list[tuple[float, int]] = []  # (answered at, expected output held)
    sent = 0
    while sent < 3000:
        clock[0] += rng.uniform(0.0, 0.01)
        now = clock[0]
        for done in [f for f in in_flight if f[0] <= now]:  # answers: 20 output tokens each
            in_flight.remove(done)
            provider.settle({"tokens": 11}, {"tokens": 31})
            client.refill(now)
            client.adjust(11 - 31, done[1])
        expected = 256 if sent < 200 else 20  # a generous prior, then what was observed
        client.refill(now)
        if client.wait_for(11, expected, now) == 0:
            provider.acquire({"tokens": 11})  # raises RateLimited (a 429) if the client erred
            client.take(11, expected, now)
            in_flight.append((now + 0.5, expected))
            sent += 1
        bucket = provider.get("tokens")
        bucket.refill(now)
        assert client.level <= bucket.level + 1e-6


def test_a_rounded_remaining_header_lowers_only_a_level_certainly_above_it():
    """Anthropic rounds its token remaining headers to the nearest thousand: a small bucket that
    reads "0" (up to 499 left) is not dragged to empty by every answer, while a level certainly
    above what the header allows is lowered (OpenAI's exact counts lower at once)."""

    async def run():
        limiter = RateLimiter(output_tpm=12_000)  # 200 tokens/s, capacity 200
        charge = await limiter.acquire(Reservation(10, 100))
        limiter.settle(charge, 10, 100)
        level = limiter.output_tokens.level
        rounded = LearnedLimits(remaining_output_tokens=0, tokens_rounding=1000.0)
        limiter.observe(rounded, charge)
        kept = limiter.output_tokens.level
        limiter.output_tokens.level = 5000.0
        limiter.observe(rounded, charge)
        lowered = limiter.output_tokens.level
        limiter.output_tokens.level = 150.0
        limiter.observe(LearnedLimits(remaining_output_tokens=0), charge)
        return level, kept, lowered, limiter.output_tokens.level

    level, kept, lowered, exact = asyncio.run(run())
    assert kept >= level > 90  # not dragged to 0
    assert lowered == 0.0 and exact == 0.0
