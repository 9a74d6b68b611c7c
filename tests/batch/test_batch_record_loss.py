"""Nothing paid is lost when a batch record is: a shard without a record adopts the batch its
run made for it at the provider instead of paying for a second one; an unreadable record is a
library error naming the file, and deleting it is the way out."""

from __future__ import annotations

import os

import pytest
from batch_helpers import BACKENDS, credentials, make_llm, record, success_counts, wait_done
from batch_llms import Numbered

from curator_flows import CuratorFlowsError, steps

ROWS = [{"n": i} for i in range(40)]


def lose_record(run_uri: str, shard: str = "00000") -> None:
    os.remove(os.path.join(run_uri, "batches", f"{shard}.json"))


def advance_to_done(run_uri: str, shard: str = "00000") -> dict:
    import time

    deadline = time.monotonic() + 60
    while True:
        state = steps.advance(run_uri, shard, credentials=credentials())
        if state["done"]:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(state["wait_seconds"])


@pytest.mark.parametrize("ended", [False, True], ids=["live", "ended"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_record_adopts_the_shards_batch_instead_of_paying_twice(bsim, wd, backend, ended):
    llm = make_llm(Numbered, backend, bsim)
    run = steps.prepare(llm, ROWS, wd)
    first = steps.submit(run, "00000", llm=llm)
    assert first["created"]
    if ended:
        wait_done(run, "00000", credentials=credentials())
    lose_record(run["run_uri"])
    again = steps.submit(run, "00000", llm=llm)
    assert again["batch_id"] == first["batch_id"] and again["reattached"]
    assert not again["created"]
    assert record(run["run_uri"], "00000")["rounds"][0]["adopted"] == "provider"
    advance_to_done(run["run_uri"])
    stats = bsim.stats()
    assert stats["batches_created"] == 1
    assert set(stats["batch_items_by_prompt"].values()) == {1}  # 40 items paid once
    summary = steps.finalize(run)
    assert summary["rows"] == 40 and summary["failed"] == 0
    assert set(success_counts(run["run_uri"]).values()) == {1}


def test_a_record_lost_in_a_later_round_adopts_that_round(bsim, wd):
    """OpenAI batches name their round: the record is rebuilt up to it (the rounds before were
    collected: a round is created only after the previous one was), so only what the lost
    round owed is collected, and nothing is sent a third time."""
    bsim.configure(batch_expire_fraction=0.5)
    llm = make_llm(Numbered, "openai", bsim, max_retries=3)
    run = steps.prepare(llm, ROWS, wd)
    steps.submit(run, "00000", llm=llm)
    wait_done(run, "00000", credentials=credentials())
    assert steps.collect(run, "00000", llm=llm)["resubmit"]
    bsim.configure(batch_expire_fraction=None)
    second = steps.submit(run, "00000", llm=llm)
    assert second["round"] == 1 and second["requests"] == 20
    lose_record(run["run_uri"])
    adopted = steps.submit(run, "00000", llm=llm)
    assert adopted["batch_id"] == second["batch_id"] and adopted["round"] == 1
    rounds = record(run["run_uri"], "00000")["rounds"]
    assert [r["adopted"] for r in rounds] == ["lost", "provider"]
    advance_to_done(run["run_uri"])
    assert bsim.stats()["batches_created"] == 2
    summary = steps.finalize(run)
    assert summary["rows"] == 40 and summary["failed"] == 0


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"version": 1, "rounds": [{"round": 0, "sta', "it is not JSON"),
        (b'["not", "a", "record"]', "holds a JSON list"),
        (b'{"version": 1, "rounds": [{"round": 3, "state": "submitted"}]}', "numbered 3"),
        (b'{"version": 1, "rounds": [{"round": 0, "state": "flying"}]}', "unknown state"),
    ],
    ids=["torn", "list", "numbering", "state"],
)
def test_an_unreadable_record_is_an_error_naming_the_file(bsim, wd, content, problem):
    llm = make_llm(Numbered, "openai", bsim)
    run = steps.prepare(llm, ROWS, wd)
    steps.submit(run, "00000", llm=llm)
    path = os.path.join(run["run_uri"], "batches", "00000.json")
    with open(path, "wb") as handle:
        handle.write(content)
    for step in (steps.submit, steps.poll, steps.advance, steps.collect):
        with pytest.raises(CuratorFlowsError) as caught:
            step(run, "00000", credentials=credentials())
        message = str(caught.value)
        assert path in message and problem in message and "Delete it" in message
        assert not caught.value.retryable
    with pytest.raises(CuratorFlowsError, match="cannot be read"):
        steps.status(run)
    # the way out it names: delete the file; the next submit adopts the batch, pays nothing
    os.remove(path)
    advance_to_done(run["run_uri"])
    assert bsim.stats()["batches_created"] == 1
    assert steps.finalize(run)["rows"] == 40
