"""Airflow's orchestration overhead: the nightly online DAG (``dags_examples/
airflow_nightly_online.py``: cuisines → prepare_recipes → 4 mapped recipe shards →
publish_recipes), sized to 20,000 requests, through ``dag.test()``, against the same job driven
directly with the step API (cuisines: prepare → run_online → finalize and publish; recipes:
prepare from the published cuisines → 4 shards on 4 threads with ``parallel_shards=4`` →
finalize and publish). Each side runs in a fresh process against the same simulator (another
process, no latency, no limits).

The DAG side runs two ways: ``dag.test()`` as is (tasks one after another, in-process) and
``dag.test(use_executor=True)`` with a LocalExecutor (the four shards in parallel processes,
talking to an API server started before the clock). Before its timed run, each DAG process runs
a one-task DAG once: that warm-up (Airflow building its in-process execution API, a fixed cost
of the first ``dag.test()`` in a process) is reported on its own as ``first_dag_test_s``.

Reports each side's wall time (median of ``--repeats``) and Airflow's added wall time. Goal:
added wall time ≤ 10 s.

    python benchmarks/airflow_overhead.py [--requests 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import report, simulator_process  # noqa: E402

SHARDS = 4
MODEL = "gpt-4o-mini"
#: the benchmark's DAG file: the example DAG at the benchmark's size
DAG_FILE = """
import os
from dags_examples.airflow_nightly_online import build_dag

bench = build_dag(
    "curator_bench_online",
    cuisine_prompts=int(os.environ["BENCH_CUISINE_PROMPTS"]),
    recipe_shard_size=int(os.environ["BENCH_SHARD_SIZE"]),
    max_active_shards=4,
    schedule=None,
)
bench.fileloc = __file__  # built by a factory in another file: tasks must parse this one
"""
WARM_UP_FILE = """
import pendulum
from airflow.sdk import dag, task

@dag(dag_id="curator_bench_warm_up", schedule=None, start_date=pendulum.datetime(2025, 1, 1))
def warm_up():
    @task
    def nothing():
        return 0

    nothing()

warm_up_dag = warm_up()
"""


def sizes(requests: int, per_prompt: int) -> tuple[int, int]:
    """Cuisine prompts and recipe shard size for ``requests`` recipe requests in 4 shards, when
    each cuisine prompt returns ``per_prompt`` cuisines."""
    prompts = requests // per_prompt
    return prompts, math.ceil(prompts * per_prompt / SHARDS)


# ------------------------------------------------------------------------------ step API side
def run_steps(base_url: str, prompts: int, shard_size: int, wd: str) -> dict:
    from curator_flows import Credentials, steps
    from dags_examples.generators import CuisineGenerator, RecipeGenerator

    credentials = Credentials(api_key="bench", base_url=base_url)
    started = time.perf_counter()
    cuisine_llm = CuisineGenerator(MODEL)
    run = steps.prepare(
        cuisine_llm, [{"prompt_no": i} for i in range(prompts)], f"{wd}/runs",
        run_key="bench", credentials=credentials, rebuild_check=False,
    )  # fmt: skip
    steps.run_online(run, llm=cuisine_llm, credentials=credentials)
    cuisines = steps.finalize(
        run, llm=cuisine_llm, credentials=credentials, output_uri=f"{wd}/out/cuisines"
    )
    recipe_llm = RecipeGenerator(MODEL, backend_params={"shard_size": shard_size})
    run = steps.prepare(
        recipe_llm, cuisines["output_uri"], f"{wd}/runs", run_key="bench",
        credentials=credentials, rebuild_check=False,
    )  # fmt: skip
    with ThreadPoolExecutor(SHARDS) as pool:
        list(
            pool.map(
                lambda shard: steps.run_online(
                    run, shard, llm=recipe_llm, credentials=credentials, parallel_shards=SHARDS
                ),
                run["shards"],
            )
        )
    recipes = steps.finalize(
        run, llm=recipe_llm, credentials=credentials, output_uri=f"{wd}/out/recipes"
    )
    return {
        "wall": time.perf_counter() - started,
        "cuisine_rows": cuisines["rows"],
        "recipe_rows": recipes["rows"],
        "shards": len(run["shards"]),
    }


# ------------------------------------------------------------------------------ DAG side
def run_dag(base_url: str, wd: str, executor: bool) -> dict:
    """In a process whose Airflow environment ``spawn`` set up."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(os.environ["BENCH_DAGS"], name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    started = time.perf_counter()
    load("warm_up.py").warm_up_dag.test()
    warm_up = time.perf_counter() - started
    dag = load("bench_online.py").bench
    conf = {"working_dir": f"{wd}/runs", "output_root": f"{wd}/out"}
    started = time.perf_counter()
    dag_run = dag.test(run_conf=conf, use_executor=executor)
    wall = time.perf_counter() - started
    states = {str(ti.state) for ti in dag_run.get_task_instances()}
    assert states == {"success"}, states
    recipes = json.loads(Path(wd, "out", "recipes").glob("*/_SUCCESS").__next__().read_text())
    cuisines = json.loads(Path(wd, "out", "cuisines").glob("*/_SUCCESS").__next__().read_text())
    return {
        "wall": wall,
        "first_dag_test_s": warm_up,
        "cuisine_rows": cuisines["rows"],
        "recipe_rows": recipes["rows"],
    }


def child(side: str, base_url: str, prompts: int, shard_size: int) -> None:
    wd = tempfile.mkdtemp(prefix=f"bench-airflow-{side}-")
    try:
        if side == "steps":
            out = run_steps(base_url, prompts, shard_size, wd)
        else:
            out = run_dag(base_url, wd, executor=side == "dag_executor")
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    print("RESULT " + json.dumps(out), flush=True)


class Airflow:
    """A private Airflow home (SQLite, the benchmark's DAG folder), migrated once; an API
    server for the LocalExecutor side, started before any clock."""

    def __init__(self, base_url: str, prompts: int, shard_size: int) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="bench-airflow-home-"))
        dags = self.home / "dags"
        dags.mkdir()
        (dags / "bench_online.py").write_text(DAG_FILE)
        (dags / "warm_up.py").write_text(WARM_UP_FILE)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__OPENLINEAGE__DISABLED": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": "bench-only-" + "x" * 60,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW_CONN_CURATOR_DEFAULT": json.dumps(
                {"conn_type": "curator", "host": base_url, "password": "bench"}
            ),
            "BENCH_DAGS": str(dags),
            "BENCH_CUISINE_PROMPTS": str(prompts),
            "BENCH_SHARD_SIZE": str(shard_size),
        }
        airflow = str(Path(sys.executable).parent / "airflow")
        subprocess.run([airflow, "db", "migrate"], env=self.env, check=True, capture_output=True)
        self.server = subprocess.Popen(
            [airflow, "api-server", "--port", str(self.port)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/monitor/health")
                return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise SystemExit("the api-server did not start")

    def close(self) -> None:
        os.killpg(self.server.pid, signal.SIGTERM)
        self.server.wait(timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)


def spawn(side: str, base_url: str, prompts: int, shard_size: int, env: dict) -> dict:
    if side == "dag_executor":
        env = {**env, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", side, "--base-url", base_url,
         "--prompts", str(prompts), "--shard-size", str(shard_size)],
        env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{side} side failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def cuisines_per_prompt(base_url: str) -> int:
    """How many cuisines one cuisine prompt returns (the simulator answers a prompt the same
    way every time)."""
    from curator_flows import Credentials
    from dags_examples.generators import CuisineGenerator

    with tempfile.TemporaryDirectory() as wd:
        response = CuisineGenerator(MODEL)(
            working_dir=wd, credentials=Credentials(api_key="bench", base_url=base_url)
        )
        return len(response.dataset)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000, help="recipe requests")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["steps", "dag", "dag_executor"])
    parser.add_argument("--base-url")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--shard-size", type=int)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.base_url, args.prompts, args.shard_size)
        return
    sides = ("steps", "dag", "dag_executor")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    with simulator_process() as base_url:
        prompts, shard_size = sizes(args.requests, cuisines_per_prompt(base_url))
        airflow = Airflow(base_url, prompts, shard_size)
        try:
            for _ in range(args.repeats):
                for side in sides:  # alternate: every side sees the same machine
                    runs[side].append(spawn(side, base_url, prompts, shard_size, airflow.env))
        finally:
            airflow.close()
    wall = {side: statistics.median(r["wall"] for r in rs) for side, rs in runs.items()}
    first = runs["dag"][0]
    report(
        "airflow_overhead",
        {
            "cuisine_requests": prompts,
            "recipe_requests": first["cuisine_rows"],
            "recipe_shards": SHARDS,
            "steps_wall_s": round(wall["steps"], 2),
            "dag_test_wall_s": round(wall["dag"], 2),
            "dag_test_executor_wall_s": round(wall["dag_executor"], 2),
            "added_wall_s": round(wall["dag"] - wall["steps"], 2),
            "added_wall_executor_s": round(wall["dag_executor"] - wall["steps"], 2),
            "first_dag_test_s": round(
                statistics.median(r["first_dag_test_s"] for r in runs["dag"]), 2
            ),
            "walls": {side: [round(r["wall"], 2) for r in rs] for side, rs in runs.items()},
            "rows_equal": all(
                r["recipe_rows"] == runs["steps"][0]["recipe_rows"]
                for rs in runs.values()
                for r in rs
            ),
        },
    )


if __name__ == "__main__":
    main()
