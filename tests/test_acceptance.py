"""The acceptance rule judges stored answers on every call: a ``response_format`` validator whose
behaviour changes through its environment (a variable, a module constant) while its source
stays the same is applied to the stored answers of a finished run, never skipped by a cache
hit; over real HTTP against the simulator."""

from __future__ import annotations

import os

import pytest
from pydantic import BaseModel, ConfigDict, field_validator

from curator_flows import LLM

#: names the validator refuses besides those in CF_TEST_REFUSED_NAMES (a test fills it)
REFUSED_NAMES: set[str] = set()


def _refused() -> set[str]:
    return REFUSED_NAMES | set(filter(None, os.environ.get("CF_TEST_REFUSED_NAMES", "").split(",")))


class Dish(BaseModel):
    model_config = ConfigDict(title="Dish")
    name: str
    calories: int

    @field_validator("name")
    @classmethod
    def allowed(cls, value: str) -> str:
        if value in _refused():
            raise ValueError("a refused name")
        if os.environ.get("CF_TEST_SHOUT"):
            return value.upper()
        return value


class DishWriter(LLM):
    response_format = Dish

    def prompt(self, input: dict) -> str:
        return f"a dish named after {input['n']}"

    def parse(self, input: dict, response: Dish) -> dict:
        return {"n": input["n"], "name": response.name}


@pytest.fixture(autouse=True)
def _clean_rule(monkeypatch):
    REFUSED_NAMES.clear()
    monkeypatch.delenv("CF_TEST_REFUSED_NAMES", raising=False)
    monkeypatch.delenv("CF_TEST_SHOUT", raising=False)
    yield
    REFUSED_NAMES.clear()


@pytest.mark.parametrize("tightened_through", ["environment", "module constant"])
def test_a_rule_tightened_without_a_code_change_is_applied_to_a_finished_run(
    sim, params, wd, monkeypatch, tightened_through
):
    rows = [{"n": i} for i in range(12)]
    llm = DishWriter("gpt-4o-mini", backend_params=params(max_retries=0))
    first = llm(rows, working_dir=wd)
    assert len(first.dataset) == 12 and sim.stats()["requests"] == 12
    refused = {row["name"] for row in first.dataset if row["n"] % 4 == 0}
    if tightened_through == "environment":
        monkeypatch.setenv("CF_TEST_REFUSED_NAMES", ",".join(sorted(refused)))
    else:
        REFUSED_NAMES.update(refused)

    # The stored answers are judged: the refused ones are taken back and sent again in the
    # same call (the simulator answers the same prompt the same way, so they fail again).
    again = llm(rows, working_dir=wd)
    assert sim.stats()["requests"] == 12 + len(refused)
    assert again.request_stats.failed == len(refused)
    assert again.dataset["n"] == [n for n in range(12) if n % 4]
    assert not set(again.dataset["name"]) & refused

    monkeypatch.delenv("CF_TEST_REFUSED_NAMES", raising=False)
    REFUSED_NAMES.clear()
    relaxed = llm(rows, working_dir=wd)  # only the failed ones are sent
    assert sim.stats()["requests"] == 12 + 2 * len(refused)
    assert relaxed.dataset.to_list() == first.dataset.to_list()
    llm(rows, working_dir=wd)  # every stored answer passes: a cache hit, nothing sent
    assert sim.stats()["requests"] == 12 + 2 * len(refused)


def test_a_validator_that_normalises_differently_reparses_without_sending(
    sim, params, wd, monkeypatch
):
    rows = [{"n": i} for i in range(5)]
    first = DishWriter("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    monkeypatch.setenv("CF_TEST_SHOUT", "1")
    shouted = DishWriter("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert sim.stats()["requests"] == 5
    assert shouted.dataset["name"] == [name.upper() for name in first.dataset["name"]]


class Buggy(BaseModel):
    model_config = ConfigDict(title="Dish")
    name: str
    calories: int

    @field_validator("name")
    @classmethod
    def broken(cls, value: str) -> str:
        return {"known": value}["unknown"]  # a KeyError, not a validation error


class BuggyWriter(DishWriter):
    response_format = Buggy


def test_a_validator_raising_its_own_bug_refuses_the_answer_and_loses_nothing(sim, params, wd):
    from curator_flows import IncompleteRunError

    llm = BuggyWriter("gpt-4o-mini", backend_params=params(max_retries=1))
    with pytest.raises(IncompleteRunError) as error:
        llm([{"n": i} for i in range(4)], working_dir=wd)
    assert error.value.failed == 4 and not error.value.retryable
    assert sim.stats()["requests"] == 8  # every answer judged (and refused), none dropped
    failures = [line for line in open(error.value.failed_requests_uri) if line.strip()]
    assert len(failures) == 4 and all("raised KeyError" in line for line in failures)
