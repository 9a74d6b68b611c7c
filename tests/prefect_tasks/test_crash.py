"""A flow run killed with SIGKILL right after it submitted its batches, then a fresh flow run:
the new one re-attaches (its submit tasks come from the cache keyed by run id, shard and step)
and the provider saw one batch per shard and each prompt once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import prefect_api as api

from curator_flows import steps
from curator_flows.testing.simulator import Simulator

HERE = Path(__file__).parent
SLOW_BATCHES = {"validating": 0.1, "in_progress": 4.0, "finalizing": 0.1, "cancelling": 0.1}


def submitted_shards(wd: str) -> dict[str, str]:
    """shard -> batch id of every batch record under ``wd`` that has one."""
    out = {}
    for path in Path(wd).glob("*/batches/*.json"):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue  # being replaced right now
        rounds = record.get("rounds") or []
        if rounds and rounds[-1].get("batch_id"):
            out[path.stem] = rounds[-1]["batch_id"]
    return out


def completed_submits() -> int:
    """Submit tasks the running (child's) flow run has finished."""
    return sum(
        1
        for shard in ("00000", "00001", "00002")
        for t in api.task_runs_named(f"submit_batch-{shard}-c0", of_running_flow_runs=True)
        if t.state is not None and t.state.name == "Completed"
    )


def test_a_killed_flow_run_is_re_attached_by_the_next_one(prefect_env, wd):
    from prefect_tasks import curate_batch

    with Simulator(batch_timings=SLOW_BATCHES) as sim:
        llm_kwargs = {
            "model_name": "gpt-4o-mini",
            "batch": True,
            "backend_params": {
                "base_url": sim.base_url, "batch_size": 10, "batch_check_interval": 0.1,
                "progress": "off",
            },
        }  # fmt: skip
        args = {
            "flow": "curate_batch", "llm": "flow_llms:Numbered", "llm_kwargs": llm_kwargs,
            "dataset": [{"n": i} for i in range(30)], "working_dir": wd,
            "run_key": "2026-11-27", "credentials": {"api_key": "sk-test"},
        }  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, str(HERE / "flow_runner.py"), json.dumps(args)],
            env=prefect_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while len(submitted_shards(wd)) < 3 or completed_submits() < 3:
                assert child.poll() is None, child.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the child never submitted its batches"
                time.sleep(0.05)
            os.kill(child.pid, signal.SIGKILL)  # right after submit: every batch still running
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        batches = submitted_shards(wd)
        assert sim.stats()["batches_created"] == 3

        state = curate_batch(
            "flow_llms:Numbered", args["dataset"], wd, run_key="2026-11-27",
            credentials={"api_key": "sk-test"}, llm_kwargs=llm_kwargs, return_state=True,
        )  # fmt: skip
        stats = sim.stats()
    summary = state.result()
    assert summary["rows"] == 30 and summary["failed"] == 0
    rows = list(steps.load_response(summary["run_uri"]).dataset)
    assert sorted(r["n"] for r in rows) == list(range(30))
    assert stats["batches_created"] == 3  # one batch per shard: nothing was submitted again
    assert sorted(stats["batches_by_run_shard"].values()) == [1, 1, 1]
    assert len(stats["batch_items_by_prompt"]) == 30
    assert set(stats["batch_items_by_prompt"].values()) == {1}  # each prompt once
    assert submitted_shards(wd) == batches  # the same batches, collected
    by_name = {t.name: t.state.name for t in api.task_runs(api.flow_run_id(state))}
    assert [by_name[f"submit_batch-0000{i}-c0"] for i in range(3)] == ["Cached"] * 3
    assert all(by_name[f"collect_batch-0000{i}-c0"] == "Completed" for i in range(3))
