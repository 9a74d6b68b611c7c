"""The cost budget (max_cost) and estimates, over real HTTP against the simulator."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from curator_flows import BudgetExceededError, ConfigError, steps
from curator_flows.cli import main as cli

sys.path.insert(0, str(Path(__file__).parent / "support"))

from resume_llms import Numbered  # noqa: E402

# $1 per million input tokens, $1 per million output tokens: a request costs ~$0.00005
PRICED = {"in_mtok_cost": 1.0, "out_mtok_cost": 1.0}


def numbered(sim, **extra):
    params = {"base_url": sim.base_url, "api_key": "k", "progress": "off", **PRICED, **extra}
    return Numbered("gpt-4o-mini", backend_params=params)


def test_estimate_projects_the_pending_cost_and_sends_nothing(sim, wd):
    llm = numbered(sim, max_tokens=100, max_cost=1.0)
    run = steps.prepare(llm, [{"n": i} for i in range(50)], wd)
    estimate = steps.estimate(run)
    assert estimate["pending"] == 50 and estimate["spent"] == 0
    assert estimate["estimated_output_tokens"] == 50 * 100
    expected = (estimate["estimated_input_tokens"] + 5000) / 1e6
    assert estimate["projected_cost"] == pytest.approx(expected)
    assert estimate["within_budget"] and estimate["headroom"] == pytest.approx(1.0 - expected)
    assert sim.stats()["requests"] == 0
    json.dumps(estimate)


def test_the_budget_stops_dispatch_and_raising_it_resumes(sim, wd):
    sim.configure(latency=0.02)
    rows = [{"n": i} for i in range(200)]
    llm = numbered(sim, max_tokens=50, max_cost=0.002, max_concurrent_requests=8)
    run = steps.prepare(llm, rows, wd)
    with pytest.raises(BudgetExceededError, match="max_cost") as err:
        steps.run_online(run, llm=llm)
    assert not err.value.retryable
    assert err.value.spent <= 0.002 and "remaining" in str(err.value)
    sent = sim.stats()["chat_completions"]
    assert 0 < sent < 200
    assert steps.estimate(run, llm=llm)["spent"] == pytest.approx(err.value.spent)

    more = numbered(sim, max_tokens=50, max_cost=1.0, max_concurrent_requests=8)
    done = steps.run_online(run, llm=more)
    assert done["pending_before"] == 200 - sent and done["succeeded"] == 200 - sent
    assert sim.stats()["chat_completions"] == 200  # nothing answered was sent again
    steps.finalize(run, llm=more)
    assert len(steps.load_response(run).dataset) == 200


def test_the_budget_holds_across_steps_and_shards(sim, wd):
    llm = numbered(sim, max_tokens=50, max_cost=0.003, shard_size=50)
    run = steps.prepare(llm, [{"n": i} for i in range(200)], wd)
    spent_before = 0.0
    stopped = False
    for shard in run["shards"]:
        try:
            steps.run_online(run, shard, llm=llm)
        except BudgetExceededError as exc:
            stopped = True
            assert exc.spent >= spent_before
            break
        spent_before = steps.estimate(run, llm=llm)["spent"]
    assert stopped
    assert steps.estimate(run, llm=llm)["spent"] <= 0.003


def test_a_budget_without_prices_is_refused(sim, wd):
    llm = Numbered(
        "no-price-model",
        backend="openai",
        backend_params={"base_url": sim.base_url, "api_key": "k", "max_cost": 1.0},
    )
    run = steps.prepare(llm, [{"n": 1}], wd)
    with pytest.raises(ConfigError, match="in_mtok_cost"):
        steps.run_online(run, llm=llm)
    assert sim.stats()["requests"] == 0


def test_cli_estimate(sim, wd, capsys):
    llm = numbered(sim, max_tokens=10, max_cost=0.5)
    run = steps.prepare(llm, [{"n": i} for i in range(10)], wd)
    assert cli(["estimate", run["run_uri"]]) == 0
    out = capsys.readouterr().out
    assert "10 pending" in out and "max_cost $0.5000" in out
    assert cli(["estimate", run["run_uri"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending"] == 10


def test_answers_refused_by_the_schema_are_counted_as_spent_when_dispatch_stops(sim, wd):
    """Every paid attempt reaches the step's ledger at once, even one whose request never gets
    a line because dispatch stopped (here: the budget) before its retry."""
    from pydantic import BaseModel

    from curator_flows import LLM

    class Strict(BaseModel):
        value: int

    class Picky(LLM):
        response_format = Strict

        def prompt(self, input):
            return f"give {input['n']} [[sim:schema_invalid]]"

    params = {"base_url": sim.base_url, "api_key": "k", "progress": "off", **PRICED}
    llm = Picky("gpt-4o-mini", backend_params={**params, "max_cost": 0.0004, "max_retries": 5})
    run = steps.prepare(llm, [{"n": i} for i in range(4)], wd, rebuild_check=False)
    with pytest.raises(BudgetExceededError):
        steps.run_online(run, llm=llm)
    paid = sim.stats()["prompt_tokens"] + sim.stats()["completion_tokens"]
    assert steps.estimate(run, llm=llm)["spent"] == pytest.approx(paid / 1e6)


def test_parallel_steps_hold_one_budget_together(sim, wd):
    """Two processes, one shard each, at once: their spending and in-flight reservations are
    read from each other's ledgers, so together they stay near max_cost (each alone would spend
    all of it: about twice the budget)."""
    import os
    import subprocess

    sim.configure(latency=0.1)
    llm = numbered(sim, max_tokens=50, max_cost=0.004, max_concurrent_requests=4, shard_size=200)
    run = steps.prepare(llm, [{"n": i} for i in range(400)], wd)
    code = (
        "import sys\n"
        "from curator_flows import steps, BudgetExceededError\n"
        "try:\n"
        "    steps.run_online(sys.argv[1], sys.argv[2])\n"
        "except BudgetExceededError:\n"
        "    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "support")}
    workers = [
        subprocess.Popen([sys.executable, "-c", code, run["run_uri"], shard], env=env)
        for shard in run["shards"]
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    stats = sim.stats()
    paid = (stats["prompt_tokens"] + stats["completion_tokens"]) / 1e6
    assert 0.003 <= paid <= 0.004 * 1.25
    assert steps.estimate(run)["spent"] == pytest.approx(paid)
