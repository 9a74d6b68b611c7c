"""A run is what it sends: changes to what prompt() renders or to the state parse() reads never
bring the old output back; editing k of N rows sends k requests; changing only parse() sends
nothing; a run_key partitions runs and response reuse."""

from __future__ import annotations

import pytest

from curator_flows import LLM

GREETING = "Hello"


def greeting() -> str:
    return GREETING


class UsesAConstant(LLM):
    def prompt(self, input: dict) -> str:
        return f"{GREETING} {input['n']}"


class UsesAHelper(LLM):
    def prompt(self, input: dict) -> str:
        return f"{greeting()} {input['n']}"


class UsesAnAttribute(LLM):
    def __init__(self, *args, tone: str = "calm", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tone = tone

    def prompt(self, input: dict) -> str:
        return f"a {self.tone} line about {input['n']}"


class ParsesWithAnAttribute(LLM):
    def __init__(self, *args, column: str = "text", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.column = column

    def prompt(self, input: dict) -> str:
        return f"line {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], self.column: response}


ROWS = [{"n": i} for i in range(5)]


@pytest.mark.parametrize("cls", [UsesAConstant, UsesAHelper])
def test_a_changed_constant_or_helper_sends_new_requests(sim, params, wd, monkeypatch, cls):
    first = cls("gpt-4o-mini", backend_params=params())(ROWS, working_dir=wd)
    monkeypatch.setattr(__import__(__name__), "GREETING", "Goodbye")
    second = cls("gpt-4o-mini", backend_params=params())(ROWS, working_dir=wd)
    assert second.cache_dir != first.cache_dir
    assert {k for k in sim.stats()["by_prompt"] if k.startswith("Goodbye")} == {
        f"Goodbye {i}" for i in range(5)
    }


def test_a_changed_instance_attribute_sends_new_requests(sim, params, wd):
    UsesAnAttribute("gpt-4o-mini", backend_params=params())(ROWS, working_dir=wd)
    loud = UsesAnAttribute("gpt-4o-mini", tone="loud", backend_params=params())(
        ROWS, working_dir=wd
    )
    assert sim.stats()["chat_completions"] == 10
    assert loud.dataset["response"][0]  # fresh answers for the new prompts


def test_parse_state_changes_reparse_without_sending(sim, params, wd):
    first = ParsesWithAnAttribute("gpt-4o-mini", backend_params=params())(ROWS, working_dir=wd)
    second = ParsesWithAnAttribute("gpt-4o-mini", column="body", backend_params=params())(
        ROWS, working_dir=wd
    )
    assert sim.stats()["chat_completions"] == 5  # nothing sent again
    assert "text" in first.dataset.column_names and "body" in second.dataset.column_names
    assert second.dataset["body"] == first.dataset["text"]


def test_editing_k_of_n_rows_sends_k_requests(sim, params, wd):
    rows = [{"n": i} for i in range(20)]
    UsesAConstant("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    edited = [dict(r) for r in rows]
    edited[3]["n"] = 103
    edited[11]["n"] = 111
    result = UsesAConstant("gpt-4o-mini", backend_params=params())(edited, working_dir=wd)
    assert sim.stats()["chat_completions"] == 22
    assert result.request_stats.cached == 18  # reused from the earlier run, not paid again


def test_run_key_partitions_runs_and_reuse(sim, params, wd):
    llm = UsesAConstant("gpt-4o-mini", backend_params=params())
    night1 = llm(ROWS, working_dir=wd, run_key="2026-11-26")
    again = llm(ROWS, working_dir=wd, run_key="2026-11-26")
    assert again.cache_dir == night1.cache_dir and sim.stats()["chat_completions"] == 5
    night2 = llm(ROWS, working_dir=wd, run_key="2026-11-27")
    assert night2.cache_dir != night1.cache_dir
    assert sim.stats()["chat_completions"] == 10  # fresh generations: nothing reused
    assert night2.request_stats.cached == 0
    plain = llm(ROWS, working_dir=wd)  # no key: content-addressed, a run of its own
    assert plain.cache_dir not in (night1.cache_dir, night2.cache_dir)
    assert night2.metadata["run_key"] == "2026-11-27"
