"""Typed backend_params and run identity: what is and is not fingerprinted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from curator_flows import LLM, steps
from curator_flows.cost import resolve_prices


class A(LLM):
    def prompt(self, input):
        return "a"


class B(LLM):
    def prompt(self, input):
        return "b"


@pytest.fixture
def run_id_for(wd):
    """``run_id_for(llm, data)``: the id of the run ``llm`` prepares over one row ``data``."""
    return lambda llm, data: steps.prepare(llm, [{"data": data}], wd, rebuild_check=False)["run_id"]


def test_secrets_limits_and_concurrency_do_not_change_the_run_id(run_id_for):
    base = A("gpt-4o-mini", backend_params={"api_key": "one"})
    other = A(
        "gpt-4o-mini",
        backend_params={
            "api_key": "two",
            "max_requests_per_minute": 5,
            "max_concurrent_requests": 3,
        },
    )
    assert run_id_for(base, "data") == run_id_for(other, "data")


def test_output_affecting_inputs_change_the_run_id(run_id_for):
    base = run_id_for(A("gpt-4o-mini"), "data")
    assert run_id_for(A("gpt-4o"), "data") != base
    assert run_id_for(A("gpt-4o-mini", generation_params={"temperature": 0.1}), "data") != base
    assert run_id_for(A("gpt-4o-mini", backend_params={"max_tokens": 10}), "data") != base
    assert run_id_for(B("gpt-4o-mini"), "data") != base
    assert run_id_for(A("gpt-4o-mini"), "other data") != base


def test_public_config_has_no_api_key():
    llm = A("gpt-4o-mini", backend_params={"api_key": "sk-secret-value"})
    assert "sk-secret-value" not in repr(llm.config.public_dict())
    assert "sk-secret-value" not in repr(llm.spec())


def test_prices_from_the_table_and_overrides():
    table = resolve_prices("gpt-4o-mini")
    assert table.input and table.output
    batch = resolve_prices("gpt-4o-mini", batch=True)
    assert batch.input == table.input / 2
    override = resolve_prices("gpt-4o-mini", in_mtok_cost=1.5, out_mtok_cost=2.5)
    assert (override.input, override.output) == (1.5, 2.5)
    assert resolve_prices("unknown-model").input is None


def test_import_is_fast_and_light():
    code = (
        "import sys, time; t = time.perf_counter(); import curator_flows; "
        "dt = time.perf_counter() - t; "
        "heavy = [m for m in ('litellm','vllm','datasets','openai','airflow','prefect','pydantic',"
        "'aiohttp') if m in sys.modules]; print(dt, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, heavy = out.stdout.split(" ", 1)
    assert heavy.strip() == "[]"
    assert float(seconds) < 0.3


def test_vllm_engine_arguments_that_change_outputs_change_the_run_id(run_id_for):
    def run_id(**engine):
        llm = A("/models/tiny", backend="vllm", backend_params={"engine_kwargs": engine})
        return run_id_for(llm, "data")

    assert run_id(dtype="float32") != run_id(dtype="bfloat16")
    assert run_id(dtype="float32", kv_cache_memory_bytes=1 << 28) == run_id(dtype="float32")


def test_invalid_finish_reasons_judge_stored_answers_again_without_a_new_run(sim, params, wd):
    class Echo(LLM):
        def prompt(self, input):
            return input["text"]

    rows = [{"text": "one"}, {"text": "two"}, {"text": "[[sim:lengthx1]] cut off once"}]
    lenient = Echo("gpt-4o-mini", backend_params=params(invalid_finish_reasons=[]))
    first = lenient(rows, working_dir=wd)  # the cut-off answer is accepted and stored
    assert first.request_stats.failed == 0 and sim.stats()["chat_completions"] == 3
    strict = Echo("gpt-4o-mini", backend_params=params())  # "length" is refused again
    second = strict(rows, working_dir=wd)
    assert second.cache_dir == first.cache_dir  # the same run: what is sent did not change
    assert second.request_stats.failed == 0
    assert sim.stats()["chat_completions"] == 4  # only the refused answer is sent again
