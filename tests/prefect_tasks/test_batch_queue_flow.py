"""The flows under the provider's limits on work waiting for it: ``curate_batch`` waits for
room in the batch queue (shards ``queued``) and submits them again, every row arriving; and the
flows prepare at most ``max_shards`` shards (each shard makes task runs)."""

from __future__ import annotations

import pytest
from flow_llms import Numbered

from curator_flows import steps
from curator_flows.testing.simulator import Simulator

FAST_BATCHES = {"validating": 0.05, "in_progress": 0.2, "finalizing": 0.05, "cancelling": 0.05}
#: "number 10" .. "number 79": 10 tokens each as the simulator counts them, 100 a shard
LIMIT = 250  # room for two shards


@pytest.mark.parametrize("paced", [False, True], ids=["learned", "max_enqueued_tokens"])
def test_curate_batch_waits_for_room_in_the_queue(prefect_server, wd, paced):
    from prefect_tasks import curate_batch

    extra = {"max_enqueued_tokens": LIMIT} if paced else {}
    with Simulator(batch_timings=FAST_BATCHES, batch_enqueued_token_limit=LIMIT) as sim:
        llm = Numbered(
            "gpt-4o-mini",
            batch=True,
            backend_params={
                "base_url": sim.base_url,
                "progress": "off",
                "shard_size": 10,
                "batch_check_interval": 0.05,
                "max_retries": 0,  # a refusal is no attempt: no retry is needed
                **extra,
            },
        )
        summary = curate_batch(llm, [{"n": i} for i in range(10, 80)], wd)
        stats = sim.stats()
    assert (summary["rows"], summary["failed"]) == (70, 0)
    assert sorted(r["n"] for r in steps.load_response(summary["run_uri"]).dataset) == list(
        range(10, 80)
    )
    assert stats["peak_enqueued_tokens"] <= LIMIT
    if paced:
        assert stats["batch_queue_refusals"] == {}
        assert stats["batches_created"] == 7
    else:
        assert stats["batch_queue_refusals"]["openai"] >= 1


def test_flows_prepare_at_most_max_shards(prefect_server, sim, wd):
    from prefect_tasks import curate

    llm = Numbered(
        "gpt-4o-mini",
        backend_params={"base_url": sim.base_url, "progress": "off", "shard_size": 10},
    )
    summary = curate(llm, [{"n": i} for i in range(50)], wd, max_shards=2)
    assert summary["rows"] == 50
    status = steps.status(summary["run_uri"])
    assert [s["requests"] for s in status["shards"]] == [25, 25]
