"""Prepare throughput and memory: rendering N trivial rows into request shards.

Each scenario runs in a fresh process so its peak RSS is its own:

- ``fresh``: a first run (no earlier run of the same family in the working directory);
- ``sibling``: the same rows with one edited, prepared next to the first run, which holds a
  successful response for every request (written here, as a finished run would have them):
  all but one are copied into the new run.

Reports rows/s, wall and CPU seconds, and peak RSS (and its growth over the process after
imports). Works on any version that has ``steps.prepare(llm, dataset, working_dir)``.

    python benchmarks/prepare_rows.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time

def hwm():  # VmHWM: this process's peak RSS (ru_maxrss survives exec)
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmHWM:"))

from curator_flows import LLM, steps

rows, wd, edit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
params = {"base_url": "http://127.0.0.1:9/v1", "api_key": "bench", "progress": "off"}
llm = LLM("gpt-4o-mini", backend_params=params)
data = (
    {"prompt": f"benchmark prompt number {i}" + (" (edited)" if i == edit else "")}
    for i in range(rows)
)
base = hwm()
wall, cpu = time.perf_counter(), time.process_time()
try:
    result = steps.prepare(llm, data, wd, rebuild_check=False)
except TypeError:  # versions without rebuild_check
    result = steps.prepare(llm, data, wd)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = hwm()
print(json.dumps({"wall": wall, "cpu": cpu, "peak": peak, "base": base,
                  "requests": result["requests"], "run_uri": result["run_uri"]}))
"""


def scenario(rows: int, wd: str, edit: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(rows), wd, str(edit)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def answer_everything(run_dir: Path) -> None:
    """A successful response line for every request of the run (a finished run)."""
    for requests in sorted((run_dir / "requests").glob("*.jsonl")):
        lines = []
        with requests.open("rb") as handle:
            for line in handle:
                request_id = json.loads(line)["id"]
                lines.append(
                    json.dumps(
                        {
                            "id": request_id,
                            "content": "ok",
                            "finish_reason": "stop",
                            "usage": [10, 1],
                            "cost": 0.0,
                            "latency": 0.01,
                            "attempts": 1,
                        }
                    )
                )
        (run_dir / "responses").mkdir(exist_ok=True)
        (run_dir / "responses" / requests.name).write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as wd:
        for name, edit in (("fresh", -1), ("sibling", args.rows // 2)):
            figures = scenario(args.rows, wd, edit)
            assert figures["requests"] == args.rows, figures
            if name == "fresh":
                answer_everything(Path(figures["run_uri"]))
            print(
                f"prepare[{name}]: rows={args.rows}, "
                f"rows_per_s={args.rows / figures['wall']:,.0f}, "
                f"wall_s={figures['wall']:.1f}, cpu_s={figures['cpu']:.1f}, "
                f"peak_rss_mb={figures['peak']:.0f}, "
                f"rss_growth_mb={figures['peak'] - figures['base']:.0f}"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
