"""Anthropic-specific batch behaviour: reconciliation without metadata, batch deletion, bytes."""

from __future__ import annotations

import time

import pytest
from batch_helpers import FAST, make_llm, record, success_counts, wait_done
from batch_llms import Numbered, Padded

from curator_flows import steps
from curator_flows.batch import sizing
from curator_flows.batch import steps as batch_steps
from curator_flows.batch.anthropic import AnthropicBatches
from curator_flows.batch.base import RoundIntent
from curator_flows.runs import open_run


def _decoy(sim, size: int, folder) -> str:
    """A batch of the same size made by someone else."""
    client = AnthropicBatches(
        sim.url,
        "sk-other",
        30,
        params=lambda m, own=None: {"model": "claude-x", "max_tokens": 5, "messages": m},
    )
    path = str(folder / f"decoy-{time.time_ns()}.json")
    requests = [
        {"id": f"{i:032x}", "messages": [{"role": "user", "content": f"decoy {i}"}]}
        for i in range(size)
    ]
    with open(path, "wb") as handle:
        client.write_input(handle, requests)
    return client.create(path, None, RoundIntent("other", "0", 0, size, time.time())).id


def _end_now(sim, batch_id: str) -> None:
    """End a simulated batch at once: tests decide when a batch ends, not the machine's load."""
    batch = sim.state.anthropic_batches[batch_id]
    batch.timings = {**batch.timings, "validating": 0.0, "in_progress": 0.0, "finalizing": 0.0}


class Crash(Exception):
    pass


def test_ambiguous_candidates_wait_until_results_tell_which_is_ours(
    bsim, wd, monkeypatch, tmp_path
):
    bsim.configure(batch_timings={**FAST, "in_progress": 60.0})  # both unended until ended here
    llm = make_llm(Numbered, "anthropic", bsim)
    run = steps.prepare(llm, [{"n": i} for i in range(5)], wd)
    with monkeypatch.context() as patch:  # crash right after the create call returned
        patch.setattr(batch_steps, "_record_created", lambda *a: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            steps.submit(run, "00000", llm=llm)
    ours = next(iter(bsim.state.anthropic_batches))
    decoy = _decoy(bsim, 5, tmp_path)

    waiting = steps.submit(run, "00000", llm=llm)
    assert waiting["state"] == "reconciling" and not waiting["created"]
    assert len(waiting["candidates"]) == 2
    assert steps.poll(run, "00000")["state"] == "reconciling"
    assert bsim.stats()["batches_created"] == 2  # nothing new while in doubt

    _end_now(bsim, ours)
    _end_now(bsim, decoy)
    attached = steps.submit(run, "00000", llm=llm)
    assert attached["batch_id"] == ours and attached["reattached"]
    assert record(run["run_uri"], "00000")["rounds"][0]["reconciled"] == "results"
    wait_done(run, "00000")
    assert steps.collect(run, "00000", llm=llm)["succeeded"] == 5
    assert bsim.stats()["batches_created"] == 2


def test_a_wrong_count_match_is_detected_and_costs_a_round_not_correctness(
    bsim, wd, monkeypatch, tmp_path
):
    bsim.configure(batch_timings={**FAST, "in_progress": 60.0})  # the decoy is unended when found
    llm = make_llm(Numbered, "anthropic", bsim)
    run = steps.prepare(llm, [{"n": i} for i in range(4)], wd)
    with monkeypatch.context() as patch:  # crash before the create call is sent
        patch.setattr(AnthropicBatches, "create", lambda *a: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            steps.submit(run, "00000", llm=llm)
    decoy = _decoy(bsim, 4, tmp_path)

    taken = steps.submit(run, "00000", llm=llm)  # the only candidate: weakly matched
    assert taken["batch_id"] == decoy
    bsim.configure(batch_timings=FAST)
    _end_now(bsim, decoy)
    wait_done(run, "00000")
    collected = steps.collect(run, "00000", llm=llm)
    assert collected["succeeded"] == 0 and collected["resubmit"]
    entry = record(run["run_uri"], "00000")["rounds"][0]
    assert entry["mismatch"] and entry["reconciled"] == "count"

    result = llm([{"n": i} for i in range(4)], working_dir=wd)
    assert result.dataset["n"] == [0, 1, 2, 3]
    assert sum(success_counts(run["run_uri"]).values()) == 4
    assert decoy in bsim.state.anthropic_batches  # never deleted: it is not ours


def test_successful_batches_are_deleted_when_asked(bsim, wd):
    llm = make_llm(Numbered, "anthropic", bsim, delete_successful_batch_files=True)
    result = llm([{"n": i} for i in range(8)], working_dir=wd)
    assert len(result.dataset) == 8
    entry = record(result.cache_dir, "00000")["rounds"][0]
    assert entry["files_deleted"] and entry["batch_id"] not in bsim.state.anthropic_batches


def test_large_prompts_are_split_by_bytes(bsim, wd, monkeypatch):
    limit = 60_000
    monkeypatch.setitem(sizing.BATCH_LIMITS, "anthropic", (100_000, limit))
    rows = [{"n": i, "pad": 2500 + 11 * i} for i in range(60)]
    result = make_llm(Padded, "anthropic", bsim)(rows, working_dir=wd)
    assert result.dataset["n"] == list(range(60))
    manifest = open_run(result.cache_dir)[1]
    assert len(manifest["shards"]) >= 3
    for shard in manifest["shards"]:
        entry = record(result.cache_dir, shard["name"])["rounds"][0]
        assert shard["bytes"] <= limit
        # the estimate bounds the create body from 14 items on (see batch.sizing)
        slack = 0 if shard["requests"] >= 14 else 14
        assert entry["input_bytes"] <= shard["bytes"] + slack
