"""``steps.status`` after a cancel: the shards say ``cancelled`` (not ``in_flight``), and what
the provider completed inside the cancelled batches (billed, not collected yet) is counted
until a collect stores it."""

from __future__ import annotations

import time

from batch_helpers import credentials, make_llm, wait_done
from batch_llms import Numbered

from curator_flows import steps
from curator_flows.cli import format_status


def test_status_after_a_cancel_shows_what_the_cancelled_batches_finished(bsim, wd):
    bsim.configure(
        batch_timings={
            "validating": 0.05,
            "in_progress": 12.0,
            "finalizing": 0.05,
            "cancelling": 0.05,
        }
    )
    llm = make_llm(Numbered, "openai", bsim, batch_size=20)
    run = steps.prepare(llm, [{"n": i} for i in range(40)], wd)
    for shard in run["shards"]:
        steps.submit(run, shard, llm=llm)
    time.sleep(1.5)  # a share of each batch's items runs before the cancel
    cancelled = steps.cancel(run)
    assert len(cancelled["batches"]) == 2 and not cancelled["errors"]

    report = steps.status(run)
    assert report["cancelled"]
    assert [s["state"] for s in report["shards"]] == ["cancelled", "cancelled"]
    finished = report["totals"]["uncollected"]
    assert 0 < finished < 40  # completed at the provider before the cancel
    assert report["totals"]["cost"] == 0  # nothing stored yet
    assert "completed at the provider" in format_status(report)

    for shard in run["shards"]:  # once cancelled, a collect stores them (a task retry does)
        wait_done(run, shard, credentials=credentials())
        steps.collect(run, shard, llm=llm)
    report = steps.status(run)
    assert report["totals"]["succeeded"] == finished and report["totals"]["cost"] > 0
    assert report["totals"]["uncollected"] == 0
    assert report["totals"]["failed"] == 40 - finished  # the rest: cancelled, each said so
