"""DAG-file parse time of the Airflow example DAGs, as Airflow's DAG processor sees it: each file
parsed by ``DagBag`` in a fresh process in which Airflow is already imported (the processor's
own state), so the figure is what the file adds: the provider, curator_flows' ``LLM`` and
pydantic, the generators, building the DAG. Median of ``--repeats`` processes per file; also
lists any LLM client library the parse imported (there must be none). Goal: ≤ 0.5 s per file.

    python benchmarks/airflow_parse_time.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _common import report  # noqa: E402

FILES = sorted(
    p for p in (REPO / "dags_examples").glob("airflow_*.py") if p.name != "airflow_demo.py"
)
HEAVY = ("litellm", "vllm", "datasets", "openai")
PARSE = """
import json, sys, time
import airflow, airflow.sdk  # loaded in the DAG processor before any file is parsed
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "dags": len(bag.dag_ids), "errors": len(bag.import_errors),
                  "heavy": sorted(m for m in HEAVY_NAMES if m in sys.modules)}))
""".replace("HEAVY_NAMES", repr(HEAVY))


def parse_once(path: Path, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PARSE, str(path)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"parsing {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-airflow-parse-") as home:
        env = {
            **os.environ,
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        }
        for path in FILES:
            runs = [parse_once(path, env) for _ in range(args.repeats)]
            seconds = [r["seconds"] for r in runs]
            report(
                f"airflow_parse_time[{path.name}]",
                {
                    "median_s": round(statistics.median(seconds), 3),
                    "max_s": round(max(seconds), 3),
                    "dags": runs[0]["dags"],
                    "import_errors": runs[0]["errors"],
                    "llm_libraries_imported": runs[0]["heavy"],
                },
            )


if __name__ == "__main__":
    main()
