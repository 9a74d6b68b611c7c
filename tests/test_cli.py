"""``curator-flows status | cancel | simulator`` against real runs and a real simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from curator_flows import LLM, steps
from curator_flows.cli import main

FAST = {"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05, "cancelling": 0.05}


class Lines(LLM):
    def prompt(self, input: dict) -> str:
        return f"line {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "text": response}


def _batch_llm(sim, **extra) -> Lines:
    params = {
        "base_url": sim.base_url,
        "api_key": "sk-test",
        "batch_check_interval": 0.05,
        "progress": "off",
        "in_mtok_cost": 1.0,
        "out_mtok_cost": 2.0,
        **extra,
    }
    return Lines("gpt-4o-mini", batch=True, backend_params=params)


def test_status_of_an_online_run(sim, params, wd, capsys):
    result = Lines("gpt-4o-mini", backend_params=params(shard_size=4, in_mtok_cost=1.0))(
        [{"n": i} for i in range(10)], working_dir=wd
    )
    assert main(["status", result.cache_dir, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "online" and report["finalized"]
    assert [s["state"] for s in report["shards"]] == ["done", "done", "done"]
    assert report["totals"]["succeeded"] == 10 and report["totals"]["cost"] > 0

    assert main(["status", result.cache_dir]) == 0
    text = capsys.readouterr().out
    assert "10/10 succeeded" in text and "finalized" in text and "00002" in text


def test_status_and_cancel_of_a_batch_run(wd, capsys, monkeypatch):
    from curator_flows.testing.simulator import Simulator

    with Simulator(batch_timings={**FAST, "in_progress": 30.0}) as sim:
        llm = _batch_llm(sim, batch_size=3)
        run = steps.prepare(llm, [{"n": i} for i in range(6)], wd)
        steps.submit(run, "00000", llm=llm)

        assert main(["status", run["run_uri"]]) == 0
        text = capsys.readouterr().out
        assert "in_flight" in text and "not_submitted" in text and "batch_" in text

        monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
        assert main(["cancel", run["run_uri"], "--json"]) == 0
        cancelled = json.loads(capsys.readouterr().out)
        assert [b["shard"] for b in cancelled["batches"]] == ["00000"]
        assert sim.stats()["batches_cancelled"] == 1
        assert steps.submit(run, "00001", llm=llm)["state"] == "cancelled"

        assert main(["status", run["run_uri"], "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["cancelled"] and report["mode"] == "batch"


def test_errors_exit_non_zero_with_a_message(sim, params, wd, capsys, tmp_path):
    assert main(["status", str(tmp_path / "nope")]) == 1
    assert "no prepared run" in capsys.readouterr().err
    online = Lines("gpt-4o-mini", backend_params=params())([{"n": 1}], working_dir=wd)
    assert main(["cancel", online.cache_dir]) == 1
    assert "not batch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["frobnicate"])
    assert usage.value.code == 2


def test_simulator_subcommand_delegates_to_the_simulator(capsys):
    with pytest.raises(SystemExit) as shown:
        main(["simulator", "--help"])
    assert shown.value.code == 0
    assert "--port" in capsys.readouterr().out

    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "curator_flows.cli",
            "simulator",
            "--port",
            "0",
            "--exit-with-parent",
            str(os.getpid()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().startswith("READY http://127.0.0.1:")
    finally:
        child.terminate()
        child.wait(timeout=10)
