"""The embedded simulator: what a ``curator`` connection whose host is ``embedded-simulator``
talks to (``make demo-airflow``, the provider's tests, a DAG's own ``dag.test()``).

A demo or a test opts into it explicitly, with that connection, e.g.
``AIRFLOW_CONN_CURATOR_DEFAULT='{"conn_type": "curator", "host": "embedded-simulator"}'``; a
connection that does not exist is always an error, never the simulator.

Invariants:
- one simulator per process, started on first use and stopped at exit; every task and trigger
  of a ``dag.test()`` run (one process) sees the same one, so a batch submitted by a task is
  found by the trigger that polls it. Another process (a triggerer, a LocalExecutor task, a
  later reschedule-mode poke) has a simulator of its own that knows none of those batches:
  :func:`embedded_identity` lets a trigger tell, and :func:`explain_lost_batch` says so when a
  step meets one;
- simulated rows never land where a real run writes: runs go to ``<working_dir>/_simulated``
  and published datasets to a ``_simulated`` folder next to their name
  (:func:`simulated_working_dir`, :func:`simulated_output_uri`), so a real run never re-opens a
  simulated run (same inputs, same ``run_key``, same run id) nor overwrites or reads its output.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from typing import Any

#: the connection host that selects the embedded simulator
EMBEDDED_HOST = "embedded-simulator"
#: a ``curator`` connection to the embedded simulator, as an ``AIRFLOW_CONN_*`` value
EMBEDDED_CONNECTION = json.dumps({"conn_type": "curator", "host": EMBEDDED_HOST})
#: the folder simulated runs and outputs go to
SIMULATED_DIR = "_simulated"
#: the embedded simulator's behaviour: a provider with a 6,000 RPM limit and 50 ms latency
SIMULATOR_CONFIG: dict[str, Any] = {"rpm": 6000, "latency": 0.05}
API_KEY = "simulator"

_lock = threading.Lock()
_simulator: Any = None


def is_embedded_connection(conn: Any) -> bool:
    """Whether the Airflow connection ``conn`` selects the embedded simulator."""
    return conn is not None and (conn.host or "").strip().lower() == EMBEDDED_HOST


def embedded_simulator() -> Any:
    """The process's :class:`~curator_flows.testing.simulator.Simulator`, started if needed."""
    global _simulator
    with _lock:
        if _simulator is None or not _simulator.running:
            from curator_flows.testing.simulator import Simulator

            _simulator = Simulator(**SIMULATOR_CONFIG).start()
            atexit.register(_simulator.stop)
        return _simulator


def embedded_identity() -> str | None:
    """``"<pid>:<base URL>"`` of this process's running embedded simulator (``None``: none
    runs here). A batch submitted to it is known only to the simulator of that identity."""
    simulator = _simulator
    if simulator is None or not simulator.running:
        return None
    return f"{os.getpid()}:{simulator.base_url}"


def is_embedded(credentials: Any) -> bool:
    """Whether ``credentials`` point at this process's embedded simulator."""
    simulator = _simulator
    base_url = getattr(credentials, "base_url", None)
    return simulator is not None and simulator.running and base_url == simulator.base_url


LOST_BATCH = (
    "the embedded simulator (connection host 'embedded-simulator') lives inside one process: "
    "a batch submitted by another process (another task, an earlier reschedule-mode poke, the "
    "task that deferred to this trigger) is unknown to this process's simulator, hence the "
    "provider's 404. Use it only where every task and trigger runs in one process "
    "(dag.test() without an executor); with a scheduler, a triggerer or an executor, point the "
    "connection at a simulator server (`curator-flows simulator`, as `make airflow-ui` does) "
    "or a provider"
)


def explain_lost_batch(exc: BaseException) -> BaseException:
    """``exc`` (a provider 404 met through the embedded simulator) as a permanent
    ``ConfigError`` that says why; any other error unchanged."""
    if getattr(exc, "status", None) != 404:
        return exc
    from curator_flows.errors import ConfigError

    error = ConfigError(f"{exc} ({LOST_BATCH})")
    error.__cause__ = exc
    return error


def simulated_working_dir(working_dir: str) -> str:
    """The working directory of simulated runs: ``<working_dir>/_simulated``."""
    base = working_dir.rstrip("/")
    if base.rsplit("/", 1)[-1] == SIMULATED_DIR:
        return base
    return f"{base}/{SIMULATED_DIR}"


def simulated_output_uri(uri: str) -> str:
    """Where a simulated dataset is published instead of ``uri``: a ``_simulated`` folder next
    to its last path segment (``s3://b/recipes/2026-01-01`` →
    ``s3://b/recipes/_simulated/2026-01-01``), which dataset readers skip like any ``_`` name;
    ``uri`` unchanged when it is already such a location."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        scheme, rest = "", uri
    prefix = f"{scheme}://" if separator else ""
    path = rest.rstrip("/")
    parts = path.split("/")
    if SIMULATED_DIR in parts:
        return uri
    if separator and scheme != "file" and len(parts) == 1:  # a bucket alone: s3://b
        return f"{prefix}{path}/{SIMULATED_DIR}"
    head, _, name = path.rpartition("/")
    moved = f"{head}/{SIMULATED_DIR}/{name}" if "/" in path else f"{SIMULATED_DIR}/{name}"
    return f"{prefix}{moved}"
