"""``make demo-airflow``: the nightly online DAG (cuisines → recipes, mapped shards) through
Airflow's ``dag.test()``, in a temporary ``AIRFLOW_HOME`` with a SQLite database, against the
embedded simulator (no key, no network; your own Airflow is not touched). Prints where the
dataset landed (``./curator-output/airflow/`` unless ``--output``; simulated datasets go to a
``_simulated`` folder next to their name, runs to ``runs/_simulated``).

The demo opts into the embedded simulator by setting the ``curator_default`` connection to it
(``AIRFLOW_CONN_CURATOR_DEFAULT``, host ``embedded-simulator``); with that variable already set
(a ``curator`` connection as JSON or a URI) the tasks call that provider instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def airflow_environment(home: Path) -> dict[str, str]:
    """A private Airflow: its own home, SQLite database and the example DAGs folder."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags_examples"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__OPENLINEAGE__DISABLED": "True",
    }


def task_results(dag_run) -> tuple[dict[str, str], dict[tuple[str, int], object]]:
    """Each task's state and pushed value."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    states: dict[str, str] = {}
    values: dict[tuple[str, int], object] = {}
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.rendered_map_index}]"
            states[name] = str(ti.state)
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.key == "return_value",
            )
        ).all()
        for row in rows:
            values[(row.task_id, row.map_index)] = XComModel.deserialize_value(row)
    return states, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="curator-output/airflow", help="runs and datasets")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary home")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="curator-airflow-demo-"))
    os.environ.update(airflow_environment(home))  # before Airflow is imported
    output = Path(args.output).resolve()
    started = time.monotonic()
    print(f"Airflow home: {home} (SQLite); DAGs: {REPO / 'dags_examples'}")
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)

    from dags_examples.airflow_nightly_online import curator_nightly_online as dag

    if "AIRFLOW_CONN_CURATOR_DEFAULT" in os.environ:
        print("Using the curator_default connection from AIRFLOW_CONN_CURATOR_DEFAULT")
    else:
        from airflow_provider.hooks.embedded import EMBEDDED_CONNECTION

        os.environ["AIRFLOW_CONN_CURATOR_DEFAULT"] = EMBEDDED_CONNECTION
        print("curator_default = the embedded simulator (host 'embedded-simulator')")
    print(f"Running {dag.dag_id} with dag.test() ...")
    dag_run = dag.test(
        run_conf={"working_dir": str(output / "runs"), "output_root": str(output / "datasets")}
    )
    states, values = task_results(dag_run)
    print(f"\nDAG run {dag_run.run_id}: {dag_run.state} in {time.monotonic() - started:.1f}s")
    for name, state in states.items():
        print(f"  {name:<28} {state}")
    cuisines = values.get(("cuisines", -1)) or {}
    recipes = values.get(("publish_recipes", -1)) or {}
    if cuisines:
        print(f"\nCuisines: {cuisines['rows']} rows -> {cuisines['output_uri']}")
    if recipes:
        print(
            f"Recipes:  {recipes['rows']} rows, {recipes['input_tokens']}+"
            f"{recipes['output_tokens']} tokens, ${recipes['cost']:.5f}"
        )
        print(f"simulated: {str(bool(recipes.get('simulated'))).lower()}")
        print(f"\nThe dataset landed in {recipes['output_uri']}")
        print(f"  (Parquet; _SUCCESS lists its files; run directory {recipes['run_uri']})")
    if args.keep_home:
        print(f"Airflow home kept: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    return 0 if str(dag_run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
