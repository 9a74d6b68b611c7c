"""Client-side pacing never exceeds the configured rate."""

from __future__ import annotations

import asyncio
import json
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
