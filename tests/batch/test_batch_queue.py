"""Batch submission is a queue, not a burst: under the providers' batch queue limits (OpenAI's
enqueued token limit, Anthropic's processing queue), over real HTTP against the simulator, every
row arrives given only time; a refusal is never an attempt nor a failure line; shards wait
(``queued``) and are submitted again; several workers pace together through the run directory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest
from batch_helpers import (
    BACKENDS,
    FAST,
    HERE,
    MODELS,
    batch_params,
    credentials,
    failed_requests,
    make_llm,
    record,
    success_counts,
)
from batch_llms import Numbered

from curator_flows import ConfigError, steps
from curator_flows.testing.simulator import Simulator

#: "number 100" .. "number 699": 10 tokens each as the simulator counts them (11 estimated)
ROWS = [{"n": i} for i in range(100, 700)]
#: room for two shards of 100 rows: 2,000 tokens (2,200 estimated), not three
TOKENS = 2500
REQUESTS = 250
#: very short batches, for runs of many shards
QUICK = {"validating": 0.02, "in_progress": 0.05, "finalizing": 0.02, "cancelling": 0.02}


def limited(backend: str, tokens: int = TOKENS, requests: int = REQUESTS, timings=FAST):
    """A simulator with the backend's batch queue limit."""
    if backend == "openai":
        return Simulator(batch_timings=timings, batch_enqueued_token_limit=tokens)
    return Simulator(batch_timings=timings, batch_queue_request_limit=requests)


def pacing(backend: str, tokens: int = TOKENS, requests: int = REQUESTS) -> dict:
    if backend == "openai":
        return {"max_enqueued_tokens": tokens}
    return {"max_enqueued_requests": requests}


def peak(stats: dict, backend: str) -> int:
    return stats["peak_enqueued_tokens" if backend == "openai" else "peak_queued_batch_requests"]


def assert_each_batch_created_once_per_round(run_uri: str, run_id: str, shards, stats) -> None:
    """The simulator saw one create per round the records hold (OpenAI names run and shard)."""
    for shard in shards:
        rounds = record(run_uri, shard)["rounds"]
        assert stats["batches_by_run_shard"][f"{run_id}/{shard}"] == len(rounds), shard


@pytest.mark.parametrize("paced", [False, True], ids=["learned", "paced"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_600_rows_in_6_shards_with_room_for_2_batches_all_arrive(wd, backend, paced, caplog):
    """The issue's case: a refusal used to be a failed attempt (400 rows in
    ``failed_requests.jsonl``, 200 returned, no warning). ``max_retries=0``: a refusal is never
    an attempt, so one attempt each is enough."""
    extra = pacing(backend) if paced else {}
    with limited(backend) as sim:
        llm = make_llm(Numbered, backend, sim, shard_size=100, max_retries=0, **extra)
        with caplog.at_level(logging.WARNING, logger="curator_flows.batch.queue"):
            response = llm(ROWS, working_dir=wd)
        stats = sim.stats()
    run_uri = response.cache_dir
    assert len(response.dataset) == 600 and response.request_stats.failed == 0
    assert sorted(response.dataset["n"]) == list(range(100, 700))
    assert failed_requests(run_uri) == []
    assert set(success_counts(run_uri).values()) == {1}
    assert peak(stats, backend) <= (TOKENS if backend == "openai" else REQUESTS)
    manifest = steps.status(run_uri)
    assert [s["requests"] for s in manifest["shards"]] == [100] * 6
    rounds = [record(run_uri, s["shard"])["rounds"] for s in manifest["shards"]]
    assert all(entry["attempt"] == 1 for entries in rounds for entry in entries)
    refused = [entry for entries in rounds for entry in entries if entry.get("refused")]
    if paced:  # submitted no more than fits: nothing refused
        assert stats["batch_queue_refusals"] == {} and not refused
    else:  # learned from the refusals, said so
        assert stats["batch_queue_refusals"][backend] == len(refused) >= 1
        assert "Not counted as an attempt" in caplog.text
        if backend == "openai":
            assert "Enqueued token limit reached for gpt-4o-mini" in caplog.text
    if backend == "openai":
        run_id = manifest["run_id"]
        assert_each_batch_created_once_per_round(run_uri, run_id, ["00000", "00005"], stats)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_step_api_advances_queued_shards_until_every_row_is_in(wd, backend):
    """``advance`` from the run URI alone, shard after shard, as a wrapper would: a shard that
    must wait is ``queued`` with a ``wait_seconds``; ``poll`` and ``status`` say so too."""
    with limited(backend) as sim:
        llm = make_llm(Numbered, backend, sim, shard_size=100, max_retries=0)
        run = steps.prepare(llm, ROWS, wd)
        todo, states, polled = list(run["shards"]), set(), None
        deadline = time.monotonic() + 120
        while todo:
            waits = []
            for shard in list(todo):
                state = steps.advance(run["run_uri"], shard, credentials=credentials())
                json.dumps(state)
                states.add(state["state"])
                if state["done"]:
                    todo.remove(shard)
                    continue
                assert state["wait_seconds"] > 0
                waits.append(state["wait_seconds"])
                if state["state"] == "queued" and polled is None:
                    assert state["status"] == "queued" and state["pending"] == 100
                    polled = steps.poll(run, shard, credentials=credentials())
                    status = steps.status(run)["shards"][run["shards"].index(shard)]
                    assert status["state"] == "queued"
            assert time.monotonic() < deadline
            time.sleep(min(waits, default=0))
        stats = sim.stats()
    assert "queued" in states and "done" in states
    assert polled is not None and polled["state"] == "queued"
    summary = steps.finalize(run)
    assert summary["rows"] == 600 and summary["failed"] == 0
    assert failed_requests(run["run_uri"]) == []
    assert peak(stats, backend) <= (TOKENS if backend == "openai" else REQUESTS)


@pytest.mark.parametrize("paced", [False, True], ids=["learned", "paced"])
def test_two_hundred_tiny_shards_at_once_finish_with_every_row(wd, paced):
    """A nightly run of 200 shards submitted at once, the queue holding 8 of them: every row,
    no failure line, and one create per shard and round (none at all refused when paced)."""
    rows = [{"n": i} for i in range(100, 500)]  # 2 rows a shard: 20 tokens, 22 estimated
    limit = 180
    extra = {"max_enqueued_tokens": limit} if paced else {}
    with limited("openai", tokens=limit, timings=QUICK) as sim:
        llm = make_llm(
            Numbered, "openai", sim, shard_size=2, batch_check_interval=0.02, max_retries=0, **extra
        )
        response = llm(rows, working_dir=wd)
        stats = sim.stats()
    run_uri, run_id = response.cache_dir, os.path.basename(response.cache_dir)
    assert len(response.dataset) == 400 and response.request_stats.failed == 0
    assert failed_requests(run_uri) == []
    shards = [s["shard"] for s in steps.status(run_uri)["shards"]]
    assert len(shards) == 200
    assert_each_batch_created_once_per_round(run_uri, run_id, shards, stats)
    assert stats["peak_enqueued_tokens"] <= limit
    if paced:
        assert stats["batch_queue_refusals"] == {} and stats["batches_created"] == 200
    else:  # the first burst starts slowly: a few refusals teach the limit
        assert stats["batches_created"] - 200 == stats["batch_queue_refusals"].get("openai", 0) <= 8


def test_two_workers_advancing_one_run_pace_together(wd, tmp_path):
    """Two processes advance every shard of one run at once (leases keep them off each other's
    shards); their admissions share the claims in the run directory, so together they hold the
    provider's queue to ``max_enqueued_tokens`` (a race can overshoot by one shard a worker)."""
    limit = 112
    with limited("openai", tokens=limit, timings=QUICK) as sim:
        params = batch_params(
            sim, shard_size=2, batch_check_interval=0.02, max_retries=0, max_enqueued_tokens=limit
        )
        llm = Numbered(MODELS["openai"], batch=True, backend="openai", backend_params=params)
        run = steps.prepare(llm, [{"n": i} for i in range(100, 180)], wd)  # 40 shards
        env = {**os.environ, "PYTHONPATH": str(HERE), "OPENAI_API_KEY": "sk-test-not-a-secret"}
        workers = [
            subprocess.Popen(
                [sys.executable, str(HERE / "queue_worker.py"), run["run_uri"], order],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for order in ("forward", "backward")
        ]
        outputs = [worker.communicate(timeout=180) for worker in workers]
        stats = sim.stats()
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    done = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum(d["advanced"] for d in done) >= 40 and all(d["advanced"] for d in done)
    summary = steps.finalize(run)
    assert summary["rows"] == 80 and summary["failed"] == 0
    assert failed_requests(run["run_uri"]) == []
    assert_each_batch_created_once_per_round(run["run_uri"], run["run_id"], run["shards"], stats)
    assert stats["batch_queue_refusals"].get("openai", 0) <= 2
    assert stats["batches_created"] == 40 + stats["batch_queue_refusals"].get("openai", 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shard_larger_than_the_limit_is_a_config_error(bsim, wd, backend):
    param = {"max_enqueued_tokens": 50} if backend == "openai" else {"max_enqueued_requests": 5}
    llm = make_llm(Numbered, backend, bsim, shard_size=10, **param)
    run = steps.prepare(llm, ROWS[:10], wd)
    with pytest.raises(ConfigError, match=r"shard 00000 needs .* enqueued .* can never be"):
        steps.submit(run, "00000", llm=llm)
    assert bsim.stats()["batches_created"] == 0


def test_new_params_never_change_a_run(wd):
    rows = ROWS[:20]
    plain = steps.prepare(Numbered("gpt-4o-mini", batch=True), rows, wd, rebuild_check=False)
    limited_llm = Numbered(
        "gpt-4o-mini",
        batch=True,
        backend_params={"max_enqueued_tokens": 10_000, "max_enqueued_requests": 100},
    )
    assert steps.prepare(limited_llm, rows, wd, rebuild_check=False)["run_id"] == plain["run_id"]
    with pytest.raises(ConfigError, match="max_enqueued_tokens"):
        Numbered("gpt-4o-mini", batch=True, backend_params={"max_enqueued_tokens": 0})
