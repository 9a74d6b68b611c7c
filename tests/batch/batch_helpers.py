"""Helpers shared by the batch tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from curator_flows import Credentials, steps
from curator_flows.store import RunStore

HERE = Path(__file__).parent
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-20241022"}
FAST = {"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05, "cancelling": 0.05}
BACKENDS = ("openai", "anthropic")


def batch_params(sim, **extra: Any) -> dict[str, Any]:
    params = {
        "base_url": sim.base_url,
        "api_key": "sk-test-not-a-secret",
        "batch_check_interval": 0.05,
        "progress": "off",
        "in_mtok_cost": 1.0,
        "out_mtok_cost": 2.0,
    }
    params.update(extra)
    return params


def make_llm(cls, backend: str, sim, **extra: Any):
    return cls(
        MODELS[backend], batch=True, backend=backend, backend_params=batch_params(sim, **extra)
    )


def credentials(key: str = "sk-test-not-a-secret") -> Credentials:
    return Credentials(api_key=key)


def wait_done(run: Any, shard: str, timeout: float = 20.0, **kw: Any) -> dict[str, Any]:
    """Poll (one status request per call, like a sensor) until the batch ended."""
    deadline = time.monotonic() + timeout
    while True:
        result = steps.poll(run, shard, **kw)
        if result["done"]:
            return result
        assert time.monotonic() < deadline, f"batch never ended: {result}"
        time.sleep(0.03)


def response_lines(run_uri: str, shard: str | None = None) -> list[dict[str, Any]]:
    store = RunStore(run_uri)
    pattern = f"responses/{shard or '*'}.*jsonl"
    return list(store.iter_records(pattern))


def success_counts(run_uri: str) -> Counter:
    return Counter(r["id"] for r in response_lines(run_uri) if "content" in r)


def record(run_uri: str, shard: str) -> dict[str, Any]:
    return RunStore(run_uri).read_json(f"batches/{shard}.json")


def failed_requests(run_uri: str) -> list[dict[str, Any]]:
    path = os.path.join(run_uri, "failed_requests.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        return [orjson.loads(line) for line in handle]


def run_step(args: dict[str, Any], env: dict[str, str] | None = None, expect: int = 0) -> Any:
    """Run ``step_runner.py`` with ``args`` in a fresh interpreter; its JSON answer."""
    full_env = {**os.environ, "PYTHONPATH": str(HERE), **(env or {})}
    done = subprocess.run(
        [sys.executable, str(HERE / "step_runner.py"), json.dumps(args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == expect, (done.returncode, done.stdout, done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1]) if expect == 0 else None
