"""``wait_for_batch``'s deadline counts from the submit of the batch it waits for (the round's
``round_submitted_at`` stored in the run), not from the campaign's first submit: a batch the
provider expired after its 24 h window is resubmitted about a day into the campaign and gets a
full window of its own."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from flow_llms import Numbered

from curator_flows import steps
from curator_flows.errors import BatchDeadlineError
from curator_flows.testing.simulator import Simulator

DAY = 24 * 3600.0
FAST_BATCHES = {"validating": 0.05, "in_progress": 0.2, "finalizing": 0.05, "cancelling": 0.05}


def batch_llm(sim, **extra):
    params = {"base_url": sim.base_url, "progress": "off", "batch_size": 10, **extra}
    return Numbered("gpt-4o-mini", batch=True, backend_params=params)


def poll_until_done(run, shard: str) -> dict:
    deadline = time.monotonic() + 60
    while not (state := steps.poll(run, shard))["done"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return state


def wait(run, shard: str, **options) -> dict:
    """``wait_for_batch`` in a flow run of its own."""
    from prefect import flow

    from prefect_tasks.tasks import wait_for_batch

    @flow
    def waiting() -> dict:
        return wait_for_batch(run, shard, **options)

    return waiting()


def age_first_round(run, shard: str, seconds: float) -> None:
    """Move the shard's first batch ``seconds`` into the past (as if the provider had kept it
    that long before expiring it)."""
    path = Path(run["run_uri"]) / "batches" / f"{shard}.json"
    record = json.loads(path.read_text())
    record["rounds"][0]["submitted_at"] -= seconds
    path.write_text(json.dumps(record))


def test_a_resubmitted_batch_gets_a_full_window_of_its_own(prefect_server, wd):
    from prefect_tasks.tasks import BATCH_DEADLINE_SECONDS

    with Simulator(batch_timings=FAST_BATCHES, batch_expire_fraction=0.5) as sim:
        llm = batch_llm(sim, max_retries=3)
        run = steps.prepare(llm, [{"n": i} for i in range(10)], wd, rebuild_check=False)
        (shard,) = run["shards"]
        steps.submit(run, shard, llm=llm)
        poll_until_done(run, shard)
        assert steps.collect(run, shard, llm=llm)["resubmit"]  # the first batch expired
        age_first_round(run, shard, DAY + 2 * 3600)  # ... 26 h after it was submitted
        again = steps.submit(run, shard, llm=llm)
        assert again["state"] == "submitted" and again["created"]
        assert again["submitted_at"] + BATCH_DEADLINE_SECONDS < time.time()  # campaign: late
        assert again["round_submitted_at"] > time.time() - 60  # this batch: just submitted
        state = wait(run, shard, cycle=1, poll_interval=0.05)
    assert state["done"] and state["batch_id"] == again["batch_id"]


def test_a_batch_that_outlives_its_window_fails_the_wait(prefect_server, wd):
    with Simulator(batch_timings={"in_progress": 600.0}) as sim:
        llm = batch_llm(sim)
        run = steps.prepare(llm, [{"n": i} for i in range(5)], wd, rebuild_check=False)
        (shard,) = run["shards"]
        submitted = steps.submit(run, shard, llm=llm)
        with pytest.raises(BatchDeadlineError, match=f"shard {shard}: batch"):
            wait(run, shard, poll_interval=0.1, deadline_seconds=1.0)
        assert time.time() >= submitted["round_submitted_at"] + 1.0
        steps.cancel(run)
