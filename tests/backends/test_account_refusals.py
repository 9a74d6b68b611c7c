"""An account out of credit or over a per-day limit stops the run within seconds, over real HTTP
against the simulator: in-flight requests finish, nothing else is sent, unsent requests stay
pending with no line, and a run with the account restored sends exactly the rest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from curator_flows import LLM, DailyLimitError, QuotaExceededError, steps
from curator_flows.backends.account import DAILY_LIMIT, QUOTA, account_refusal
from curator_flows.errors import is_retryable
from curator_flows.store import RunStore

CONCURRENCY = 8


class Line(LLM):
    def prompt(self, input: dict) -> str:
        return f"Write one line about {input['topic']}."

    def parse(self, input: dict, response: str) -> dict:
        return {"topic": input["topic"], "text": response}


def rows(n: int) -> list[dict]:
    return [{"topic": f"t{i}"} for i in range(n)]


def lines_of(run_uri: str) -> list[dict]:
    return list(RunStore(run_uri).iter_records("responses/*.*jsonl"))


def only_run(wd: str) -> str:
    return str(next(p for p in Path(wd).iterdir() if p.is_dir()))


def refused_after_credit(sim) -> int:
    return sum(sim.stats()["refused"].values())


@pytest.mark.parametrize(
    ("backend", "model", "url"),
    [("openai", "gpt-4o-mini", "base_url"), ("anthropic", "claude-haiku-4-5", "url")],
)
def test_out_of_credit_stops_the_run_within_seconds_and_a_rerun_sends_the_rest(
    sim, params, wd, backend, model, url
):
    sim.configure(credit_requests=20, latency=0.01)
    llm = Line(
        model,
        backend=backend,
        backend_params=params(
            base_url=getattr(sim, url), max_concurrent_requests=CONCURRENCY, max_retries=3
        ),
    )
    started = time.monotonic()
    with pytest.raises(QuotaExceededError) as err:
        llm(rows(300), working_dir=wd)
    assert time.monotonic() - started < 20  # within seconds, not a retry loop
    error = err.value
    assert not error.retryable and not is_retryable(error)
    assert error.status == (429 if backend == "openai" else 400)
    provider_words = "exceeded your current quota" if backend == "openai" else "credit balance"
    assert provider_words in error.provider_message and provider_words in str(error)
    # what the simulator saw after the credit ran out: at most what was in flight
    assert 1 <= refused_after_credit(sim) <= CONCURRENCY
    run = only_run(wd)
    lines = lines_of(run)
    assert len(lines) == 20 and all("content" in line for line in lines)  # no failure lines
    sim.configure(credit_requests=None)  # credit bought
    before = sim.stats()["requests"]
    result = llm(rows(300), working_dir=wd)
    assert len(result.dataset) == 300 and result.request_stats.failed == 0
    assert sim.stats()["requests"] - before == 280  # exactly the rest, nothing twice


@pytest.mark.parametrize(
    ("backend", "model", "url"),
    [("openai", "gpt-4o-mini", "base_url"), ("anthropic", "claude-haiku-4-5", "url")],
)
def test_run_online_step_stops_on_quota_and_resumes(sim, params, wd, backend, model, url):
    sim.configure(credit_requests=15)
    llm = Line(
        model,
        backend=backend,
        backend_params=params(base_url=getattr(sim, url), max_concurrent_requests=4, shard_size=50),
    )
    run = steps.prepare(llm, rows(100), wd)
    with pytest.raises(QuotaExceededError, match="out of credit"):
        steps.run_online(run, llm=llm)
    assert len(lines_of(run["run_uri"])) == 15
    assert refused_after_credit(sim) <= 4
    sim.configure(credit_requests=None)
    sent = steps.run_online(run, llm=llm)["sent"]
    assert sent == 85
    assert steps.finalize(run, llm=llm)["succeeded"] == 100


def test_a_per_day_limit_stops_dispatch_and_says_when_to_retry(sim, params, wd):
    sim.configure(rpd=12)
    llm = Line("gpt-4o-mini", backend_params=params(max_concurrent_requests=4, shard_size=50))
    run = steps.prepare(llm, rows(60), wd)
    started = time.monotonic()
    with pytest.raises(DailyLimitError) as err:
        steps.run_online(run, llm=llm)
    assert time.monotonic() - started < 20  # no worker paused for hours
    error = err.value
    assert error.retryable and is_retryable(error)
    assert "requests per day (RPD)" in error.provider_message
    # one request of 12 per day refills in 2 hours: the error says so, as a time
    assert 7000 < error.retry_after <= 7200
    assert error.retry_at == pytest.approx(time.time() + error.retry_after, abs=60)
    assert "UTC" in str(error)
    lines = lines_of(run["run_uri"])
    assert len(lines) == 12 and all("content" in line for line in lines)
    assert sim.stats()["refused"]["rpd"] <= 4
    sim.configure(rpd=None)  # the next day
    assert steps.run_online(run, llm=llm)["sent"] == 48
    assert steps.finalize(run, llm=llm)["succeeded"] == 60


def test_litellm_maps_the_quota_answer_onto_the_same_stop(sim, params, wd):
    sim.configure(credit_requests=3)
    llm = Line("openai/sim-model", backend_params=params(max_concurrent_requests=2))
    assert llm.backend == "litellm"
    with pytest.raises(QuotaExceededError):
        llm(rows(20), working_dir=wd)
    assert refused_after_credit(sim) <= 2
    assert len(lines_of(only_run(wd))) == 3


@pytest.mark.parametrize(
    ("backend", "model", "url"),
    [("openai", "gpt-4o-mini", "base_url"), ("anthropic", "claude-haiku-4-5", "url")],
)
def test_a_batch_refused_for_credit_burns_no_round(sim, params, wd, backend, model, url):
    sim.configure(
        credit_requests=0,
        batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05},
    )
    backend_params = params(base_url=getattr(sim, url), batch_check_interval=0.1)
    backend_params.pop("seconds_to_pause_on_rate_limit")
    llm = Line(model, backend=backend, batch=True, backend_params=backend_params)
    started = time.monotonic()
    with pytest.raises(QuotaExceededError, match="was not created"):
        llm(rows(6), working_dir=wd)
    assert time.monotonic() - started < 20
    assert sim.stats()["batches_created"] == 0
    assert sum(sim.stats()["refused"].values()) == 1  # refused once, never retried blindly
    run = only_run(wd)
    assert lines_of(run) == []  # nothing failed: every request is pending
    record = RunStore(run).read_json("batches/00000.json")
    assert [r["state"] for r in record["rounds"]] in (["intent"], ["uploaded"])
    sim.configure(credit_requests=None)
    result = llm(rows(6), working_dir=wd)
    assert len(result.dataset) == 6 and result.request_stats.failed == 0
    record = RunStore(run).read_json("batches/00000.json")
    assert len(record["rounds"]) == 1 and record["rounds"][0]["attempt"] == 1


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (
            429,
            b'{"error": {"message": "You exceeded your current quota, please check your plan '
            b'and billing details.", "type": "insufficient_quota", "param": null, '
            b'"code": "insufficient_quota"}}',
            QUOTA,
            "insufficient_quota",
        ),
        (
            429,
            b'{"error": {"message": "Spend limit", "type": "insufficient_quota", "param": null, '
            b'"code": "project_spend_limit_exceeded"}}',
            QUOTA,
            "project_spend_limit_exceeded",
        ),
        (
            400,
            b'{"type": "error", "error": {"type": "invalid_request_error", "message": "You have '
            b"reached your specified API usage limits. You will regain access on 2026-04-01 at "
            b'00:00 UTC."}}',
            QUOTA,
            "spend_limit",
        ),
        (
            429,
            b'{"type": "error", "error": {"type": "rate_limit_error", "message": "limit", '
            b'"details": {"error_code": "enforced_spend_limit_reached"}}}',
            QUOTA,
            "enforced_spend_limit_reached",
        ),
        (
            402,
            b'{"type": "error", "error": {"type": "billing_error", "message": "x"}}',
            QUOTA,
            "billing_error",
        ),  # fmt: skip
        (
            429,
            b'{"error": {"message": "Rate limit reached for gpt-4o in organization org-x on '
            b"tokens per day (TPD): Limit 90000, Used 89000, Requested 2000. Please try again "
            b'in 16m0.5s. Visit https://platform.openai.com/account/rate-limits to learn more.", '
            b'"type": "tokens", "param": null, "code": "rate_limit_exceeded"}}',
            DAILY_LIMIT,
            "tokens_per_day",
        ),
    ],
)
def test_account_refusals_are_read_from_the_documented_answers(status, body, kind, code):
    refusal = account_refusal(status, body)
    assert refusal is not None and (refusal.kind, refusal.code) == (kind, code)
    if kind == DAILY_LIMIT:
        assert refusal.retry_after == pytest.approx(960.5)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            429,
            b'{"error": {"message": "Rate limit reached for gpt-4o in organization org-x on '
            b'requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.", '
            b'"type": "requests", "param": null, "code": "rate_limit_exceeded"}}',
        ),
        (400, b'{"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}'),
        (500, b'{"error": {"message": "insufficient_quota", "type": "server_error"}}'),
    ],
)
def test_per_minute_limits_and_other_errors_are_no_account_refusal(status, body):
    assert account_refusal(status, body) is None
