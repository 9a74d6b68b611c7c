"""Crashes at the worst lines, each in a real subprocess that dies (``os._exit``), then a re-run:
no batch is created twice and every row is in the output exactly once."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from batch_helpers import (
    BACKENDS,
    MODELS,
    batch_params,
    credentials,
    record,
    response_lines,
    run_step,
    wait_done,
)
from batch_llms import Numbered

from curator_flows import steps

CRASHED = 17


@pytest.mark.parametrize("backend", BACKENDS)
def test_crash_between_create_and_record_reattaches_instead_of_creating_again(bsim, wd, backend):
    rows = [{"n": i} for i in range(30)]
    args = {
        "step": "call",
        "cls": "Numbered",
        "model": MODELS[backend],
        "backend": backend,
        "params": batch_params(bsim, batch_size=10),
        "rows": rows,
        "wd": wd,
    }
    run_step({**args, "crash": "after_create"}, expect=CRASHED)
    assert bsim.stats()["batches_created"] == 1  # the create call went through, unrecorded

    result = run_step(args)  # a fresh process resumes the same run
    assert result["rows"] == 30 and result["failed"] == 0
    stats = bsim.stats()
    assert stats["batches_created"] == 3  # exactly one per shard
    if backend == "openai":
        assert sorted(stats["batches_by_run_shard"].values()) == [1, 1, 1]
    assert set(stats["by_prompt"].values()) == {1}
    first = record(result["run_uri"], "00000")["rounds"]
    assert len(first) == 1 and first[0]["reconciled"] in ("metadata", "results", "count")
    assert Counter(r["id"] for r in response_lines(result["run_uri"])).most_common(1)[0][1] == 1


@pytest.mark.parametrize("crash", ["mid_collect", "before_collected"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_crash_in_collect_then_collect_again_writes_every_row_once(bsim, wd, backend, crash):
    llm = Numbered(MODELS[backend], batch=True, backend=backend, backend_params=batch_params(bsim))
    run = steps.prepare(llm, [{"n": i} for i in range(50)], wd)
    steps.submit(run, "00000", llm=llm)
    wait_done(run, "00000", credentials=credentials())
    env = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-test"}
    run_step(
        {"step": "collect", "run": run["run_uri"], "shard": "00000", "crash": crash},
        env=env,
        expect=CRASHED,
    )
    partial = response_lines(run["run_uri"])
    assert 0 < len(partial) <= 50
    assert record(run["run_uri"], "00000")["rounds"][0]["state"] == "ended"

    collected = run_step({"step": "collect", "run": run["run_uri"], "shard": "00000"}, env=env)
    assert collected["succeeded"] == 50 and collected["done"]
    if crash == "before_collected":
        assert collected["written"] == 0
    ids = Counter(r["id"] for r in response_lines(run["run_uri"]))
    assert len(ids) == 50 and set(ids.values()) == {1}
    steps.finalize(run, llm=llm)
    result = steps.load_response(run)
    assert result.dataset["n"] == list(range(50))
    assert bsim.stats()["batches_created"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_step_in_its_own_process_from_the_run_uri_alone(bsim, wd, backend):
    key = "sk-only-in-the-environment"
    bsim.configure(require_api_key=key)
    env = {"OPENAI_API_KEY": key, "ANTHROPIC_API_KEY": key}
    params = batch_params(bsim, batch_size=15)
    del params["api_key"]
    rows = [{"n": i} for i in range(40)]
    prepared = run_step(
        {
            "step": "prepare",
            "cls": "Numbered",
            "model": MODELS[backend],
            "backend": backend,
            "params": params,
            "rows": rows,
            "wd": wd,
        }
    )
    uri = prepared["run_uri"]
    assert prepared["shards"] == ["00000", "00001", "00002"]
    for shard in prepared["shards"]:
        submitted = run_step({"step": "submit", "run": uri, "shard": shard}, env=env)
        assert submitted["created"] and submitted["state"] == "submitted"
    for shard in prepared["shards"]:
        while not run_step({"step": "poll", "run": uri, "shard": shard}, env=env)["done"]:
            pass
        collected = run_step({"step": "collect", "run": uri, "shard": shard}, env=env)
        assert collected["done"]
    final = run_step({"step": "finalize", "run": uri})
    assert final["ns"] == list(range(40)) and final["failed"] == 0 and final["cost"] > 0
    for folder, _, files in os.walk(uri):  # the key is never stored
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                assert key.encode() not in handle.read(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_reply_to_create_is_reconciled_not_repeated(bsim, wd, backend, monkeypatch):
    from curator_flows.batch.anthropic import AnthropicBatches
    from curator_flows.batch.openai import OpenAIBatches
    from curator_flows.batch.transport import TransportError

    client = OpenAIBatches if backend == "openai" else AnthropicBatches
    real_create = client.create

    def create_then_drop(self, *args):
        real_create(self, *args)  # the provider creates the batch ...
        raise TransportError("POST /batches: connection reset")  # ... the answer is lost

    monkeypatch.setattr(client, "create", create_then_drop)
    llm = Numbered(MODELS[backend], batch=True, backend=backend, backend_params=batch_params(bsim))
    run = steps.prepare(llm, [{"n": i} for i in range(7)], wd)
    submitted = steps.submit(run, "00000", llm=llm)
    assert submitted["reattached"] and not submitted["created"]
    assert bsim.stats()["batches_created"] == 1
    wait_done(run, "00000")
    assert steps.collect(run, "00000", llm=llm)["succeeded"] == 7


def test_cancel_while_a_round_is_unsent_then_resume_on_request(bsim, wd, monkeypatch):
    from curator_flows.batch.openai import OpenAIBatches

    class Crash(Exception):
        pass

    llm = Numbered("gpt-4o-mini", batch=True, backend="openai", backend_params=batch_params(bsim))
    run = steps.prepare(llm, [{"n": i} for i in range(6)], wd)
    with monkeypatch.context() as patch:  # dies after the upload, before the create call
        patch.setattr(OpenAIBatches, "create", lambda *a: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            steps.submit(run, "00000", llm=llm)
    assert record(run["run_uri"], "00000")["rounds"][0]["state"] == "uploaded"

    cancelled = steps.cancel(run)
    assert cancelled["batches"] == [] and cancelled["errors"] == []
    assert steps.submit(run, "00000", llm=llm)["state"] == "cancelled"
    assert bsim.stats()["batches_created"] == 0

    resumed = steps.submit(run, "00000", llm=llm, retry_failed=True)
    assert resumed["created"] and resumed["attempt"] == 1
    wait_done(run, "00000")
    assert steps.collect(run, "00000", llm=llm)["succeeded"] == 6
    assert bsim.stats()["batches_cancelled"] == 0
    assert bsim.stats()["files_created"] == 2  # the upload was reused (+ one output file)
