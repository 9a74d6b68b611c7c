"""Prefect's orchestration overhead: the nightly build's online stage (``RecipeGenerator``)
over 20,000 requests in 4 shards, once as the ``curate`` flow on a temporary Prefect server and
once driven directly with the step API (prepare → 4 shards on 4 threads with
``parallel_shards=4`` → finalize), both sides publishing the dataset as Parquet, each side in a
fresh process against the same simulator (another process, no latency, no limits).

Reports each side's wall time (median of ``--repeats``), Prefect's added wall time and each
side's peak RSS. Goals: added wall time ≤ 10 s; the flow process's peak RSS ≤ 400 MB. The
Prefect server (a separate process) starts before the clock does.

    python benchmarks/prefect_overhead.py [--requests 20000] [--shards 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import peak_rss_mb, report, simulator_process  # noqa: E402


def _llm(base_url: str, shard_size: int):
    from dags_examples.generators import RecipeGenerator

    return RecipeGenerator(
        "gpt-4o-mini",
        backend_params={"base_url": base_url, "progress": "off", "shard_size": shard_size},
    )


def _rows(n: int) -> list[dict]:
    return [{"cuisine": f"cuisine number {i}"} for i in range(n)]


def _output_uri(wd: str) -> str:
    """Where both sides publish the dataset (Parquet, ``_SUCCESS`` last)."""
    return os.path.join(wd, "published")


def run_steps(base_url: str, requests: int, shards: int, wd: str) -> dict:
    from curator_flows import steps

    llm = _llm(base_url, requests // shards)
    rows = _rows(requests)
    started = time.perf_counter()
    run = steps.prepare(llm, rows, wd, rebuild_check=False)
    with ThreadPoolExecutor(shards) as pool:
        results = list(
            pool.map(
                lambda shard: steps.run_online(run, shard, llm=llm, parallel_shards=shards),
                run["shards"],
            )
        )
    summary = steps.finalize(run, llm=llm, output_uri=_output_uri(wd))
    wall = time.perf_counter() - started
    assert len(results) == shards and summary["rows"] == requests, summary
    return {"wall": wall, "rows": summary["rows"]}


def run_prefect(base_url: str, requests: int, shards: int, wd: str) -> dict:
    from prefect import flow

    from prefect_tasks import curate

    @flow
    def warm_up() -> None:  # starts the temporary server before the clock does
        return None

    warm_up()
    llm = _llm(base_url, requests // shards)
    rows = _rows(requests)
    started = time.perf_counter()
    summary = curate(llm, rows, wd, output_uri=_output_uri(wd))
    wall = time.perf_counter() - started
    assert summary["rows"] == requests, summary
    return {"wall": wall, "rows": summary["rows"]}


def child(side: str, base_url: str, requests: int, shards: int) -> None:
    wd = tempfile.mkdtemp(prefix=f"bench-{side}-")
    try:
        run = run_prefect if side == "prefect" else run_steps
        out = run(base_url, requests, shards, wd)
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def spawn(side: str, base_url: str, requests: int, shards: int) -> dict:
    home = tempfile.mkdtemp(prefix="bench-prefect-home-")
    env = {
        **os.environ,
        "PREFECT_HOME": home,
        "PREFECT_LOCAL_STORAGE_PATH": os.path.join(home, "storage"),
        "PREFECT_MEMO_STORE_PATH": os.path.join(home, "memo_store.toml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", side, "--base-url", base_url,
             "--requests", str(requests), "--shards", str(shards)],
            env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{side} side failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["steps", "prefect"])
    parser.add_argument("--base-url")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.base_url, args.requests, args.shards)
        return
    runs: dict[str, list[dict]] = {"steps": [], "prefect": []}
    with simulator_process() as base_url:
        for _ in range(args.repeats):
            for side in ("steps", "prefect"):  # alternate: both sides see the same machine
                runs[side].append(spawn(side, base_url, args.requests, args.shards))
    wall = {side: statistics.median(r["wall"] for r in rs) for side, rs in runs.items()}
    rss = {side: max(r["peak_rss_mb"] for r in rs) for side, rs in runs.items()}
    report(
        "prefect_overhead",
        {
            "requests": args.requests,
            "shards": args.shards,
            "steps_wall_s": round(wall["steps"], 2),
            "prefect_wall_s": round(wall["prefect"], 2),
            "added_wall_s": round(wall["prefect"] - wall["steps"], 2),
            "steps_walls": [round(r["wall"], 2) for r in runs["steps"]],
            "prefect_walls": [round(r["wall"], 2) for r in runs["prefect"]],
            "steps_peak_rss_mb": round(rss["steps"]),
            "prefect_peak_rss_mb": round(rss["prefect"]),
        },
    )


if __name__ == "__main__":
    main()
