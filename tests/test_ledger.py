"""Run statistics live in the store: a run driven step by step in separate processes reports the
same statistics as the same run in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curator_flows import steps
from curator_flows.ledger import StepLedger, run_totals
from curator_flows.store import RunStore

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from resume_llms import Numbered  # noqa: E402


def test_orchestrated_statistics_equal_in_process_statistics(sim, tmp_path):
    sim.configure(latency=0.01)
    rows = [{"n": str(i)} for i in range(60)] + [
        {"n": "60 [[sim:500x1]]"},
        {"n": "61 [[sim:429x1]]"},
    ]
    params = {
        "base_url": sim.base_url,
        "api_key": "k",
        "progress": "off",
        "shard_size": 20,
        "seconds_to_pause_on_rate_limit": 0.1,
        "in_mtok_cost": 1.0,
        "out_mtok_cost": 2.0,
    }
    inproc = Numbered("gpt-4o-mini", backend_params=params)(rows, working_dir=str(tmp_path / "a"))

    sim.reset()  # fault markers count attempts per prompt: start the same way again
    llm = Numbered("gpt-4o-mini", backend_params=params)
    run = steps.prepare(llm, rows, str(tmp_path / "b"))
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "OPENAI_API_KEY": "k"}
    for shard in run["shards"]:  # one process per step, as an orchestrator runs them
        code = f"from curator_flows import steps; steps.run_online({run['run_uri']!r}, {shard!r})"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    code = (
        "import json; from curator_flows import steps\n"
        f"print(json.dumps(steps.finalize({run['run_uri']!r})['statistics']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    orchestrated = json.loads(done.stdout.strip().splitlines()[-1])

    for block in ("request_stats", "token_usage", "cost_info"):
        ours = {k: v for k, v in orchestrated[block].items()}
        theirs = getattr(inproc, block).__dict__
        assert ours == pytest.approx(theirs), block
    assert orchestrated["request_stats"]["attempts"] == 64  # 62 + one 500 + one 429
    assert orchestrated["request_stats"]["rate_limited"] == 1
    perf = orchestrated["performance_stats"]
    assert perf["total_time"] > 0 and perf["mean_latency"] > 0
    assert perf["requests_per_minute"] > 0
    assert inproc.performance_stats.total_time > 0 and inproc.performance_stats.mean_latency > 0


def test_total_time_is_the_union_of_step_intervals(wd):
    store = RunStore(wd)
    for start, end in ((100.0, 110.0), (105.0, 120.0), (200.0, 205.0)):
        ledger = StepLedger(store, "run_online", ["00000"], started_at=start)
        ledger.set(sent=1)
        ledger.close(ended_at=end)
    totals = run_totals(store)
    assert totals["total_time"] == pytest.approx(25.0) and totals["sent"] == 3
