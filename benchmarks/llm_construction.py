"""What building an ``LLM`` costs, in a fresh process per case (as a DAG file parse or an
orchestrator task starts): the litellm model check reads litellm's bundled price map for the
names it lists, and imports litellm only for other names. Median of ``--repeats`` processes per
case; also says whether the process imported litellm. Goal: a listed model adds ≤ 0.1 s and
imports no litellm; an unlisted one costs litellm's import, once per process.

    python benchmarks/llm_construction.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _common import report  # noqa: E402

CASES = {
    "openai gpt-4o-mini": "LLM('gpt-4o-mini')",
    "litellm listed (backend='gemini')": "LLM('gemini-2.0-flash', backend='gemini')",
    "litellm listed prefix (together_ai/...)": "LLM('together_ai/meta-llama/Llama-3-8b-chat-hf')",
    "litellm unlisted, routable (hosted_vllm/...)": "LLM('hosted_vllm/my-model')",
    "litellm unroutable (refused)": "LLM('my-model')",
}
BUILD = """
import json, sys, time
from curator_flows import LLM
from curator_flows.errors import ConfigError
import pydantic  # loaded by any LLM; not what the check adds
wall, cpu = time.perf_counter(), time.process_time()
try:
    CASE
    outcome = "built"
except ConfigError:
    outcome = "ConfigError"
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "outcome": outcome, "litellm": "litellm" in sys.modules}))
"""


def build_once(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", BUILD.replace("CASE", code)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, code in CASES.items():
        runs = [build_once(code) for _ in range(args.repeats)]
        report(
            f"llm_construction[{name}]",
            {
                "median_wall_s": round(statistics.median(r["wall"] for r in runs), 3),
                "median_cpu_s": round(statistics.median(r["cpu"] for r in runs), 3),
                "outcome": runs[0]["outcome"],
                "imported_litellm": runs[0]["litellm"],
            },
        )


if __name__ == "__main__":
    main()
