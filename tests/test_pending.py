"""The one rule of :mod:`curator_flows.pending`: which line stands for a request and what the lines
cost, and that finalize and ``status`` report what the provider billed (over real HTTP against
the simulator)."""

from __future__ import annotations

import orjson
import pytest

from curator_flows import LLM, steps
from curator_flows.batch.responses import count_responses, scan_responses
from curator_flows.pending import (
    RetryLog,
    ShardLines,
    invalidation_line,
    read_shard,
    success_ids,
)
from curator_flows.store import RunStore

IN_MTOK, OUT_MTOK = 1.0, 2.0


def _write(store: RunStore, rel: str, lines: list[dict]) -> None:
    store.write_bytes(rel, b"".join(orjson.dumps(x) + b"\n" for x in lines))


# ----------------------------------------------------------------------------- the rule
def test_a_later_invalidation_supersedes_a_success_and_a_later_success_supersedes_it(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    _write(
        store,
        "responses/00000.jsonl",
        [
            {"id": "a", "content": "1", "usage": [1, 1], "cost": 1.0},
            {"id": "b", "content": "1", "usage": [1, 1], "cost": 1.0},
            {"id": "c", "error": "boom", "round": 0},
            invalidation_line("a", "refused"),
            invalidation_line("b", "refused"),
            {"id": "b", "content": "2", "usage": [1, 1], "cost": 2.0},
            {"id": "d", "content": "1", "usage": [1, 1], "cost": 1.0},
            {"id": "d", "error": "late failure", "round": 0},  # never undoes a success
        ],
    )
    assert success_ids(store, "00000") == {"b", "d"}
    lines = read_shard(store, "00000", keep=True)
    assert "invalidated" in lines.lines["a"] and lines.lines["b"]["content"] == "2"
    assert lines.lines["d"]["content"] == "1" and "error" in lines.lines["c"]
    scan = scan_responses(store, "00000", campaign_start=0)
    assert scan.succeeded == {"b", "d"} and scan.final_failed == {"c"}
    assert not scan.settled("a")  # owed again: the next batch round sends it
    counts = count_responses(store, "00000")
    assert (counts.succeeded, counts.failed) == (2, 1)  # "a" is pending, not failed
    assert counts.cost == pytest.approx(5.0)  # every paid success counts, taken back or not


def test_every_paid_line_is_charged_once_and_a_copy_only_while_it_stands():
    lines = ShardLines()
    for record in (
        # a failure that wasted $0.50, then a success: both were paid
        {"id": "a", "error": "refused", "wasted": [100, 50], "cost": 0.5},
        {"id": "a", "content": "x", "usage": [10, 5], "cost": 0.01},
        # a copy from a sibling run, taken back, sent again: the sibling paid for the copy
        {"id": "b", "content": "x", "usage": [7, 7], "cost": 0.2, "reused_from": "sib"},
        invalidation_line("b", "refused"),
        {"id": "b", "content": "y", "usage": [1, 1], "cost": 0.03},
        # a copy written twice (a crashed prepare) still stands once
        {"id": "c", "content": "x", "usage": [2, 2], "cost": 0.1, "reused_from": "sib"},
        {"id": "c", "content": "x", "usage": [2, 2], "cost": 0.1, "reused_from": "sib"},
    ):
        lines.add(record)
    charge = lines.charge
    assert charge.cost == pytest.approx(0.5 + 0.01 + 0.03 + 0.1)
    assert (charge.input_tokens, charge.output_tokens) == (100 + 10 + 1 + 2, 50 + 5 + 1 + 2)
    assert lines.cached_cost == pytest.approx(0.1) and set(lines.copies) == {"c"}


def test_a_retry_is_charged_on_its_own_until_a_line_of_a_later_round_folds_it_in():
    log = RetryLog()
    assert log.add("a", 0, [10, 10], 0.1) and not log.add("a", 0, [10, 10], 0.1)
    log.add("a", 3, [20, 20], 0.2)  # a later campaign, after the round-1 failure line
    log.add("b", 0, [5, 5], 0.05)  # no line yet: still owed to the retry log
    lines = ShardLines()
    lines.add({"id": "a", "error": "gave up", "round": 1, "wasted": [10, 10], "cost": 0.1})
    lines.charge_retries(log)
    assert lines.charge.cost == pytest.approx(0.1 + 0.2 + 0.05)
    assert log.unfolded("a", lines.rounds["a"]).cost == pytest.approx(0.2)


# ----------------------------------------------------------------------------- billed = reported
class Echo(LLM):
    def prompt(self, input: dict) -> str:
        return input["text"]

    def parse(self, input: dict, response: str) -> dict:
        return {"text": input["text"]}


def _billed(sim) -> float:
    stats = sim.stats()
    return (stats["prompt_tokens"] * IN_MTOK + stats["completion_tokens"] * OUT_MTOK) / 1e6


def test_a_failure_superseded_by_a_success_stays_in_the_total_cost(sim, params, wd):
    llm = Echo(
        "gpt-4o-mini",
        backend_params=params(max_retries=1, in_mtok_cost=IN_MTOK, out_mtok_cost=OUT_MTOK),
    )
    # attempts 0 and 1 end with finish_reason "length" (refused, paid); attempt 2 answers
    rows = [{"text": "plain one"}, {"text": "plain two"}, {"text": "[[sim:lengthx2]] cut off"}]
    run = steps.prepare(llm, rows, wd, rebuild_check=False)
    first = steps.run_online(run, llm=llm)
    assert (first["succeeded"], first["failed"]) == (2, 1)
    second = steps.run_online(run, llm=llm)
    assert second["succeeded"] == 1
    assert sim.stats()["chat_completions"] == 5
    result = steps.finalize(run, llm=llm)
    assert result["failed"] == 0
    billed = _billed(sim)
    assert billed > 0
    assert result["statistics"]["cost_info"]["total_cost"] == pytest.approx(billed)
    assert steps.status(run)["totals"]["cost"] == pytest.approx(billed)
