"""Cache-hit re-run: a finished 10,000-row run, called again in a fresh process.

Target: ≤ 1.5 s for the whole process, ``datasets`` import included, for plain text answers
and for structured ones (a pydantic ``response_format``: every stored answer is judged again
on a cache hit). Also reports the time of
``python -c "import curator_flows"`` (target ≤ 0.3 s, importing no heavy library).

    python benchmarks/cache_hit.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import report, simulator_process  # noqa: E402

RERUN = """
import sys
from curator_flows import LLM
params = {"base_url": sys.argv[1], "api_key": "bench", "progress": "off"}
if sys.argv[4] == "structured":  # every stored answer is judged again by this model
    from pydantic import BaseModel, field_validator

    class Answer(BaseModel):
        title: str
        score: int

        @field_validator("title")
        @classmethod
        def not_blank(cls, value):
            return value

    class Structured(LLM):
        response_format = Answer

        def prompt(self, input):
            return input

        def parse(self, input, response):
            return {"title": response.title, "score": response.score}

    llm = Structured("gpt-4o-mini", backend_params=params)
else:
    llm = LLM("gpt-4o-mini", backend_params=params)
result = llm([f"cached prompt {i}" for i in range(int(sys.argv[3]))], working_dir=sys.argv[2])
assert len(result.dataset) == int(sys.argv[3])
if sys.argv[5:] == ["cached"]:  # nothing sent again: the run's attempts are the first call's
    assert result.request_stats.attempts == int(sys.argv[3]), result.request_stats
"""


def timed(argv: list[str], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    reruns = {}
    for kind in ("text", "structured"):
        with simulator_process() as base_url, tempfile.TemporaryDirectory() as wd:
            argv = [sys.executable, "-c", RERUN, base_url, wd, str(args.rows), kind]
            subprocess.run(argv, check=True)  # the first, paid run
            reruns[kind] = timed([*argv, "cached"])
    imports = timed([sys.executable, "-c", "import curator_flows"], repeat=5)
    bare = timed([sys.executable, "-c", "pass"], repeat=5)
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, curator_flows; print([m for m in ('litellm', 'vllm', "
            "'datasets', 'openai', 'airflow', 'prefect') if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    report(
        "cache_hit",
        {
            "rows": args.rows,
            "rerun_process_s": round(reruns["text"], 3),
            "rerun_structured_process_s": round(reruns["structured"], 3),
            "import_curator_flows_process_s": round(imports, 3),
            "bare_python_process_s": round(bare, 3),
            "heavy_modules_imported": heavy,
        },
    )


if __name__ == "__main__":
    main()
