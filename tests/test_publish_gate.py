"""Never a silently partial dataset: a run that ends with failed requests logs one WARNING line
(how many, by reason, where they are listed) and counts them by reason in its statistics; an
output is published only when at most ``max_failed_fraction`` of the requests failed, else
nothing is published and the previous output stays."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import BaseModel

from curator_flows import LLM, TooManyFailuresError, steps
from curator_flows.errors import ConfigError, IncompleteRunError
from curator_flows.failures import reason_of
from curator_flows.publish import read_marker
from curator_flows.store import FAILED, OUTPUT_STATS, RunStore


class Topic(LLM):
    def prompt(self, input: dict) -> str:
        return f"Write one line about {input['topic']}."

    def parse(self, input: dict, response: str) -> dict:
        if input["topic"].startswith("unparsable"):
            raise ValueError("no line for this one")
        return {"topic": input["topic"], "text": response}


class Card(BaseModel):
    title: str


class CardWriter(LLM):
    response_format = Card

    def prompt(self, input: dict) -> str:
        return f"A card about {input['topic']}"

    def parse(self, input: dict, response: Card) -> dict:
        return {"topic": input["topic"], "title": response.title}


def topics(good: int, *bad: str) -> list[dict]:
    return [{"topic": f"t{i}"} for i in range(good)] + [{"topic": t} for t in bad]


def warnings_of(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "requests failed" in r.getMessage()
    ]


def test_a_call_with_failures_logs_one_warning_by_reason_and_counts_them(sim, params, wd, caplog):
    rows = topics(
        7,
        "down [[sim:500]]",
        "down too [[sim:500]]",
        "cut [[sim:length]]",
        "unparsable",
    )
    llm = Topic("gpt-4o-mini", backend_params=params(max_retries=1))
    with caplog.at_level(logging.WARNING):
        result = llm(rows, working_dir=wd)
    assert len(result.dataset) == 7
    lines = warnings_of(caplog)
    assert len(lines) == 1, lines
    where = f"{result.cache_dir}/{FAILED}"
    assert lines[0] == (
        "4 of 11 requests failed (http_500: 2, finish_reason_length: 1, parse_error: 1); "
        f"they are listed in {where}"
    )
    stats = RunStore(result.cache_dir).read_json(OUTPUT_STATS)
    assert stats["failures_by_reason"] == {
        "finish_reason_length": 1,
        "http_500": 2,
        "parse_error": 1,
    }
    failed = [json.loads(line) for line in open(result.failed_requests_path)]
    assert sorted(line["reason"] for line in failed) == [
        "finish_reason_length",
        "http_500",
        "http_500",
        "parse_error",
    ]


def test_a_batch_run_names_expired_and_schema_invalid_failures(sim, params, wd, caplog):
    sim.configure(
        batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05},
        batch_expire_fraction=0.5,
    )
    backend_params = params(max_retries=0, batch_check_interval=0.05)
    backend_params.pop("seconds_to_pause_on_rate_limit")
    llm = CardWriter("gpt-4o-mini", batch=True, backend_params=backend_params)
    rows = topics(9, "broken [[sim:schema_invalid]]")
    with caplog.at_level(logging.WARNING):
        result = llm(rows, working_dir=wd)
    stats = RunStore(result.cache_dir).read_json(OUTPUT_STATS)
    by_reason = stats["failures_by_reason"]
    assert set(by_reason) <= {"batch_expired", "schema_invalid"} and by_reason["batch_expired"]
    assert sum(by_reason.values()) == result.request_stats.failed
    assert len(warnings_of(caplog)) == 1 and "batch_expired" in warnings_of(caplog)[0]


def test_finalize_reports_failures_by_reason_in_its_result(sim, params, wd):
    llm = Topic("gpt-4o-mini", backend_params=params(max_retries=0))
    run = steps.prepare(llm, topics(3, "down [[sim:500]]"), wd)
    steps.run_online(run, llm=llm)
    result = steps.finalize(run, llm=llm)
    assert result["failures_by_reason"] == {"http_500": 1} and result["failed"] == 1


@pytest.fixture
def published(sim, params, tmp_path):
    """A complete run published to ``output_uri``; returns ``(output_uri, its marker)``."""
    output_uri = str(tmp_path / "published" / "cards")
    llm = Topic("gpt-4o-mini", backend_params=params())
    run = steps.prepare(llm, topics(10), str(tmp_path / "wd"), run_key="night-1")
    steps.run_online(run, llm=llm)
    steps.finalize(run, llm=llm, output_uri=output_uri)
    return output_uri, read_marker(output_uri, {})


def test_past_max_failed_fraction_nothing_is_published_and_sending_again_helps(
    sim, params, tmp_path, published
):
    output_uri, before = published
    llm = Topic("gpt-4o-mini", backend_params=params(max_retries=0))
    rows = topics(7, "a [[sim:500x1]]", "b [[sim:500x1]]", "c [[sim:500x1]]")
    run = steps.prepare(llm, rows, str(tmp_path / "wd"), run_key="night-2")
    steps.run_online(run, llm=llm)
    with pytest.raises(TooManyFailuresError) as err:
        steps.finalize(run, llm=llm, output_uri=output_uri)
    error = err.value
    assert isinstance(error, IncompleteRunError)
    assert error.retryable  # 5xx: sending them again can help
    assert error.failures_by_reason == {"http_500": 3} and (error.failed, error.total) == (3, 10)
    message = str(error)
    assert "3 of 10 requests failed (30.0%, more than max_failed_fraction=0.01)" in message
    assert "http_500: 3" in message and "nothing was published" in message
    assert read_marker(output_uri, {}) == before  # the previous output stays, untouched
    steps.run_online(run, llm=llm)  # the faults have run out: the three are answered now
    result = steps.finalize(run, llm=llm, output_uri=output_uri)
    assert result["failed"] == 0
    assert read_marker(output_uri, {})["run_id"] == run["run_id"]


def test_failures_that_sending_cannot_fix_are_not_retryable_and_the_limit_can_be_raised(
    sim, params, tmp_path, published
):
    output_uri, before = published
    llm = CardWriter("gpt-4o-mini", backend_params=params(max_retries=0))
    rows = topics(7, *(f"broken {i} [[sim:schema_invalid]]" for i in range(3)))
    run = steps.prepare(llm, rows, str(tmp_path / "wd"))
    steps.run_online(run, llm=llm)
    with pytest.raises(TooManyFailuresError, match="schema_invalid: 3") as err:
        steps.finalize(run, llm=llm, output_uri=output_uri, max_failed_fraction=0.2)
    assert not err.value.retryable and "raise max_failed_fraction" in str(err.value)
    assert read_marker(output_uri, {}) == before
    result = steps.finalize(  # (another LLM's columns: a new contract for the asset)
        run, llm=llm, output_uri=output_uri, max_failed_fraction=0.3, schema_evolution="replace"
    )
    assert result["output_uri"] and read_marker(output_uri, {})["rows"] == 7


def test_without_output_uri_nothing_is_gated_and_the_fraction_is_checked(sim, params, wd):
    llm = Topic("gpt-4o-mini", backend_params=params(max_retries=0))
    run = steps.prepare(llm, topics(1, "down [[sim:500]]"), wd)
    steps.run_online(run, llm=llm)
    assert steps.finalize(run, llm=llm)["failed"] == 1  # nothing to publish: no gate
    for bad in (-0.1, 1.5, "1%", True):
        with pytest.raises(ConfigError, match="max_failed_fraction"):
            steps.finalize(run, llm=llm, max_failed_fraction=bad)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("HTTP 400: {...} (after 1 attempts)", "http_400"),
        ("timeout after 30s (after 4 attempts)", "timeout"),
        ("connection error: ClientOSError: reset (after 4 attempts)", "connection_error"),
        ("rate limited 101 times; last: HTTP 429", "rate_limited"),
        ("content does not match Card: title: Field required (after 2 attempts)", "schema_invalid"),
        ("cancelled: batch b1 was cancelled by cancel() before this request ran", "cancelled"),
        ("batch b1 was cancelled before this request ran (after 1 attempts)", "batch_cancelled"),
        ("the provider rejected the batch input: HTTP 400: too big", "batch_rejected"),
        ("batch b1 failed: token_limit_exceeded: Enqueued limit", "token_limit_exceeded"),
        ("batch b1 failed: no reason given (after 1 attempts)", "batch_failed"),
        ("invalid_request_error: prompt is too long (after 1 attempts)", "invalid_request_error"),
        ("vLLM rejected this batch of 4 request(s): too long", "vllm_rejected"),
        ("something else", "error"),
    ],
)  # fmt: skip
def test_reason_keys_of_failure_lines(error, reason):
    assert reason_of({"error": error}) == reason
    assert reason_of({"error": error, "reason": "kept"}) == "kept"
