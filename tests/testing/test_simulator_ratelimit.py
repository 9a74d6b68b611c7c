"""What the simulator counts against its limits, over real HTTP: what each provider counts up
front (OpenAI: the request's tokens plus ``n * max_tokens`` when set; Anthropic: input tokens and
``max_tokens``), settled to the usage when the answer is complete, with the providers' headers
and 429 bodies."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from curator_flows.testing.simulator import Simulator
from curator_flows.testing.simulator.ratelimit import LimitSet

ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-sim", "anthropic-version": "2023-06-01"}


def call(url: str, body: Any, headers: dict[str, str] | None = None):
    """One POST; (status, lower-cased headers, body) for any status."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def chat(sim: Simulator, prompt: str, **params: Any):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **params}
    return call(sim.base_url + "/chat/completions", body)


def message(sim: Simulator, prompt: str, **params: Any):
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": prompt}]}
    return call(sim.url + "/v1/messages", {**body, **params}, ANTHROPIC_HEADERS)


@pytest.fixture
def sim():
    with Simulator() as server:
        yield server


def test_openai_counts_the_prompt_and_max_tokens_up_front_and_settles_to_the_usage():
    # 6,000 TPM: 100 tokens/s, a bucket of 200
    with Simulator(tpm=6000, completion_tokens=10) as sim:
        status, headers, data = chat(sim, "short", max_tokens=150)
        assert status == 200
        usage = json.loads(data)["usage"]
        assert usage["completion_tokens"] == 10
        # 150 + prompt counted when admitted, settled to prompt + 10 when answered
        assert int(headers["x-ratelimit-remaining-tokens"]) >= 200 - usage["total_tokens"]
        status, _, _ = chat(sim, "short again", max_tokens=150)
        assert status == 200  # the unused max_tokens came back at once


def test_openai_without_max_tokens_counts_the_output_when_it_is_generated():
    with Simulator(tpm=6000, completion_tokens=150) as sim:
        status, headers, data = chat(sim, "long answer")
        assert status == 200
        total = json.loads(data)["usage"]["total_tokens"]
        assert total > 150
        assert int(headers["x-ratelimit-remaining-tokens"]) <= 200 - total + 5
        status, headers, data = chat(sim, "next", max_tokens=100)
        assert status == 429
        error = json.loads(data)["error"]
        assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded"
        assert "on tokens per min (TPM): Limit 6000, Used " in error["message"]
        assert "Requested 1" in error["message"] and "Please try again in " in error["message"]
        assert int(headers["retry-after-ms"]) >= 1


def test_anthropic_counts_max_tokens_against_otpm_until_the_answer_is_complete():
    # 60,000 OTPM: 1,000 tokens/s, a bucket of 2,000; each request holds 1,500 while in flight
    with Simulator(output_tpm=60_000, completion_tokens=10, latency=0.6) as sim:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(message, sim, "first", max_tokens=1500)
            time.sleep(0.2)
            second = pool.submit(message, sim, "second", max_tokens=1500)
            (status_1, headers_1, _), (status_2, headers_2, data_2) = (
                first.result(),
                second.result(),
            )
        assert status_1 == 200 and status_2 == 429
        error = json.loads(data_2)
        assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
        assert error["error"]["message"].startswith(
            "This request would exceed the rate limit for your organization ("
        )
        assert "of 60,000 output tokens per minute" in error["error"]["message"]
        assert int(headers_2["retry-after"]) >= 1
        # settled to the 10 tokens used (2,000 - 1,500 + what refilled + 1,490), rounded to the
        # nearest thousand as documented
        remaining = int(headers_1["anthropic-ratelimit-output-tokens-remaining"])
        assert remaining % 1000 == 0 and remaining >= 2000
        assert headers_1["anthropic-ratelimit-output-tokens-limit"] == "60000"
        assert message(sim, "third", max_tokens=1500)[0] == 200


def test_anthropic_settles_input_tokens_and_counts_cache_writes_not_reads():
    with Simulator(input_tpm=60_000, completion_tokens=5) as sim:
        status, headers, data = message(sim, "x" * 400, max_tokens=50)
        assert status == 200
        usage = json.loads(data)["usage"]
        assert usage["input_tokens"] > 100 and usage["cache_read_input_tokens"] == 0
        remaining = int(headers["anthropic-ratelimit-input-tokens-remaining"])
        assert remaining % 1000 == 0 and remaining == 2000  # 2,000 - ~110, to the thousand


def test_a_settlement_that_gives_back_more_than_was_taken_since_is_kept_above_capacity():
    now = [0.0]
    limits = LimitSet({"tokens": 6000}, burst_seconds=1.0, clock=lambda: now[0])  # cap 100
    charged = {"tokens": 600}  # above the capacity, within the limit: admitted when full
    limits.acquire(charged)
    bucket = limits.get("tokens")
    assert bucket.level == -500
    now[0] = 5.0
    limits.acquire({"tokens": 0})  # refills to 0
    limits.settle(charged, {"tokens": 10})  # the request used 10: 590 come back
    assert bucket.level == 590
    now[0] = 6.0
    for _ in range(5):
        limits.acquire({"tokens": 100})  # nothing of the refund was lost at capacity
    assert bucket.level == 90


def test_fixed_length_answers(sim):
    sim.configure(completion_tokens=37)
    for prompt in ("a", "b", "c"):
        body = json.loads(chat(sim, prompt)[2])
        assert body["usage"]["completion_tokens"] == 37
        assert len(body["choices"][0]["message"]["content"]) == 4 * 37
    data = json.loads(message(sim, "d", max_tokens=20)[2])
    assert data["usage"]["output_tokens"] == 20 and data["stop_reason"] == "max_tokens"
