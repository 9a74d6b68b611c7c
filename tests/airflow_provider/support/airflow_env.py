"""The Airflow of the provider tests, set up on import (before anything imports Airflow, which
reads its configuration once): a temporary ``AIRFLOW_HOME`` with a SQLite database, its DAGs
folder, no connection of the user's; and the constants and helpers the tests share. Imported
by ``tests/airflow_provider/conftest.py`` and, by this unique name, by the tests (a plain
``import conftest`` could find another folder's conftest)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parents[1]
REPO = HERE.parents[1]
SUPPORT = HERE / "support"

HOME = Path(tempfile.mkdtemp(prefix="curator-airflow-home-"))
atexit.register(shutil.rmtree, HOME, True)
DAGS = HOME / "dags"
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(HOME),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow.db",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(HOME / "logs"),
    "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
    "AIRFLOW__OPENLINEAGE__DISABLED": "True",
    # shared by this process (the executor signs task tokens) and the API server it starts
    "AIRFLOW__API_AUTH__JWT_SECRET": "curator-flows-tests-only-" + "x" * 48,
}
os.environ.update(AIRFLOW_ENV)
for name in [n for n in os.environ if n.startswith("AIRFLOW_CONN_")]:
    del os.environ[name]  # no connection of the user's leaks into a test

#: the DAG files of the session's DAGs folder
DAG_FILES = [
    *sorted((REPO / "dags_examples").glob("airflow_*.py")),
    *sorted((HERE / "dags").glob("*.py")),
]
FAST_BATCHES = {"validating": 0.1, "in_progress": 0.3, "finalizing": 0.1, "cancelling": 0.1}
TEST_KEY = "sk-test-CURATOR-never-in-xcom-0123456789"


def airflow_cli(*args: str, check: bool = True, env: dict | None = None):
    """``airflow <args>`` in a subprocess on the session's home."""
    command = [str(Path(sys.executable).parent / "airflow"), *args]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=180
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def connection_json(sim, key: str = TEST_KEY, **extra) -> str:
    """A ``curator`` connection to ``sim`` as an ``AIRFLOW_CONN_*`` value."""
    return json.dumps(
        {
            "conn_type": "curator",
            "host": sim.base_url,
            "password": key,
            "extra": {"provider": "openai", **extra},
        }
    )
