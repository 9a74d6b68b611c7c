"""Finalize and publish 1,000,000 rows: rows/s and peak RSS of each, in its own process.

The run is prepared for real (``steps.prepare``); its responses are written straight into the
run directory as the online runner writes them (no HTTP: this measures finalize and publish,
not sending). Then, each in a fresh process: ``finalize_run`` (parse → Arrow, one shard at a
time) and ``publish`` (Arrow → Parquet parts + ``_SUCCESS``).

Target: publish peak RSS ≤ 500 MB at 1,000,000 rows.

    python benchmarks/publish_parquet.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import report  # noqa: E402

LLM_ARGS = {"backend_params": {"api_key": "bench", "progress": "off"}}

FINALIZE = """
import json, resource, sys, time
from curator_flows import LLM
from curator_flows.finalize import finalize_run
from curator_flows.runs import open_run
llm = LLM("gpt-4o-mini", **json.loads(sys.argv[2]))
store, manifest = open_run(sys.argv[1])
start = time.perf_counter()
output = finalize_run(store, manifest, llm)
elapsed = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": elapsed, "rows": output["rows"], "peak_rss_mb": rss}))
"""

PUBLISH = """
import json, resource, sys, time
from curator_flows.publish import publish, read_marker
from curator_flows.runs import open_run
store, manifest = open_run(sys.argv[1])
output = store.read_json("output/stats.json")
start = time.perf_counter()
publish(store, manifest, output, sys.argv[2])
elapsed = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
marker = read_marker(sys.argv[2])
size = sum(f["bytes"] for f in marker["files"])
print(json.dumps({"seconds": elapsed, "rows": marker["rows"], "peak_rss_mb": rss,
                  "files": len(marker["files"]), "megabytes": size / 1e6}))
"""


def make_run(rows: int, working_dir: str) -> str:
    """A prepared run whose every request has a stored success line."""
    import orjson

    from curator_flows import LLM, steps
    from curator_flows.store import RunStore

    llm = LLM("gpt-4o-mini", **LLM_ARGS)
    dataset = ({"prompt": f"describe item {i}", "item": i} for i in range(rows))
    run = steps.prepare(llm, dataset, working_dir)
    store = RunStore(run["run_uri"])
    now = time.time()
    for shard in run["shards"]:
        with store.atomic_writer(f"responses/{shard}.jsonl") as handle:
            for request in store.iter_lines(f"requests/{shard}.jsonl"):
                line = {
                    "id": request["id"],
                    "content": f"Item {request['row']} is a small red cube made of wood.",
                    "finish_reason": "stop",
                    "usage": [12, 14],
                    "cost": 1.1e-5,
                    "latency": 0.1,
                    "attempts": 1,
                    "ts": now,
                }
                handle.write(orjson.dumps(line) + b"\n")
    return run["run_uri"]


def run_json(argv: list[str]) -> dict:
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_uri = make_run(args.rows, os.path.join(tmp, "wd"))
        setup = time.perf_counter() - start
        fin = run_json([sys.executable, "-c", FINALIZE, run_uri, json.dumps(LLM_ARGS)])
        pub = run_json([sys.executable, "-c", PUBLISH, run_uri, os.path.join(tmp, "published")])
    assert fin["rows"] == pub["rows"] == args.rows, (fin, pub)
    report(
        "publish_parquet",
        {
            "rows": args.rows,
            "setup_s": round(setup, 1),
            "finalize_rows_per_s": round(args.rows / fin["seconds"]),
            "finalize_peak_rss_mb": round(fin["peak_rss_mb"]),
            "publish_rows_per_s": round(args.rows / pub["seconds"]),
            "publish_s": round(pub["seconds"], 2),
            "publish_peak_rss_mb": round(pub["peak_rss_mb"]),
            "parquet_files": pub["files"],
            "parquet_mb": round(pub["megabytes"], 1),
        },
    )


if __name__ == "__main__":
    main()
