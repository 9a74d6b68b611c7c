"""The cost budget (max_cost) and estimates, over real HTTP against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curator_flows import BudgetExceededError, ConfigError, steps
from curator_flows.backends.factory import OutputRule
from curator_flows.budget import Budget
from curator_flows.cli import main as cli
from curator_flows.cost import resolve_prices
from curator_flows.ledger import StepLedger
from curator_flows.runs import open_run
from curator_flows.tokens import Observed, estimate_prompt_tokens

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
    llm = Picky("gpt-4o-mini", backend_params={**params, "max_cost": 0.0002, "max_retries": 5})
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


# ------------------------------------------------------------------ a ceiling that is reached
SUPPORT = Path(__file__).parent / "support"
ROWS = 60


def _full_cost(rows: int, answer_tokens: int, price: float = 1.0) -> float:
    """What answering every row costs at ``price`` dollars per million tokens in and out."""
    tokens = sum(
        estimate_prompt_tokens([{"role": "user", "content": f"number {i}"}]) + answer_tokens
        for i in range(rows)
    )
    return tokens * price / 1e6


def _billed(sim) -> float:
    """What the provider billed for every answered request ($1 per million in and out)."""
    stats = sim.stats()
    return (stats["prompt_tokens"] + stats["completion_tokens"]) / 1e6


@pytest.mark.parametrize("answer_tokens", [20, 600])  # shorter and longer than the 256 default
def test_a_budget_of_half_the_run_stops_between_90_and_100_percent_then_resumes(
    sim, wd, answer_tokens
):
    sim.configure(latency=0.05, completion_tokens=answer_tokens)
    max_cost = 0.51 * _full_cost(ROWS, answer_tokens)
    llm = numbered(sim, max_cost=max_cost, max_concurrent_requests=20)
    run = steps.prepare(llm, [{"n": i} for i in range(ROWS)], wd)
    with pytest.raises(BudgetExceededError) as err:
        steps.run_online(run, llm=llm)
    billed = _billed(sim)
    assert 0.9 * max_cost <= billed <= max_cost
    assert err.value.spent == pytest.approx(billed) and err.value.reserved == 0
    assert "spent" in str(err.value) and "reserved" in str(err.value)
    estimate = steps.estimate(run, llm=llm)
    assert estimate["spent"] == pytest.approx(billed) and estimate["reserved"] == 0

    more = numbered(sim, max_cost=10 * max_cost, max_concurrent_requests=20)
    steps.run_online(run, llm=more)
    assert sim.stats()["chat_completions"] == ROWS  # nothing answered was sent again
    steps.finalize(run, llm=more)
    assert len(steps.load_response(run).dataset) == ROWS


def _two_workers(code: str, run_uri: str, shards: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT)}
    workers = [
        subprocess.Popen([sys.executable, "-c", code, run_uri, shard], env=env) for shard in shards
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0


@pytest.mark.parametrize("answer_tokens", [20, 600])
def test_two_workers_hold_one_budget_and_reach_it(sim, wd, answer_tokens):
    """Two processes, one shard each, at once: they read each other's spending and
    reservations, announce theirs near the ceiling, and wait for settlements rather than stop:
    together they reach the budget and never pass it."""
    sim.configure(latency=0.05, completion_tokens=answer_tokens)
    max_cost = 0.51 * _full_cost(ROWS, answer_tokens)
    params = dict(max_cost=max_cost, max_concurrent_requests=10, shard_size=ROWS // 2)
    llm = numbered(sim, **params)
    run = steps.prepare(llm, [{"n": i} for i in range(ROWS)], wd)
    code = (
        "import sys\n"
        "from curator_flows import steps, BudgetExceededError\n"
        "try:\n"
        "    steps.run_online(sys.argv[1], sys.argv[2])\n"
        "except BudgetExceededError:\n"
        "    pass\n"
    )
    _two_workers(code, run["run_uri"], run["shards"])
    billed = _billed(sim)
    assert 0.9 * max_cost <= billed <= max_cost
    assert steps.estimate(run)["spent"] == pytest.approx(billed)

    more = numbered(sim, **{**params, "max_cost": 10 * max_cost})
    for shard in run["shards"]:
        steps.run_online(run, shard, llm=more)
    assert sim.stats()["chat_completions"] == ROWS


def test_holds_in_flight_are_valued_at_the_longest_output_seen_since(sim, wd):
    """A parallel step's requests in flight assumed the default output length (its ledger
    says so); once answers show longer outputs, this step counts them at that length: a
    request that fits beside them only at the length they assumed waits (they may settle)
    instead of being sent, and the stop reports them at that length."""
    llm = numbered(sim, max_cost=1.0)
    run = steps.prepare(llm, [{"n": i} for i in range(ROWS)], wd)
    store, manifest = open_run(run["run_uri"])
    prices = resolve_prices("gpt-4o-mini", 1.0, 1.0)
    default, longest, prompt = 256, 600, 10
    parallel = StepLedger(store, "run_online", run["shards"])
    parallel.tag_lines()
    parallel.set(  # ten requests in flight, each holding the default output
        reserved=prices.cost(10 * prompt, 10 * default), open_output=10 * default, open_choices=10
    )
    parallel.flush(force=True)
    held_as_assumed = prices.cost(10 * prompt, 10 * default)
    request = prices.cost(prompt, longest)
    max_cost = held_as_assumed + 2.5 * request  # room for two more at the length assumed

    budget = Budget.for_run(store, manifest, max_cost, prices)
    outputs = Observed(default)
    for _ in range(5):
        outputs.observe(longest)
    quote = budget.cost_of(prompt, OutputRule(None, False), outputs)
    assert quote.estimate == pytest.approx(request)
    assert budget.reserve(quote) is None and budget.outstanding()  # waits for them
    stop = budget.exceeded()
    assert stop.reserved == pytest.approx(prices.cost(10 * prompt, 10 * longest))

    parallel.set(reserved=0.0, open_output=0, open_choices=0)  # settled unanswered: nothing paid
    parallel.flush(force=True)
    budget.refresh(force=True)
    assert budget.reserve(quote) is not None


def test_a_request_quoted_before_longer_answers_elsewhere_counts_at_their_length(sim, wd):
    """This step's first quote assumes the default output; when it reserves, it reads the
    ledgers, where a parallel step's answers were longer, and values its hold at that length:
    a request that fits only at the default is not sent (two workers passed max_cost so)."""
    llm = numbered(sim, max_cost=1.0)
    run = steps.prepare(llm, [{"n": i} for i in range(ROWS)], wd)
    store, manifest = open_run(run["run_uri"])
    prices = resolve_prices("gpt-4o-mini", 1.0, 1.0)
    default, longest, prompt = 256, 600, 10
    max_cost = 0.02
    budget = Budget.for_run(store, manifest, max_cost, prices)  # nothing answered yet
    quote = budget.cost_of(prompt, OutputRule(None, False), Observed(default))
    assert quote.output == default

    parallel = StepLedger(store, "run_online", run["shards"])
    parallel.tag_lines()  # it spent all but room for one request at the default length
    room = prices.cost(prompt, default + 50)
    parallel.set(cost=max_cost - room, longest_output=longest)
    parallel.close()
    assert budget.reserve(quote) is None and not budget.outstanding()  # the run stops here


def _batch_billed(sim, answer_tokens: int) -> float:
    """What the provider billed for the batch items it ran (batch prices: half of $1/M)."""
    total = 0
    for prompt, count in sim.stats()["batch_items_by_prompt"].items():
        tokens = estimate_prompt_tokens([{"role": "user", "content": prompt}]) + answer_tokens
        total += count * tokens
    return total * 0.5 / 1e6


def _batch_llm(sim, **extra):
    params = {
        "base_url": sim.base_url,
        "api_key": "k",
        "progress": "off",
        "batch_check_interval": 0.05,
        "batch_size": 5,
        **PRICED,
        **extra,
    }
    return Numbered("gpt-4o-mini", batch=True, backend_params=params)


@pytest.mark.parametrize("answer_tokens", [20, 600])
def test_batch_submissions_count_against_the_budget(wd, answer_tokens):
    """Each batch reserves its worst case (input + max_tokens) before it is created and settles
    when collected; a batch that does not fit waits for the others, and the run stops
    within the budget, then resumes when it is raised."""
    from curator_flows.testing.simulator import Simulator

    fast = {"validating": 0.02, "in_progress": 0.05, "finalizing": 0.02, "cancelling": 0.02}
    with Simulator(batch_timings=fast, completion_tokens=answer_tokens) as sim:
        max_cost = 0.51 * _full_cost(ROWS, answer_tokens, price=0.5)
        llm = _batch_llm(sim, max_cost=max_cost, max_tokens=answer_tokens)
        rows = [{"n": i} for i in range(ROWS)]
        with pytest.raises(BudgetExceededError) as err:
            llm(rows, working_dir=wd)
        billed = _batch_billed(sim, answer_tokens)
        assert 0.9 * max_cost <= billed <= max_cost
        assert "spent" in str(err.value) and "reserved" in str(err.value)
        run_uri = steps.prepare(llm, rows, wd)["run_uri"]
        assert steps.estimate(run_uri, llm=llm)["spent"] == pytest.approx(billed)

        done = _batch_llm(sim, max_cost=10 * max_cost, max_tokens=answer_tokens)(
            rows, working_dir=wd
        )
        assert len(done.dataset) == ROWS
        assert sim.stats()["batch_items"] == ROWS  # nothing collected was sent again


def test_two_batch_workers_hold_one_budget(wd):
    from curator_flows.testing.simulator import Simulator

    fast = {"validating": 0.02, "in_progress": 0.05, "finalizing": 0.02, "cancelling": 0.02}
    with Simulator(batch_timings=fast, completion_tokens=20) as sim:
        max_cost = 0.51 * _full_cost(ROWS, 20, price=0.5)
        llm = _batch_llm(sim, max_cost=max_cost, max_tokens=20)
        run = steps.prepare(llm, [{"n": i} for i in range(ROWS)], wd)
        half = len(run["shards"]) // 2
        code = (
            "import sys, time\n"
            "from curator_flows import steps, BudgetExceededError\n"
            "shards = sys.argv[2].split(',')\n"
            "try:\n"
            "    while shards:\n"
            "        for shard in list(shards):\n"
            "            if steps.advance(sys.argv[1], shard)['done']:\n"
            "                shards.remove(shard)\n"
            "        time.sleep(0.05)\n"
            "except BudgetExceededError:\n"
            "    pass\n"
        )
        env = {**os.environ, "PYTHONPATH": str(SUPPORT), "OPENAI_API_KEY": "k"}
        groups = [",".join(run["shards"][:half]), ",".join(run["shards"][half:])]
        workers = [
            subprocess.Popen([sys.executable, "-c", code, run["run_uri"], group], env=env)
            for group in groups
        ]
        for worker in workers:
            assert worker.wait(timeout=120) == 0
        billed = _batch_billed(sim, 20)
        assert 0.9 * max_cost <= billed <= max_cost


def test_spent_survives_deleting_stats_and_duplicated_lines(sim, wd):
    """What was spent comes from the response lines (each paid line once) and the ledgers:
    deleting ``stats/`` forgets nothing, a duplicated line is not paid twice, and the budget
    keeps holding after both."""
    import shutil

    sim.configure(completion_tokens=20)
    max_cost = 0.5 * _full_cost(ROWS, 20)
    llm = numbered(sim, max_cost=max_cost, max_concurrent_requests=8)
    run = steps.prepare(llm, [{"n": i} for i in range(ROWS)], wd)
    with pytest.raises(BudgetExceededError):
        steps.run_online(run, llm=llm)
    billed = _billed(sim)
    sent = sim.stats()["chat_completions"]
    shutil.rmtree(Path(run["run_uri"]) / "stats")
    for path in (Path(run["run_uri"]) / "responses").glob("*.jsonl"):
        path.write_bytes(path.read_bytes() * 2)  # every line twice
    assert steps.estimate(run, llm=llm)["spent"] == pytest.approx(billed)
    assert steps.status(run)["totals"]["cost"] == pytest.approx(billed)
    with pytest.raises(BudgetExceededError):
        steps.run_online(run, llm=llm)
    assert sim.stats()["chat_completions"] == sent  # the spent budget was not forgotten


def test_a_paid_answer_whose_line_a_crash_destroyed_still_counts_once(sim, wd):
    """The line of a paid answer is lost (a crash tore the file): the request is sent again,
    and the run's cost (status, finalize) counts both attempts, the ledger's and the new
    line's, and an answer whose line survived only once."""
    sim.configure(completion_tokens=20)
    llm = numbered(sim)
    run = steps.prepare(llm, [{"n": i} for i in range(20)], wd)
    steps.run_online(run, llm=llm)
    (path,) = (Path(run["run_uri"]) / "responses").glob("*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:15]))  # five paid answers lost
    again = steps.run_online(run, llm=llm)
    assert again["sent"] == 5 and sim.stats()["chat_completions"] == 25
    billed = _billed(sim)
    assert steps.status(run)["totals"]["cost"] == pytest.approx(billed)
    assert steps.finalize(run, llm=llm)["statistics"]["cost_info"]["total_cost"] == (
        pytest.approx(billed)
    )
    assert steps.estimate(run, llm=llm)["spent"] == pytest.approx(billed)
