"""Bad input: each fails with a clear error and loses nothing."""

from __future__ import annotations

import datetime
import json
import re

import pytest

from curator_flows import LLM, ConfigError, IncompleteRunError, InputError, PromptError
from curator_flows.errors import OutputError


class Echo(LLM):
    def prompt(self, input):
        return f"echo {input['x']}"

    def parse(self, input, response):
        return {"x": input["x"], "response": response}


def test_empty_dataset_gives_an_empty_result(sim, params, wd):
    result = Echo("gpt-4o-mini", backend_params=params())([], working_dir=wd)
    assert len(result.dataset) == 0
    assert result.request_stats.total == 0
    assert sim.stats()["requests"] == 0


def test_prompt_raising_names_the_row_and_sends_nothing(sim, params, wd):
    rows = [{"x": 1}, {"x": 2}, {"y": 3}]
    with pytest.raises(PromptError, match=r"row 2.*KeyError"):
        Echo("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert sim.stats()["requests"] == 0


def test_prompt_returning_garbage_names_the_row(sim, params, wd):
    class Bad(Echo):
        def prompt(self, input):
            return 42

    with pytest.raises(PromptError, match="row 0 returned int"):
        Bad("gpt-4o-mini", backend_params=params())([{"x": 1}], working_dir=wd)


def test_parse_raising_skips_the_row_names_it_and_keeps_its_response(sim, params, wd):
    class Fragile(Echo):
        def parse(self, input, response):
            if input["x"] == 7:
                raise ValueError("cannot handle seven")
            return {"x": input["x"]}

    rows = [{"x": i} for i in range(10)]
    result = Fragile("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert [row["x"] for row in result.dataset] == [i for i in range(10) if i != 7]
    (failed,) = result.get_failed_requests()
    assert failed["row"] == 7
    assert re.search(r"row 7: ValueError: cannot handle seven", failed["error"])
    assert "nothing is sent" in failed["error"]
    assert sim.stats()["requests"] == 10
    fixed = Echo("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert len(fixed.dataset) == 10
    assert sim.stats()["requests"] == 10  # re-parsed from the stored responses


def test_parse_raising_on_every_row_fails_the_call_permanently(sim, params, wd):
    class Broken(Echo):
        def parse(self, input, response):
            raise KeyError("missing")

    with pytest.raises(IncompleteRunError, match="every request of the run failed") as error:
        Broken("gpt-4o-mini", backend_params=params())([{"x": 1}, {"x": 2}], working_dir=wd)
    assert error.value.retryable is False  # the same parse() fails the same way


def test_unknown_backend_param_names_it_and_the_allowed_keys():
    with pytest.raises(ConfigError) as error:
        Echo("gpt-4o-mini", backend_params={"max_request_per_minute": 10})
    message = str(error.value)
    assert "max_request_per_minute" in message and "max_requests_per_minute" in message


def test_mistyped_backend_param_names_it():
    with pytest.raises(ConfigError, match="max_retries"):
        Echo("gpt-4o-mini", backend_params={"max_retries": "many"})
    with pytest.raises(ConfigError, match="max_tokens_per_minute"):
        Echo(
            "gpt-4o-mini",
            backend_params={"max_tokens_per_minute": 10, "max_input_tokens_per_minute": 5},
        )


def test_costs_accept_floats():
    llm = Echo("gpt-4o-mini", backend_params={"in_mtok_cost": 0.15, "out_mtok_cost": 0.6})
    assert llm.config.in_mtok_cost == 0.15


def test_batch_only_params_are_rejected_online():
    with pytest.raises(ConfigError, match="batch_size"):
        Echo("gpt-4o-mini", backend_params={"batch_size": 10})


def test_row_value_that_is_not_json_names_row_and_column(sim, params, wd):
    rows = [{"x": 1}, {"x": 2, "when": object()}]
    with pytest.raises(InputError, match=r"row 1, column 'when'.*object"):
        Echo("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert sim.stats()["requests"] == 0


def test_datetimes_are_serialised_not_rejected(sim, params, wd):
    rows = [{"x": 1, "when": datetime.datetime(2026, 1, 1)}]
    result = Echo("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert len(result.dataset) == 1


def test_unknown_backend_is_rejected():
    with pytest.raises(ConfigError, match="unknown backend"):
        LLM("gpt-4o-mini", backend="nope")


def test_batch_with_litellm_is_rejected():
    with pytest.raises(ConfigError, match="batch=True"):
        LLM("mistral-large", batch=True)


def test_a_row_containing_itself_or_nested_too_deep_fails_at_prepare_before_anything_is_sent(
    sim, params, wd
):
    looped: dict = {"x": 1}
    looped["self"] = looped
    deep: dict = {}
    cursor = deep
    for _ in range(3000):
        cursor["d"] = {}
        cursor = cursor["d"]
    for bad, match in ((looped, "contains itself"), ({"x": deep}, "nested more than")):
        with pytest.raises(InputError, match=rf"row 1, column .*{match}"):
            Echo("gpt-4o-mini", backend_params=params())([{"x": 0}, bad], working_dir=wd)
    assert sim.stats()["requests"] == 0


class Keeper(LLM):
    """``parse()`` returns the input row's values as they are."""

    def prompt(self, input):
        return f"keep {input['n']}"

    def parse(self, input, response):
        return {"n": input["n"], "value": input["value"]}


def test_numpy_arrays_missing_pandas_values_and_nested_lone_surrogates_are_stored(sim, params, wd):
    import numpy as np
    import pandas as pd

    rows = [
        {"n": 0, "value": np.array([[1, 2], [3, 4]])},
        {"n": 1, "value": np.array([[5, 6]])},
        {"n": 2, "value": pd.NaT},
        {"n": 3, "value": pd.NA},
    ]
    kept = Keeper("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert kept.dataset["value"] == [[[1, 2], [3, 4]], [[5, 6]], None, None]
    surrogates = [{"n": 0, "value": {"name": "a\ud800b"}}, {"n": 1, "value": ["\udfff"]}]
    text = Keeper("gpt-4o-mini", backend_params=params())(surrogates, working_dir=wd)
    assert [json.loads(v) for v in text.dataset["value"]] == [{"name": "a\ud800b"}, ["\udfff"]]


def test_a_parsed_column_name_that_is_not_text_names_the_row(sim, params, wd):
    class Odd(Echo):
        def parse(self, input, response):
            return {"x\ud800": input["x"]}

    with pytest.raises(OutputError, match=r"row 0: the column name 'x\\ud800' is not valid text"):
        Odd("gpt-4o-mini", backend_params=params())([{"x": 1}], working_dir=wd)
