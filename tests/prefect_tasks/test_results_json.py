"""Every task result is plain JSON: the persisted ones are stored by Prefect's JSON serializer
(never pickle) and read back by the standard ``json`` module as the very value the task
returned (nothing the serializer had to wrap as an object); the unpersisted ones (``prepare``,
``finalize``) round-trip through ``json`` unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import prefect_api as api
from flow_llms import Numbered, OfflineNumbers, StandInGenerator

from curator_flows.testing.simulator import Simulator

ROWS = [{"n": i} for i in range(10)]
FAST_BATCHES = {"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05, "cancelling": 0.05}


def wrapped_objects(value) -> list:
    """Values Prefect's JSON encoder wrapped as an object (``{"__class__": ...}``)."""
    if isinstance(value, dict):
        found = [value] if "__class__" in value else []
        return found + [w for v in value.values() for w in wrapped_objects(v)]
    if isinstance(value, list):
        return [w for v in value for w in wrapped_objects(v)]
    return []


def check_task_results(state, persisted: set[str]) -> None:
    """Every task run of the flow run: a persisted result is a JSON file whose ``result`` is
    the task's return value as plain JSON; the tasks named in ``persisted`` all have one."""
    seen = set()
    for task_run in api.task_runs(api.flow_run_id(state)):
        assert task_run.state.is_completed(), task_run.name
        metadata = task_run.state.data
        if metadata is None:  # not persisted: prepare, finalize
            continue
        assert metadata.serializer.type == "json", task_run.name
        record = json.loads(Path(metadata.storage_key).read_text())
        stored = json.loads(record["result"])
        assert stored == task_run.state.result(), task_run.name
        assert not wrapped_objects(stored), task_run.name
        seen.add(task_run.name.split("-")[0])  # run_online_shard-00000 -> run_online_shard
    assert persisted <= seen, seen
    summary = state.result()  # finalize's result
    assert json.loads(json.dumps(summary)) == summary and not wrapped_objects(summary)


def test_online_task_results_are_plain_json(prefect_server, sim, wd):
    from prefect_tasks import curate, tasks

    params = {"base_url": sim.base_url, "progress": "off", "shard_size": 5}
    llm = Numbered("gpt-4o-mini", backend_params=params)
    check_task_results(curate(llm, ROWS, wd, return_state=True), {"run_online_shard"})
    prepared = tasks.prepare.fn(llm, ROWS, wd)  # the result prepare hands the flow
    assert json.loads(json.dumps(prepared)) == prepared and not wrapped_objects(prepared)


def test_batch_task_results_are_plain_json(prefect_server, wd):
    from prefect_tasks import curate_batch

    with Simulator(batch_timings=FAST_BATCHES) as sim:
        params = {
            "base_url": sim.base_url, "progress": "off", "batch_size": 5,
            "batch_check_interval": 0.05,
        }  # fmt: skip
        llm = Numbered("gpt-4o-mini", batch=True, backend_params=params)
        state = curate_batch(llm, ROWS, wd, return_state=True)
        check_task_results(state, {"submit_batch", "wait_for_batch", "collect_batch"})


def test_offline_task_results_are_plain_json(prefect_server, wd, monkeypatch):
    from curator_flows import offline
    from prefect_tasks import curate_offline

    monkeypatch.setattr(offline, "build_generator", lambda llm: StandInGenerator())
    params = {"progress": "off", "shard_size": 5}
    llm = OfflineNumbers("some/model", backend="vllm", backend_params=params)
    check_task_results(curate_offline(llm, ROWS, wd, return_state=True), {"run_offline_shard"})
