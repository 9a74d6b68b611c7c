"""A tightened ``response_format`` validator refuses answers an earlier flow run stored:
``finalize`` takes them back (``IncompleteRunError.pending_shards``), and the flow sends exactly
those shards again, past their cached results, and finalizes once more, in the same flow run;
the simulator sees only the taken-back requests again."""

from __future__ import annotations

import re

import flow_llms
import prefect_api as api
from flow_llms import (
    Dish,
    DishWriter,
    OfflineTakes,
    StrictDish,
    StrictDishWriter,
    StrictOfflineTakes,
    TakeCountingGenerator,
)

from curator_flows import steps
from curator_flows.testing.simulator import Simulator

ROWS = [{"n": i} for i in range(12)]
#: rows whose stored answers the strict validator refuses: all in the first shard (4 rows each)
REFUSED_ROWS = (1, 2)
FAST_BATCHES = {"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05, "cancelling": 0.05}


def states_by_task(state) -> dict[str, list[str]]:
    """Task run states in start order, by task run name (a name Prefect generated,
    ``finalize-d51``, without its random suffix); a run that never started (``Cached``: Prefect
    before 3.7 gives it no start time) counts from its creation."""
    out: dict[str, list[str]] = {}
    runs = api.task_runs(api.flow_run_id(state))
    for task_run in sorted(runs, key=lambda t: t.start_time or t.created):
        name = re.sub(r"-[0-9a-f]{3}$", "", task_run.name)
        out.setdefault(name, []).append(task_run.state.name)
    return out


def refuse(summary) -> set[str]:
    """Make :class:`StrictDish` refuse the stored names of :data:`REFUSED_ROWS`."""
    names = {row["n"]: row["name"] for row in steps.load_response(summary["run_uri"]).dataset}
    flow_llms.REFUSED.clear()
    flow_llms.REFUSED.update(names[n] for n in REFUSED_ROWS)
    assert len(flow_llms.REFUSED) == len(REFUSED_ROWS)
    return flow_llms.REFUSED


def check_output(summary, first, refused: set[str]) -> None:
    assert summary["run_id"] == first["run_id"]  # the same run, re-finalized
    assert (summary["rows"], summary["failed"]) == (12, 0)
    rows = {row["n"]: row["name"] for row in steps.load_response(summary["run_uri"]).dataset}
    assert sorted(rows) == list(range(12)) and not set(rows.values()) & refused
    before = {row["n"]: row["name"] for row in steps.load_response(first["run_uri"]).dataset}
    assert all(rows[n] == before[n] for n in rows if n not in REFUSED_ROWS)


def test_curate_sends_taken_back_answers_again_in_the_same_flow_run(prefect_server, wd):
    from prefect_tasks import curate

    assert Dish.model_json_schema() == StrictDish.model_json_schema()
    with Simulator() as sim:
        params = {"base_url": sim.base_url, "progress": "off", "shard_size": 4}
        first = curate(DishWriter("gpt-4o-mini", backend_params=params), ROWS, wd, run_key="k")
        refused = refuse(first)
        sent = sim.stats()["requests"]
        strict = StrictDishWriter("gpt-4o-mini", backend_params=params)
        state = curate(strict, ROWS, wd, run_key="k", return_state=True)
        summary = state.result()
        resent = sim.stats()["requests"] - sent
        check_output(summary, first, refused)
        assert len(REFUSED_ROWS) <= resent <= 4 * len(REFUSED_ROWS)  # only the taken-back ones
        runs = states_by_task(state)
        assert runs["run_online_shard-00000"] == ["Cached", "Completed"]  # sent again
        assert runs["run_online_shard-00001"] == runs["run_online_shard-00002"] == ["Cached"]
        assert runs["finalize"] == ["Failed", "Completed"]
        again = curate(strict, ROWS, wd, run_key="k")  # finished now: nothing sent
        assert again["rows"] == 12 and sim.stats()["requests"] == sent + resent


def test_curate_batch_submits_taken_back_answers_again_in_the_same_flow_run(prefect_server, wd):
    from prefect_tasks import curate_batch

    with Simulator(batch_timings=FAST_BATCHES) as sim:
        params = {
            "base_url": sim.base_url, "progress": "off", "batch_size": 4,
            "batch_check_interval": 0.05,
        }  # fmt: skip
        lenient = DishWriter("gpt-4o-mini", batch=True, backend_params=params)
        first = curate_batch(lenient, ROWS, wd, run_key="k")
        refused = refuse(first)
        batches = sim.stats()["batches_created"]
        strict = StrictDishWriter("gpt-4o-mini", batch=True, backend_params=params)
        state = curate_batch(strict, ROWS, wd, run_key="k", return_state=True)
        summary = state.result()
        check_output(summary, first, refused)
        assert sim.stats()["batches_created"] >= batches + 1
        runs = states_by_task(state)
        assert runs["submit_batch-00000-c0"] == ["Cached"]
        assert runs["submit_batch-00000-c1"] == ["Completed"]  # the taken-back ones, resubmitted
        assert not any(name.endswith("-c1") for name in runs if "-00000-" not in name)
        assert runs["finalize"] == ["Failed", "Completed"]


def test_curate_offline_generates_taken_back_answers_again_in_the_same_flow_run(
    prefect_server, wd, monkeypatch
):
    from curator_flows import offline
    from prefect_tasks import curate_offline

    generator = TakeCountingGenerator()
    monkeypatch.setattr(offline, "build_generator", lambda llm: generator)
    params = {"progress": "off", "shard_size": 4}
    first = curate_offline(
        OfflineTakes("some/model", backend="vllm", backend_params=params), ROWS, wd, run_key="k"
    )
    assert len(generator.seen) == 12
    monkeypatch.setattr(flow_llms, "REFUSED_FIRST_TAKES", set(REFUSED_ROWS))
    strict = StrictOfflineTakes("some/model", backend="vllm", backend_params=params)
    state = curate_offline(strict, ROWS, wd, run_key="k", return_state=True)
    summary = state.result()
    assert summary["run_id"] == first["run_id"] and (summary["rows"], summary["failed"]) == (12, 0)
    takes = {row["n"]: row["take"] for row in steps.load_response(summary["run_uri"]).dataset}
    assert takes == {n: 2 if n in REFUSED_ROWS else 1 for n in range(12)}
    assert len(generator.seen) == 12 + len(REFUSED_ROWS)  # only the taken-back ones again
    runs = states_by_task(state)
    assert runs["run_offline_shard-00000"] == ["Cached", "Completed"]
    assert runs["run_offline_shard-00001"] == runs["run_offline_shard-00002"] == ["Cached"]
    assert runs["finalize"] == ["Failed", "Completed"]
