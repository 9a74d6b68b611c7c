"""Batch cost accounting against what the simulator billed: ``status``, finalize and the ledgers
(what the budget reads) charge every paid item exactly once, retried items and later campaigns
included."""

from __future__ import annotations

import time

import httpx
import pytest
from batch_helpers import make_llm, record
from batch_llms import Numbered

from curator_flows import steps
from curator_flows.batch.records import BatchRecord
from curator_flows.ledger import run_totals
from curator_flows.store import RunStore

#: batch prices: half of batch_params' in_mtok_cost=1 / out_mtok_cost=2
BATCH_IN, BATCH_OUT = 0.5, 1.0


def _billed(sim, run_uri: str) -> float:
    """Dollars for the usage the provider reported on every batch of the run (OpenAI)."""
    total = 0.0
    for shard in ("00000",):
        for entry in record(run_uri, shard)["rounds"]:
            batch = httpx.get(
                f"{sim.base_url}/batches/{entry['batch_id']}",
                headers={"Authorization": "Bearer sk-test-not-a-secret"},
            ).json()
            usage = batch["usage"]
            total += (usage["input_tokens"] * BATCH_IN + usage["output_tokens"] * BATCH_OUT) / 1e6
    return total


def _reported(run_uri: str) -> tuple[float, float, float]:
    """``(status cost, finalize total_cost, ledger cost)`` of the run."""
    status = steps.status(run_uri)["totals"]["cost"]
    finalized = steps.load_response(run_uri).cost_info.total_cost
    return status, finalized, run_totals(RunStore(run_uri))["cost"]


def test_retried_items_are_charged_once_by_status_finalize_and_the_ledger(bsim, wd):
    rows = [{"n": i} for i in range(6)]
    rows[1]["marker"] = " [[sim:lengthx1]]"  # refused (paid) once, then answered
    rows[4]["marker"] = " [[sim:lengthx1]]"
    result = make_llm(Numbered, "openai", bsim, max_retries=2)(rows, working_dir=wd)
    assert result.request_stats.failed == 0
    assert [r["requests"] for r in record(result.cache_dir, "00000")["rounds"]] == [6, 2]
    billed = _billed(bsim, result.cache_dir)
    assert billed > 0
    assert _reported(result.cache_dir) == pytest.approx((billed, billed, billed))


def test_a_new_campaign_does_not_charge_the_retries_of_the_previous_one_again(bsim, wd):
    rows = [{"n": 0}, {"n": 1, "marker": " [[sim:lengthx3]]"}]  # answered at the 4th attempt
    llm = make_llm(Numbered, "openai", bsim, max_retries=1)
    first = llm(rows, working_dir=wd)  # campaign 1: two refused rounds, a final failure
    assert first.request_stats.failed == 1
    result = llm(rows, working_dir=wd)  # campaign 2: refused once more, then answered
    assert result.request_stats.failed == 0
    rounds = record(result.cache_dir, "00000")["rounds"]
    assert [r["requests"] for r in rounds] == [2, 1, 1, 1]
    billed = _billed(bsim, result.cache_dir)
    assert _reported(result.cache_dir) == pytest.approx((billed, billed, billed))


@pytest.mark.parametrize("backend", ("openai", "anthropic"))
def test_submit_reads_the_shard_responses_and_the_other_records_once(
    bsim, wd, backend, monkeypatch
):
    llm = make_llm(Numbered, backend, bsim, batch_size=3)
    run = steps.prepare(llm, [{"n": i} for i in range(6)], wd)
    store = RunStore(run["run_uri"])
    for shard in run["shards"]:  # both shards crashed right after saving their intent
        crashed = BatchRecord.load(store, shard, run["run_id"], backend)
        crashed.new_round(3, 300, time.time())
        crashed.save()
    reads: list[str] = []
    real_iter, real_read = RunStore.iter_records, RunStore.read_json_if_exists

    def counting_iter(store, pattern):
        reads.append(pattern)
        return real_iter(store, pattern)

    def counting_read(store, rel):
        reads.append(rel)
        return real_read(store, rel)

    monkeypatch.setattr(RunStore, "iter_records", counting_iter)
    monkeypatch.setattr(RunStore, "read_json_if_exists", counting_read)
    # reconciled first (nothing was created), then sent
    assert steps.submit(run, "00000", llm=llm)["state"] == "submitted"
    assert reads.count("responses/00000.*jsonl") == 1
    assert reads.count("batches/00001.json") == 1
