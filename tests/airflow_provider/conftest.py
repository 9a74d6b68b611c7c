"""Real Airflow 3 for the provider tests: a temporary ``AIRFLOW_HOME`` with a SQLite metadata
database migrated once per session, and a DAGs folder holding the example DAGs and the test DAGs
(``dag.test()`` syncs that folder into the database before it runs a DAG).

Airflow reads its configuration when it is first imported, so the environment is set when this
file loads, before any test module imports Airflow; it never points at the user's own Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SUPPORT = HERE / "support"
if str(SUPPORT) not in sys.path:  # the test LLM classes and helpers, importable from every task
    sys.path.insert(0, str(SUPPORT))

from airflow_env import (  # noqa: E402 - sets the Airflow environment up on import
    DAG_FILES,
    DAGS,
    FAST_BATCHES,
    HOME,
    REPO,
    TEST_KEY,
    airflow_cli,
    connection_json,
)


@pytest.fixture(scope="session", autouse=True)
def airflow_home():
    """The session's Airflow: DAGs folder linked, metadata database migrated."""
    DAGS.mkdir(parents=True, exist_ok=True)
    for path in DAG_FILES:
        (DAGS / path.name).symlink_to(path)
    airflow_cli("db", "migrate")
    yield HOME
    shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture
def fsim():
    """A simulator whose batches end within a second."""
    from curator_flows.testing.simulator import Simulator

    with Simulator(batch_timings=FAST_BATCHES) as simulator:
        yield simulator


@pytest.fixture
def curator_conn(fsim, monkeypatch):
    """The ``curator_test`` connection (an environment-variable connection) to ``fsim``."""
    monkeypatch.setenv("AIRFLOW_CONN_CURATOR_TEST", connection_json(fsim))
    return "curator_test"


@pytest.fixture
def batch_run(fsim, curator_conn, tmp_path):
    """``batch_run(rows=10, batch_size=4, submit=True)``: a prepared batch run of ``FactWriter``
    on ``fsim`` (its batches created when ``submit``); returns ``(run, llm, credentials)``."""
    from airflow_llms import FactWriter

    from curator_flows import Credentials, steps

    credentials = Credentials(api_key=TEST_KEY, base_url=fsim.base_url)

    def make(rows: int = 10, batch_size: int = 4, submit: bool = True):
        llm = FactWriter("gpt-4o-mini", batch=True, backend_params={"batch_size": batch_size})
        run = steps.prepare(llm, [{"n": i} for i in range(rows)], str(tmp_path / "wd"))
        if submit:
            for shard in run["shards"]:
                steps.submit(run, shard, credentials=credentials)
        return run, llm, credentials

    return make


@pytest.fixture(scope="session")
def api_server(airflow_home):
    """``airflow api-server`` on a free port (for ``dag.test(use_executor=True)``: the
    LocalExecutor's tasks talk to Airflow through its execution API); its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(HOME / "api-server.log", "w")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "airflow"),
            *("api-server", "--host", "127.0.0.1", "--port", str(port)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                os.killpg(server.pid, signal.SIGKILL)
                log_text = (HOME / "api-server.log").read_text()
                raise RuntimeError(f"the api-server did not start: {log_text}") from None
            time.sleep(0.25)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


@pytest.fixture
def local_executor(api_server, monkeypatch):
    """``dag.test(use_executor=True)`` runs tasks in parallel LocalExecutor processes."""
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "5")  # 4 shards + the slot of a task ending
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"{api_server}/execution/")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), str(REPO)]))
    return api_server


@pytest.fixture
def db_connection():
    """``db_connection(conn_id, sim)``: a ``curator`` connection in the metadata database (what
    an API server serves to LocalExecutor tasks), removed afterwards."""
    from airflow.models import Connection
    from airflow.utils.session import create_session

    made = []

    def add(conn_id: str, sim, key: str = TEST_KEY) -> str:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == conn_id).delete()
            session.add(
                Connection(
                    conn_id=conn_id,
                    conn_type="curator",
                    host=sim.base_url,
                    password=key,
                    extra=json.dumps({"provider": "openai"}),
                )
            )
        made.append(conn_id)
        return conn_id

    yield add
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id.in_(made)).delete()
