"""kill -9 in the middle of a run, then resume: only requests without a stored response are sent."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SUPPORT = Path(__file__).parent / "support"


def _response_lines(wd: str) -> int:
    return sum(sum(1 for _ in open(path, "rb")) for path in glob.glob(f"{wd}/*/responses/*.jsonl"))


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SUPPORT)}


def test_kill_9_mid_run_then_resume_sends_each_prompt_once(sim, wd):
    n, concurrency = 600, 16
    sim.configure(latency=0.01)
    child = subprocess.Popen(
        [
            sys.executable,
            str(SUPPORT / "run_numbered.py"),
            sim.base_url,
            wd,
            str(n),
            str(concurrency),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while _response_lines(wd) < n // 3:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    stored = _response_lines(wd)
    assert stored < n, "the run finished before it was killed"

    sim.configure(latency=0.0)
    done = subprocess.run(
        [sys.executable, str(SUPPORT / "run_numbered.py"), sim.base_url, wd, str(n)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = sim.stats()["by_prompt"]
    assert len(seen) == n
    resent = sum(count - 1 for count in seen.values())
    assert resent <= concurrency, (
        f"{resent} prompts were sent twice (at most {concurrency} in flight)"
    )
    assert _response_lines(wd) == n  # one line per request: nothing stored twice


def test_run_id_is_stable_across_interpreters(wd):
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from resume_llms import Numbered\n"
        "from curator_flows import steps\n"
        "import tempfile\n"
        "llm = Numbered('gpt-4o-mini', backend_params=%s)\n"
        "print(steps.prepare(llm, [{'n': i} for i in range(50)], tempfile.mkdtemp())['run_id'])\n"
    )
    ids = set()
    for params in ({"api_key": "a", "max_requests_per_minute": 5}, {"api_key": "b"}):
        out = subprocess.run(
            [sys.executable, "-c", code % (str(SUPPORT), params)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "random"},
        )
        assert out.returncode == 0, out.stderr
        ids.add(out.stdout.strip())
    assert len(ids) == 1
