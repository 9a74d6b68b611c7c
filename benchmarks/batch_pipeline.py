"""Batch pipeline throughput: prepare → submit → (simulator) → collect → finalize.

    python benchmarks/batch_pipeline.py [--rows 200000] [--backend openai|anthropic] [--json]

The simulator runs in a child process (its own GIL) with near-zero batch phase timings, so the
numbers are this library's own cost per step. Targets: ≥ 50,000 rows/s for prepare and for
collect, peak RSS ≤ 500 MB (this process; the simulator child is not counted).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curator_flows import LLM, steps  # noqa: E402
from curator_flows.testing.simulator import run_in_subprocess  # noqa: E402

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-20241022"}
TARGET_ROWS_PER_S = 50_000
TARGET_RSS_MB = 500


class Numbered(LLM):
    def prompt(self, input: dict) -> str:
        return f"Write one sentence about item number {input['n']}."

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rows(n: int):
    return ({"n": i} for i in range(n))


def run(n: int, backend: str, working_dir: str) -> dict[str, Any]:
    proc, base_url = run_in_subprocess(
        batch_timings={"validating": 0.0, "in_progress": 0.2, "finalizing": 0.0},
    )
    try:
        params = {
            "base_url": base_url,
            "api_key": "sk-bench",
            "batch_check_interval": 0.05,
            "progress": "off",
            "in_mtok_cost": 0.15,
            "out_mtok_cost": 0.6,
        }
        llm = Numbered(MODELS[backend], batch=True, backend=backend, backend_params=params)
        timings: dict[str, float] = {}
        rss: dict[str, float] = {}

        def step(name: str, fn):
            started = time.perf_counter()
            out = fn()
            timings[name] = time.perf_counter() - started
            rss[name] = round(peak_rss_mb(), 1)
            return out

        summary = step("prepare", lambda: steps.prepare(llm, rows(n), working_dir))
        shards = summary["shards"]
        step("submit", lambda: [steps.submit(summary, s, llm=llm) for s in shards])

        def wait() -> None:
            for shard in shards:
                while not steps.poll(summary, shard)["done"]:
                    time.sleep(0.05)

        step("simulator", wait)
        collected = step("collect", lambda: [steps.collect(summary, s, llm=llm) for s in shards])
        result = step("finalize", lambda: steps.finalize(summary, llm=llm))
        assert sum(c["succeeded"] for c in collected) == n, collected
        assert result["rows"] == n
    finally:
        proc.terminate()
        proc.wait()
    report = {
        "rows": n,
        "backend": backend,
        "shards": len(shards),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "rows_per_s": {k: round(n / v) for k, v in timings.items() if k != "simulator"},
        "peak_rss_mb_after": rss,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    report["targets_met"] = {
        "prepare": report["rows_per_s"]["prepare"] >= TARGET_ROWS_PER_S,
        "collect": report["rows_per_s"]["collect"] >= TARGET_ROWS_PER_S,
        "peak_rss": report["peak_rss_mb"] <= TARGET_RSS_MB,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--backend", choices=sorted(MODELS), default="openai")
    parser.add_argument("--working-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    working_dir = args.working_dir or tempfile.mkdtemp(prefix="curator-bench-batch-")
    try:
        report = run(args.rows, args.backend, working_dir)
    finally:
        if args.working_dir is None:
            shutil.rmtree(working_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['rows']:,} requests, {report['backend']}, {report['shards']} batches")
        for name, seconds in report["seconds"].items():
            rate = report["rows_per_s"].get(name)
            shown = f"{rate:>10,} rows/s" if rate is not None else "(the simulator's work)"
            peak = report["peak_rss_mb_after"][name]
            print(f"  {name:<10} {seconds:8.2f} s  {shown:<22}  peak RSS {peak:.0f} MB")
        print(f"  targets met: {report['targets_met']}")
    return 0 if all(report["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
