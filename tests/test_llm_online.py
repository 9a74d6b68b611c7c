"""LLM.__call__ in online mode, over real HTTP against the simulator."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from curator_flows import LLM, AuthenticationError, IncompleteRunError
from curator_flows.store import RunStore


class Topic(LLM):
    def prompt(self, input: dict) -> str:
        return f"Write one line about {input['topic']}."

    def parse(self, input: dict, response: str) -> dict:
        return {"topic": input["topic"], "text": response}


class Mood(StrEnum):
    calm = "calm"
    loud = "loud"


class Step(BaseModel):
    order: int
    text: str


class Recipe(BaseModel):
    title: str
    mood: Mood
    ingredients: list[str] = Field(min_length=1)
    steps: list[Step]
    note: str | None = None


class RecipeWriter(LLM):
    response_format = Recipe

    def prompt(self, input: dict) -> str:
        return f"A recipe for {input['dish']}"

    def parse(self, input: dict, response: Recipe) -> dict:
        assert isinstance(response, Recipe)
        return {"dish": input["dish"], "title": response.title, "n_steps": len(response.steps)}


def prompts_seen(sim) -> dict[str, int]:
    return sim.stats()["by_prompt"]


def test_happy_path_keeps_order_and_sends_each_prompt_once(sim, params, wd):
    rows = [{"topic": f"topic-{i}"} for i in range(60)]
    result = Topic("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)

    assert [r["topic"] for r in result.dataset] == [r["topic"] for r in rows]
    assert all(r["text"] for r in result.dataset)
    seen = prompts_seen(sim)
    assert len(seen) == 60 and set(seen.values()) == {1}
    assert result.request_stats.total == result.request_stats.succeeded == 60
    assert result.request_stats.failed == 0
    assert result.token_usage.input > 0 and result.token_usage.output > 0
    assert result.cost_info.total_cost > 0  # gpt-4o-mini is in the price table
    assert result.model_name == "gpt-4o-mini" and result.batch_mode is False
    assert result.cache_dir.startswith(wd) and result.failed_requests_path is None
    assert result.performance_stats.total_time > 0


def test_structured_output_is_validated_into_the_model(sim, params, wd):
    dishes = [{"dish": d} for d in ("soup", "pie", "stew", "salad")]
    result = RecipeWriter("gpt-4o-mini", backend_params=params())(dishes, working_dir=wd)
    assert [r["dish"] for r in result.dataset] == ["soup", "pie", "stew", "salad"]
    assert all(r["n_steps"] >= 0 and r["title"] for r in result.dataset)


def test_default_prompt_and_parse_for_strings(sim, params, wd):
    result = LLM("gpt-4o-mini", backend_params=params())(["hello there", "general"], working_dir=wd)
    assert result.dataset.column_names == ["response"]
    assert len(result.dataset) == 2
    assert set(prompts_seen(sim)) == {"hello there", "general"}


def test_parse_may_return_several_rows_or_none(sim, params, wd):
    class Fanout(Topic):
        def parse(self, input, response):
            n = int(input["topic"])
            return [{"topic": n, "k": k} for k in range(n)]

    result = Fanout("gpt-4o-mini", backend_params=params())(
        [{"topic": "0"}, {"topic": "2"}, {"topic": "1"}], working_dir=wd
    )
    assert [(r["topic"], r["k"]) for r in result.dataset] == [(2, 0), (2, 1), (1, 0)]
    assert result.request_stats.succeeded == 3  # the dropped row's response stays paid for


def test_429_storm_all_rows_arrive_and_the_limit_holds(sim, params, wd):
    sim.configure(rpm=600)  # the server allows 10 requests/s
    rows = [{"topic": f"storm-{i}"} for i in range(40)]
    # The client is told a limit 10x the real one, so it runs into 429s and must back off.
    result = Topic("gpt-4o-mini", backend_params=params(max_requests_per_minute=6000))(
        rows, working_dir=wd
    )
    stats = sim.stats()
    assert len(result.dataset) == 40 and result.request_stats.failed == 0
    assert stats["status_counts"].get("429", 0) > 0
    assert stats["status_counts"]["200"] == 40
    assert set(stats["by_prompt"].values()) >= {1}
    assert result.request_stats.rate_limited == stats["status_counts"]["429"]


def test_transient_faults_are_retried(sim, params, wd):
    rows = [
        {"topic": "a [[sim:500x2]]"},
        {"topic": "b [[sim:dropx1]]"},
        {"topic": "c [[sim:malformedx1]]"},
        {"topic": "d [[sim:hangx1]]"},
        {"topic": "e [[sim:lengthx1]]"},
        {"topic": "f [[sim:429x1]]"},
        {"topic": "g"},
    ]
    sim.configure(hang_seconds=5)
    llm = Topic("gpt-4o-mini", backend_params=params(request_timeout=1, max_retries=3))
    result = llm(rows, working_dir=wd)
    assert result.request_stats.failed == 0
    assert [r["topic"] for r in result.dataset] == [r["topic"] for r in rows]
    seen = prompts_seen(sim)
    assert seen["Write one line about a [[sim:500x2]]."] == 3
    assert seen["Write one line about g."] == 1
    faults = sim.stats()["faults"]
    assert faults.get("drop") == 1 and faults.get("malformed") == 1 and faults.get("hang") == 1


def test_final_failures_land_in_failed_requests_with_reasons(sim, params, wd):
    rows = [
        {"topic": "ok"},
        {"topic": "always 500 [[sim:500]]"},
        {"topic": "always length [[sim:length]]"},
    ]
    result = Topic("gpt-4o-mini", backend_params=params(max_retries=1))(rows, working_dir=wd)
    assert [r["topic"] for r in result.dataset] == ["ok"]
    assert result.request_stats.failed == 2
    path = str(result.failed_requests_path)
    lines = [json.loads(line) for line in open(path)]
    reasons = {line["row"]: line["error"] for line in lines}
    assert set(reasons) == {1, 2}
    assert "HTTP 500" in reasons[1] and "after 2 attempts" in reasons[1]
    assert "finish_reason 'length'" in reasons[2]
    assert prompts_seen(sim)["Write one line about always 500 [[sim:500]]."] == 2


def test_schema_invalid_content_is_retried_then_failed(sim, params, wd):
    rows = [
        {"dish": "fixed later [[sim:schema_invalidx1]]"},
        {"dish": "never [[sim:schema_invalid]]"},
    ]
    result = RecipeWriter("gpt-4o-mini", backend_params=params(max_retries=2))(rows, working_dir=wd)
    assert [r["dish"] for r in result.dataset] == ["fixed later [[sim:schema_invalidx1]]"]
    failed = [json.loads(line) for line in open(result.failed_requests_path)]
    assert len(failed) == 1 and failed[0]["row"] == 1
    assert "does not match Recipe" in failed[0]["error"]


def test_a_wrong_key_stops_at_once_records_nothing_and_a_right_key_sends_everything(
    sim, params, wd
):
    sim.configure(require_api_key="the-right-key")
    rows = [{"topic": f"k{i}"} for i in range(300)]
    with pytest.raises(AuthenticationError, match="Incorrect API key") as err:
        Topic("gpt-4o-mini", backend_params=params(max_retries=5))(rows, working_dir=wd)
    assert not err.value.retryable and err.value.status == 401
    assert "the-right-key" not in str(err.value)
    assert sim.stats()["status_counts"]["401"] <= 3  # the breaker stops dispatch at once
    run_dir = next(p for p in Path(wd).iterdir() if p.is_dir())
    assert not list(run_dir.glob("responses/*"))  # nothing recorded as answered
    result = Topic("gpt-4o-mini", backend_params=params(api_key="the-right-key"))(
        rows, working_dir=wd
    )
    assert result.request_stats.succeeded == 300 and result.cache_dir.endswith(run_dir.name)


def test_require_all_responses_raises_after_storing_and_resumes(sim, params, wd):
    rows = [{"topic": f"t{i}"} for i in range(5)] + [{"topic": "bad [[sim:500x2]]"}]
    llm = Topic("gpt-4o-mini", backend_params=params(max_retries=1, require_all_responses=True))
    with pytest.raises(IncompleteRunError) as error:
        llm(rows, working_dir=wd)
    assert "1 of 6 requests failed" in str(error.value)
    assert "failed_requests.jsonl" in str(error.value)
    before = sim.stats()["requests"]
    result = llm(rows, working_dir=wd)  # the fault has run out: only the failed row is sent
    assert len(result.dataset) == 6
    assert sim.stats()["requests"] - before == 1


def test_editing_3_of_100_rows_sends_3_requests(sim, params, wd):
    rows = [{"topic": f"row-{i}"} for i in range(100)]
    llm = Topic("gpt-4o-mini", backend_params=params())
    llm(rows, working_dir=wd)
    assert sim.stats()["requests"] == 100
    edited = list(rows)
    for i in (3, 50, 97):
        edited[i] = {"topic": f"edited-{i}"}
    result = llm(edited, working_dir=wd)
    assert sim.stats()["requests"] == 103
    assert [r["topic"] for r in result.dataset] == [r["topic"] for r in edited]
    assert result.request_stats.cached == 97


def test_changing_parse_reparses_without_requests(sim, params, wd):
    rows = [{"topic": f"p{i}"} for i in range(10)]
    Topic("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)

    class Shouting(Topic):
        def parse(self, input, response):
            return {"topic": input["topic"].upper()}

    before = sim.stats()["requests"]
    result = Shouting("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert sim.stats()["requests"] == before
    assert result.dataset["topic"][:2] == ["P0", "P1"]


def test_cache_hit_sends_nothing(sim, params, wd):
    rows = [{"topic": f"c{i}"} for i in range(20)]
    first = Topic("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    second = Topic("gpt-4o-mini", backend_params=params(max_requests_per_minute=10))(
        rows, working_dir=wd
    )
    assert sim.stats()["requests"] == 20
    assert second.cache_dir == first.cache_dir  # rate limits are not part of the run id
    # statistics are the run's (the same whichever call or process reads them)
    assert second.request_stats == first.request_stats
    assert second.request_stats.attempts == 20 and second.request_stats.succeeded == 20
    assert second.dataset.to_list() == first.dataset.to_list()


def test_api_key_never_reaches_the_run_directory(sim, params, wd):
    secret = "sk-live-this-must-never-be-stored-0123456789"
    result = Topic("gpt-4o-mini", backend_params=params(api_key=secret))(
        [{"topic": "s"}], working_dir=wd
    )
    for root, _dirs, files in os.walk(result.cache_dir):
        for name in files:
            assert secret not in open(os.path.join(root, name), errors="replace").read()


def test_memory_working_dir(sim, params):
    result = Topic("gpt-4o-mini", backend_params=params())(
        [{"topic": "m1"}, {"topic": "m2"}], working_dir="memory://curator-test/wd"
    )
    assert result.cache_dir.startswith("memory://")
    assert [r["topic"] for r in result.dataset] == ["m1", "m2"]
    store = RunStore(result.cache_dir)
    assert store.exists("manifest.json") and store.glob("responses/*")


def test_progress_is_logged_when_not_a_terminal(sim, params, wd, caplog):
    caplog.set_level("INFO", logger="curator_flows")
    Topic("gpt-4o-mini", backend_params=params(progress="log"))([{"topic": "x"}], working_dir=wd)
    lines = [r.getMessage() for r in caplog.records if r.name == "curator_flows.progress"]
    assert lines and "1/1" in lines[-1] and "req/s" in lines[-1]


def test_datasets_dataset_input(sim, params, wd):
    import datasets

    rows = datasets.Dataset.from_list([{"topic": f"ds-{i}"} for i in range(8)])
    result = Topic("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert result.dataset["topic"] == rows["topic"]
    assert isinstance(result.dataset, datasets.Dataset)
