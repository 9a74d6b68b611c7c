"""The whole ``llm(rows)`` call next to a bare aiohttp client sending the same requests.

One simulator (zero latency, no limits) in its own process serves both sides; each side runs in a
fresh interpreter, in alternating order, ``--repeat`` times (best time of each side reported):

- ours: ``llm(rows, working_dir=<fresh dir>)`` timed from the call to its return (prepare, send,
  finalize, the ``CuratorResponse``), everything the call imports lazily included; then, apart,
  the first access to ``result.dataset`` (which builds the ``datasets.Dataset``);
- bare: one ``aiohttp.ClientSession``, the same concurrency, the same request bodies (the bytes
  our OpenAI backend sends, built before timing), each response body decoded and its content
  kept; timed from opening the session to closing it (the goal's figure), and also with its
  imports (asyncio, aiohttp) included: ours imports aiohttp, asyncio and pyarrow inside the
  call.

Goal: ours within 1.2x of bare for 10,000 rows. Both sides' CPU time is reported too: on a
shared machine it is steadier than wall time.

    python benchmarks/vs_bare_client.py [--rows 10000] [--concurrency 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import report, simulator_process  # noqa: E402

MODEL = "gpt-4o-mini"

OURS = """
import json, sys, time
from curator_flows import LLM
base_url, working_dir = sys.argv[1], sys.argv[2]
rows, concurrency = int(sys.argv[3]), int(sys.argv[4])
llm = LLM(sys.argv[5], backend_params={"base_url": base_url, "api_key": "bench",
          "max_concurrent_requests": concurrency, "progress": "off"})
data = [{"prompt": f"benchmark prompt number {i}"} for i in range(rows)]
start, cpu = time.perf_counter(), time.process_time()
result = llm(data, working_dir=working_dir)
call, cpu = time.perf_counter() - start, time.process_time() - cpu
assert result.request_stats.succeeded == rows, result.request_stats
start = time.perf_counter()
assert len(result.dataset) == rows
dataset = time.perf_counter() - start
print(json.dumps({"call": call, "cpu": cpu, "dataset": dataset}))
"""

BARE = """
import time
wall0 = time.perf_counter()  # for the "imports included" figure
import asyncio, json, sys
import aiohttp, orjson
url, bodies_path, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(bodies_path, "rb") as handle:
    bodies = [line.rstrip(b"\\n") for line in handle]
headers = {"authorization": "Bearer bench", "content-type": "application/json"}

async def main():
    contents = []
    todo = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            for body in todo:
                async with session.post(url, data=body, headers=headers) as response:
                    raw = await response.read()
                    assert response.status == 200, raw
                data = orjson.loads(raw)
                contents.append(data["choices"][0]["message"]["content"])
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return contents

start, cpu = time.perf_counter(), time.process_time()
contents = asyncio.run(main())
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
assert len(contents) == len(bodies)
with_import = time.perf_counter() - wall0
print(json.dumps({"call": elapsed, "cpu": cpu, "with_import": with_import}))
"""


def request_bodies(rows: int) -> list[bytes]:
    """The exact bodies ``LLM(MODEL)`` sends for the benchmark rows (its OpenAI backend's
    template followed by the messages)."""
    import orjson

    from curator_flows import LLM
    from curator_flows.backends.openai import request_template

    llm = LLM(MODEL, backend_params={"api_key": "bench"})
    template = request_template(
        MODEL, llm.generation_params, llm.schema(), llm.config.params.max_tokens
    )
    prefix = orjson.dumps(template)[:-1] + b',"messages":'
    return [
        prefix + orjson.dumps([{"role": "user", "content": f"benchmark prompt number {i}"}]) + b"}"
        for i in range(rows)
    ]


def run_json(argv: list[str]) -> dict:
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ours: list[dict] = []
    bare: list[dict] = []
    with simulator_process() as base_url, tempfile.TemporaryDirectory() as tmp:
        bodies = os.path.join(tmp, "bodies.jsonl")
        with open(bodies, "wb") as handle:
            handle.write(b"".join(body + b"\n" for body in request_bodies(args.rows)))
        url = f"{base_url.rstrip('/')}/chat/completions"
        for attempt in range(args.repeat):
            working_dir = os.path.join(tmp, f"wd-{attempt}")  # fresh: every request is sent
            ours_argv = [
                sys.executable, "-c", OURS, base_url, working_dir, str(args.rows),
                str(args.concurrency), MODEL,
            ]  # fmt: skip
            bare_argv = [sys.executable, "-c", BARE, url, bodies, str(args.concurrency)]
            if attempt % 2:
                bare.append(run_json(bare_argv))
                ours.append(run_json(ours_argv))
            else:
                ours.append(run_json(ours_argv))
                bare.append(run_json(bare_argv))
    best_ours = min(ours, key=lambda r: r["call"])
    best_bare = min(r["call"] for r in bare)
    bare_imported = min(r["with_import"] for r in bare)
    cpu_ours = min(r["cpu"] for r in ours)
    cpu_bare = min(r["cpu"] for r in bare)
    report(
        "vs_bare_client",
        {
            "rows": args.rows,
            "concurrency": args.concurrency,
            "ours_call_s": round(best_ours["call"], 3),
            "bare_aiohttp_s": round(best_bare, 3),
            "ratio": round(best_ours["call"] / best_bare, 3),
            "goal_ratio": 1.2,
            "bare_with_imports_s": round(bare_imported, 3),
            "ratio_vs_bare_with_import": round(best_ours["call"] / bare_imported, 3),
            "ours_cpu_s": round(cpu_ours, 3),
            "bare_cpu_s": round(cpu_bare, 3),
            "cpu_ratio": round(cpu_ours / cpu_bare, 3),
            "first_dataset_access_s": round(best_ours["dataset"], 3),
            "ours_all_s": [round(r["call"], 3) for r in ours],
            "bare_all_s": [round(r["call"], 3) for r in bare],
        },
    )


if __name__ == "__main__":
    main()
