"""Batch mode end to end against the simulator over real HTTP, for both providers."""

from __future__ import annotations

from collections import Counter

import pytest
from batch_helpers import (
    BACKENDS,
    FAST,
    credentials,
    failed_requests,
    make_llm,
    record,
    response_lines,
    success_counts,
    wait_done,
)
from batch_llms import FactWriter, Numbered

from curator_flows import IncompleteRunError, steps


@pytest.mark.parametrize("backend", BACKENDS)
def test_happy_path_one_batch_per_shard_in_order_with_batch_prices(bsim, wd, backend):
    rows = [{"n": i} for i in range(90)]
    result = make_llm(Numbered, backend, bsim, batch_size=40)(rows, working_dir=wd)

    assert result.dataset["n"] == list(range(90))
    assert all(result.dataset["response"])
    assert result.batch_mode and result.request_stats.succeeded == 90
    stats = bsim.stats()
    assert set(stats["by_prompt"].values()) == {1}  # every request sent once
    assert stats["batches_created"] == 3  # 40 + 40 + 10
    run_id = result.metadata["run_id"]
    if backend == "openai":  # tagged with run id and shard
        assert stats["batches_by_run_shard"] == {
            f"{run_id}/{s}": 1 for s in ("00000", "00001", "00002")
        }
    lines = response_lines(result.cache_dir)
    assert len(lines) == 90 and all(line["batch_id"] for line in lines)
    # batch prices: half of in_mtok_cost=1 / out_mtok_cost=2
    assert result.cost_info.input_cost_per_million == 0.5
    assert result.cost_info.output_cost_per_million == 1.0
    expected = sum((line["usage"][0] * 0.5 + line["usage"][1] * 1.0) / 1e6 for line in lines)
    assert result.cost_info.total_cost == pytest.approx(expected)
    assert all(line["cost"] > 0 for line in lines)
    for shard in ("00000", "00001", "00002"):
        rounds = record(result.cache_dir, shard)["rounds"]
        assert [r["state"] for r in rounds] == ["collected"]

    # a second call sends nothing
    again = make_llm(Numbered, backend, bsim, batch_size=40)(rows, working_dir=wd)
    assert again.dataset["n"] == list(range(90))
    assert bsim.stats()["batches_created"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_structured_output_retries_invalid_content_in_a_next_round(bsim, wd, backend):
    rows = [{"topic": f"t{i}"} for i in range(12)]
    rows[3]["marker"] = " [[sim:schema_invalidx1]]"
    rows[7]["marker"] = " [[sim:lengthx1]]"
    result = make_llm(FactWriter, backend, bsim)(rows, working_dir=wd)

    assert result.dataset["topic"] == [r["topic"] for r in rows]
    assert result.request_stats.failed == 0
    by_prompt = bsim.stats()["by_prompt"]
    assert by_prompt["a fact about t3 [[sim:schema_invalidx1]]"] == 2
    assert by_prompt["a fact about t7 [[sim:lengthx1]]"] == 2
    assert by_prompt["a fact about t0"] == 1
    rounds = record(result.cache_dir, "00000")["rounds"]
    assert [r["requests"] for r in rounds] == [12, 2]
    # the tokens of the rejected first answers are charged to the final lines
    retried = [line for line in response_lines(result.cache_dir) if line.get("wasted")]
    assert len(retried) == 2 and all(line["attempts"] == 2 for line in retried)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expired_batch_keeps_partial_results_and_resubmits_only_the_missing(bsim, wd, backend):
    bsim.configure(batch_expire_fraction=0.5)
    llm = make_llm(Numbered, backend, bsim)
    run = steps.prepare(llm, [{"n": i} for i in range(40)], wd)

    first = steps.submit(run, "00000", llm=llm)
    assert first["state"] == "submitted" and first["created"] and first["requests"] == 40
    assert steps.submit(run, "00000", llm=llm)["created"] is False  # never twice
    ended = wait_done(run, "00000", credentials=credentials())
    assert ended["status"] in ("expired", "ended")
    bsim.configure(batch_expire_fraction=None)
    collected = steps.collect(run, "00000", llm=llm)
    assert collected["succeeded"] == 20 and collected["retry"] == 20 and collected["resubmit"]
    assert steps.collect(run, "00000", llm=llm)["succeeded"] == 20  # idempotent
    round0 = set(success_counts(run["run_uri"]))

    second = steps.submit(run, "00000", llm=llm)
    assert second["round"] == 1 and second["requests"] == 20 and second["created"]
    wait_done(run, "00000", credentials=credentials())
    last = steps.collect(run, "00000", llm=llm)
    assert last["succeeded"] == 20 and last["done"] and not last["resubmit"]
    assert steps.submit(run, "00000", llm=llm)["state"] == "done"

    stats = bsim.stats()
    assert stats["batches_created"] == 2
    items = stats["batch_items_by_prompt"]
    assert sum(items.values()) == 60
    resent = {int(k.split()[1]) for k, v in items.items() if v == 2}
    assert len(resent) == 20
    lines = response_lines(run["run_uri"])
    assert Counter(line["id"] for line in lines).most_common(1)[0][1] == 1
    assert {line["id"] for line in lines if line["round"] == 0} == round0
    steps.finalize(run, llm=llm)
    result = steps.load_response(run)
    assert result.dataset["n"] == list(range(40))


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_item_errors_retry_in_new_rounds_then_fail_with_the_reason(bsim, wd, backend):
    rows = [{"n": i} for i in range(10)]
    rows[2]["marker"] = " [[sim:500x1]]"
    rows[5]["marker"] = " [[sim:500]]"
    result = make_llm(Numbered, backend, bsim, max_retries=2)(rows, working_dir=wd)

    assert result.dataset["n"] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert result.request_stats.failed == 1
    by_prompt = bsim.stats()["by_prompt"]
    assert by_prompt["number 2 [[sim:500x1]]"] == 2
    assert by_prompt["number 5 [[sim:500]]"] == 3  # max_retries=2: three rounds
    assert by_prompt["number 0"] == 1
    rounds = record(result.cache_dir, "00000")["rounds"]
    assert [r["requests"] for r in rounds] == [10, 2, 1]
    (failure,) = failed_requests(result.cache_dir)
    assert failure["row"] == 5 and failure["attempts"] == 3
    assert "after 3 attempts" in failure["error"]
    assert "500" in failure["error"] or "api_error" in failure["error"]
    (line,) = [line for line in response_lines(result.cache_dir) if "error" in line]
    assert line["retryable"] is True  # a server error: another campaign may succeed


#: a row's own generation params the provider refuses (a 400 for the item; values that no
#: endpoint takes, such as max_tokens=0, are refused before sending, at prepare)
NAMES_A_MISSING_TOOL = {
    "openai": {
        "tools": [{"type": "function", "function": {"name": "a", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "missing"}},
    },
    "anthropic": {
        "tools": [{"name": "a", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "missing"},
    },
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_refused_for_what_they_are_fail_as_not_retryable(bsim, wd, backend):
    rows = [{"n": i} for i in range(4)]
    rows[1]["generation_params"] = NAMES_A_MISSING_TOOL[backend]  # the provider refuses it (4xx)
    rows[2]["marker"] = " [[sim:length]]"  # every answer cut off: refused by the model's rule
    llm = make_llm(Numbered, backend, bsim, max_retries=1, require_all_responses=True)
    with pytest.raises(IncompleteRunError) as error:
        llm(rows, working_dir=wd)
    assert error.value.failed == 2 and error.value.retryable is False
    run_uri = error.value.failed_requests_uri.rsplit("/", 1)[0]
    failures = [line for line in response_lines(run_uri) if "error" in line]
    assert len(failures) == 2 and not any(line["retryable"] for line in failures)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancel_stops_the_run_and_a_new_call_resumes(bsim, wd, backend):
    bsim.configure(batch_timings={**FAST, "in_progress": 30.0})
    llm = make_llm(Numbered, backend, bsim, batch_size=10)
    rows = [{"n": i} for i in range(20)]
    run = steps.prepare(llm, rows, wd)
    for shard in run["shards"]:
        assert steps.submit(run, shard, llm=llm)["state"] == "submitted"

    cancelled = steps.cancel(run, credentials=credentials())
    assert len(cancelled["batches"]) == 2 and not cancelled["errors"]
    assert bsim.stats()["batches_cancelled"] == 2
    for shard in run["shards"]:
        wait_done(run, shard, credentials=credentials())
        collected = steps.collect(run, shard, llm=llm)
        assert collected["done"] and not collected["resubmit"]
        assert steps.submit(run, shard, llm=llm)["state"] == "cancelled"  # no new round
    assert bsim.stats()["batches_created"] == 2
    report = steps.status(run)
    assert report["cancelled"] and report["totals"]["failed"] == 20
    with pytest.raises(IncompleteRunError, match="every request of the run failed") as err:
        steps.finalize(run, llm=llm)  # every request failed: the run raises, files are written
    assert err.value.failed == 20 and err.value.failed_requests_uri.endswith("jsonl")
    assert steps.load_response(run).request_stats.failed == 20
    assert all("cancel" in f["error"] for f in failed_requests(run["run_uri"]))

    bsim.configure(batch_timings=FAST)
    result = llm(rows, working_dir=wd)  # a new call starts a new campaign
    assert result.dataset["n"] == list(range(20)) and result.request_stats.failed == 0
    assert bsim.stats()["batches_created"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_validation_fails_every_request_with_the_reason(bsim, wd, backend):
    bsim.configure(batch_fail_validation=True)
    rows = [{"n": i} for i in range(6)]
    with pytest.raises(IncompleteRunError) as err:
        make_llm(Numbered, backend, bsim, max_retries=1)(rows, working_dir=wd)
    result = steps.load_response(err.value.failed_requests_uri.rsplit("/", 1)[0])
    assert len(result.dataset) == 0 and result.request_stats.failed == 6
    failures = failed_requests(result.cache_dir)
    assert len(failures) == 6
    assert all("validation" in f["error"].lower() for f in failures)
    # OpenAI: the whole batch failed, retried once (2 rounds); Anthropic: every item is an
    # invalid_request_error, which no retry can fix (1 round)
    rounds = record(result.cache_dir, "00000")["rounds"]
    assert len(rounds) == (2 if backend == "openai" else 1)
    assert bsim.stats()["batches_created"] == len(rounds)


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_reports_states_counts_and_cost(bsim, wd, backend):
    llm = make_llm(Numbered, backend, bsim, batch_size=5)
    run = steps.prepare(llm, [{"n": i} for i in range(10)], wd)
    report = steps.status(run)
    assert [s["state"] for s in report["shards"]] == ["not_submitted", "not_submitted"]
    steps.submit(run, "00000", llm=llm)
    assert steps.status(run)["shards"][0]["state"] == "in_flight"
    wait_done(run, "00000", credentials=credentials())
    assert steps.status(run)["shards"][0]["state"] == "awaiting_collect"
    steps.collect(run, "00000", llm=llm)
    report = steps.status(run)
    first, second = report["shards"]
    assert first["state"] == "done" and first["succeeded"] == 5 and first["cost"] > 0
    assert first["batch"]["state"] == "collected" and first["batch"]["batch_id"]
    assert second["state"] == "not_submitted" and second["pending"] == 5
    assert report["totals"]["succeeded"] == 5 and report["totals"]["pending"] == 5
