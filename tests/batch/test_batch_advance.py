"""steps.advance: the batch loop a wrapper calls until done (submit → poll → collect → resubmit
what expired), never waiting, from the run URI alone."""

from __future__ import annotations

import json
import time

import pytest
from batch_helpers import BACKENDS, credentials, make_llm, record, success_counts
from batch_llms import Numbered

from curator_flows import steps


@pytest.mark.parametrize("backend", BACKENDS)
def test_advance_drives_a_partially_expired_run_to_done(bsim, wd, backend):
    bsim.configure(batch_expire_fraction=0.3)
    llm = make_llm(Numbered, backend, bsim, batch_size=20, max_retries=3)
    run = steps.prepare(llm, [{"n": i} for i in range(40)], wd)
    seen_states = set()
    for shard in run["shards"]:
        deadline = time.monotonic() + 60
        while True:
            state = steps.advance(run["run_uri"], shard, credentials=credentials())
            json.dumps(state)  # small, JSON: what XCom or a Prefect result carries
            seen_states.add(state["state"])
            if state["done"]:
                break
            assert state["wait_seconds"] > 0 and state["submitted_at"] is not None
            assert time.monotonic() < deadline
            if (state["round"] or 0) >= 1:  # the resubmitted round runs to completion
                bsim.configure(batch_expire_fraction=None)
            time.sleep(state["wait_seconds"])
    assert "submitted" in seen_states and "done" in seen_states
    assert sum(success_counts(run["run_uri"]).values()) == 40
    rounds = [len(record(run["run_uri"], s)["rounds"]) for s in run["shards"]]
    assert max(rounds) >= 2  # what expired went into a new round
    summary = steps.finalize(run)
    assert summary["rows"] == 40 and summary["failed"] == 0
    # a finished shard advances to done at once, sending nothing
    before = bsim.stats()["batches_created"]
    assert steps.advance(run, run["shards"][0], credentials=credentials())["done"]
    assert bsim.stats()["batches_created"] == before


def test_two_submits_of_one_shard_at_once_create_one_batch(bsim, wd):
    import threading

    from curator_flows import LeaseHeldError

    llm = make_llm(Numbered, "openai", bsim)
    run = steps.prepare(llm, [{"n": i} for i in range(30)], wd)
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def submit() -> None:
        barrier.wait()
        try:
            outcomes.append(steps.submit(run, "00000", llm=llm)["state"])
        except LeaseHeldError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bsim.stats()["batches_created"] == 1
    assert "submitted" in outcomes
    # the other one either saw the lease (retryable) or, coming second, the recorded batch
    other = [o for o in outcomes if o != "submitted"]
    assert all(isinstance(o, LeaseHeldError) and o.retryable for o in other)


def test_a_poll_never_overwrites_a_record_saved_after_it_read_it(bsim, wd):
    from curator_flows.batch.records import BatchRecord
    from curator_flows.runs import open_run

    llm = make_llm(Numbered, "openai", bsim)
    run = steps.prepare(llm, [{"n": i} for i in range(5)], wd)
    steps.submit(run, "00000", llm=llm)
    store, _ = open_run(run)
    stale = BatchRecord.load(store, "00000")  # what a slow poll read
    fresh = BatchRecord.load(store, "00000")
    fresh.current["note"] = "a collect moved on"
    fresh.save()
    stale.current["status"] = "in_progress"
    assert not stale.save_if_unchanged()
    assert BatchRecord.load(store, "00000").current["note"] == "a collect moved on"
    current = BatchRecord.load(store, "00000")
    current.current["status"] = "polled"
    assert current.save_if_unchanged()
