"""A nightly build at scale on one machine: prepare → send → finalize → publish, in 100 shards.

    python benchmarks/nightly_scale.py [--rows 1000000] [--shards 100] [--modes online,batch]
                                       [--queue-batches 10] [--paced] [--json]

Each step runs in a process of its own (as an orchestrator runs it), so its peak RSS is its own;
the simulator runs in another (no latency; batches end within a second). ``online`` sends every
shard from one step process; ``batch`` advances every shard (submit → poll → collect) from one
step process under an enqueued token limit that holds ``--queue-batches`` batches (OpenAI's
limit, in the simulator): learned from its refusals, or with ``--paced`` given to the run as
``max_enqueued_tokens``. Reported per mode: wall time and peak RSS of each step, the files in
the run directory, and the simulator's refusals. The rows stream from a generator: memory should
not grow with them (compare two ``--rows``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb  # noqa: E402

from curator_flows import LLM  # noqa: E402

MODEL = "gpt-4o-mini"
#: the simulator's batches: validated, run and finalized within a fraction of a second
BATCH_TIMINGS = {"validating": 0.05, "in_progress": 0.3, "finalizing": 0.05, "cancelling": 0.05}


class Numbered(LLM):
    def prompt(self, input: dict) -> str:
        return f"Write one sentence about item number {input['n']}."

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}


def make_llm(mode: str, base_url: str, shard_size: int, extra: dict[str, Any]) -> Numbered:
    params = {
        "base_url": base_url,
        "api_key": "sk-bench-not-a-secret",
        "progress": "off",
        "shard_size": shard_size,
        "in_mtok_cost": 0.15,
        "out_mtok_cost": 0.6,
        **extra,
    }
    if mode == "batch":
        params.update(batch_check_interval=0.1, delete_successful_batch_files=True)
        return Numbered(MODEL, batch=True, backend_params=params)
    return Numbered(MODEL, backend_params=params)


# ------------------------------------------------------------------ one step, in this process
def run_step(args: dict[str, Any]) -> dict[str, Any]:
    from curator_flows import steps

    llm = make_llm(args["mode"], args["base_url"], args["shard_size"], args["extra"])
    started = time.perf_counter()
    out: dict[str, Any] = {}
    if args["step"] == "prepare":
        rows = ({"n": i} for i in range(args["rows"]))
        run = steps.prepare(llm, rows, args["working_dir"], rebuild_check=False)
        out = {"run_uri": run["run_uri"], "shards": run["shards"], "requests": run["requests"]}
    elif args["step"] == "send" and args["mode"] == "online":
        result = steps.run_online(args["run_uri"], None, llm=llm)
        out = {"succeeded": result["succeeded"], "failed": result["failed"]}
    elif args["step"] == "send":
        out = advance_all(args["run_uri"], llm)
    elif args["step"] == "finalize":
        result = steps.finalize(args["run_uri"], llm=llm)
        out = {"rows": result["rows"], "failed": result["failed"]}
    elif args["step"] == "publish":
        result = steps.finalize(args["run_uri"], llm=llm, output_uri=args["output_uri"])
        out = {"rows": result["rows"], "output_uri": result["output_uri"]}
    else:
        raise ValueError(args["step"])
    out["seconds"] = round(time.perf_counter() - started, 2)
    out["peak_rss_mb"] = round(step_peak_rss_mb(), 1)
    return out


def step_peak_rss_mb() -> float:
    """This process's own peak RSS: ``VmHWM`` (which ``exec`` resets, unlike ``ru_maxrss``,
    which may keep the high-water mark of the process that forked it), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def advance_all(run_uri: str, llm: Numbered) -> dict[str, Any]:
    """Every shard advanced until done, sleeping as ``advance`` says (what a wrapper does)."""
    from curator_flows import steps

    todo = [s["shard"] for s in steps.status(run_uri)["shards"]]
    calls = queued = 0
    while todo:
        waits = []
        for shard in list(todo):
            state = steps.advance(run_uri, shard, llm=llm)
            calls += 1
            queued += state["state"] == "queued"
            if state["done"]:
                todo.remove(shard)
            else:
                waits.append(state["wait_seconds"])
        time.sleep(min(waits, default=0.0))
    return {"advance_calls": calls, "queued_answers": queued}


# ------------------------------------------------------------------ the build, step by step
@contextlib.contextmanager
def simulator_process(**config: Any):
    """The simulator in a child process; stopped (killed if it lingers: a simulator that held a
    million batch items can take a while to shut down on a busy machine) when the block ends."""
    from curator_flows.testing.simulator import run_in_subprocess

    process, base_url = run_in_subprocess(**config)
    try:
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def in_child(args: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--step-json", json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"step {args['step']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def files_in(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def build(mode: str, rows: int, shards: int, queue_batches: int, paced: bool, tmp: str) -> dict:
    shard_size = math.ceil(rows / shards)
    working_dir = os.path.join(tmp, f"wd-{mode}")
    base = {"mode": mode, "rows": rows, "shard_size": shard_size, "working_dir": working_dir}
    report: dict[str, Any] = {"mode": mode, "rows": rows, "steps": {}}
    started = time.perf_counter()
    with simulator_process(latency=0.0) as url:  # prepare sends nothing
        prepared = in_child({**base, "step": "prepare", "base_url": url, "extra": {}})
    report["steps"]["prepare"] = prepared
    run_uri = prepared["run_uri"]
    config: dict[str, Any] = {"latency": 0.0}
    extra: dict[str, Any] = {}
    if mode == "batch":
        with open(os.path.join(run_uri, "manifest.json"), "rb") as handle:
            manifest = json.load(handle)
        limit = queue_batches * max(s["input_tokens"] for s in manifest["shards"])
        config.update(batch_timings=BATCH_TIMINGS, batch_enqueued_token_limit=limit)
        report["enqueued_token_limit"] = limit
        if paced:
            extra["max_enqueued_tokens"] = limit
    with simulator_process(**config) as url:
        common = {**base, "base_url": url, "extra": extra, "run_uri": run_uri}
        report["steps"]["send"] = in_child({**common, "step": "send"})
        report["steps"]["finalize"] = in_child({**common, "step": "finalize"})
        output_uri = os.path.join(tmp, f"published-{mode}")
        report["steps"]["publish"] = in_child(
            {**common, "step": "publish", "output_uri": output_uri}
        )
        report["simulator"] = simulator_stats(url)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["shards"] = len(prepared["shards"])
    report["run_directory_files"] = files_in(run_uri)
    report["published_files"] = files_in(output_uri)
    assert report["steps"]["finalize"]["rows"] == rows, report
    return report


def simulator_stats(base_url: str) -> dict[str, Any]:
    import urllib.request

    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{root}/_sim/stats", timeout=30) as answer:
        stats = json.load(answer)
    return {
        "requests": stats["requests"],
        "batches_created": stats["batches_created"],
        "batch_queue_refusals": stats["batch_queue_refusals"],
        "peak_enqueued_tokens": stats["peak_enqueued_tokens"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--modes", default="online,batch")
    parser.add_argument("--queue-batches", type=int, default=10)
    parser.add_argument("--paced", action="store_true", help="give the run max_enqueued_tokens")
    parser.add_argument("--keep", default=None, help="build under this directory and keep it")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--step-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step_json:
        print(json.dumps(run_step(json.loads(args.step_json))))
        return 0
    tmp = args.keep or tempfile.mkdtemp(prefix="curator-bench-nightly-")
    reports = []
    try:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            reports.append(build(mode, args.rows, args.shards, args.queue_batches, args.paced, tmp))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    for report in reports:
        print(
            f"{report['mode']}: {report['rows']:,} rows in {report['shards']} shards, "
            f"{report['wall_seconds']} s wall, {report['run_directory_files']} files in the run "
            f"directory, {report['published_files']} published"
        )
        for name, step in report["steps"].items():
            print(f"  {name:<9} {step['seconds']:9.1f} s   peak RSS {step['peak_rss_mb']:7.1f} MB")
        if report["mode"] == "batch":
            sim = report["simulator"]
            print(
                f"  queue: limit {report['enqueued_token_limit']:,} tokens, peak "
                f"{sim['peak_enqueued_tokens']:,}, {sim['batches_created']} batches created, "
                f"refusals {sim['batch_queue_refusals']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
