"""Where a reschedule-mode ``CuratorOperator`` finds its run between pokes without preparing it
again (``prepare`` reads every input row to compute the run's identity).

Airflow 3 clears a task's XComs each time a reschedule-mode poke starts, so the run's URI is kept
in a pointer file, ``<working_dir>/_airflow/<dag_id>/<run_id>/<task_id>[.<map_index>]/
try-<n>.json``, written by the try's first poke and read by the next ones.

Invariants:
- a pointer is a cache, never state: without it (lost, unreadable) the poke prepares the run
  again, which resumes the same run;
- it belongs to one try: a retry or a cleared task (a new try number) prepares again, so new
  inputs give their new run;
- it holds a run URI, the shard names and the mode (and, for ``@task.curator``, the URI its
  function returned, for lineage); never a key or a row.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

POINTER_DIR = "_airflow"


def working_dir_of(working_dir: str | None) -> str:
    """The working directory the run goes to: ``working_dir``, else the library's default."""
    from curator_flows import steps

    return (working_dir or steps.default_working_dir()).rstrip("/")


def pointer_uri(working_dir: str | None, ti: Any) -> str:
    """The pointer file of the task instance ``ti``'s current try."""
    task = (
        ti.task_id if ti.map_index is None or ti.map_index < 0 else (f"{ti.task_id}.{ti.map_index}")
    )
    parts = [POINTER_DIR, ti.dag_id, ti.run_id, task, f"try-{ti.try_number}.json"]
    return "/".join([working_dir_of(working_dir), *parts])


def read_pointer(uri: str, storage_options: dict[str, Any]) -> dict[str, Any] | None:
    """The pointer at ``uri`` (``None``: absent or unreadable)."""
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(uri, **storage_options)
        with fs.open(path, "rb") as handle:
            pointer = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a cache miss: the poke prepares again
        return None
    if not isinstance(pointer, dict) or not pointer.get("run_uri"):
        return None
    return pointer


def write_pointer(uri: str, storage_options: dict[str, Any], pointer: dict[str, Any]) -> None:
    """Write the pointer at ``uri``."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri, **storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(json.dumps(pointer).encode())


def remove_pointer(uri: str, storage_options: dict[str, Any]) -> None:
    """Remove the pointer at ``uri`` (best effort: the try is over)."""
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(uri, **storage_options)
        fs.rm(path)
    except Exception:  # noqa: BLE001, S110 - a leftover pointer only costs a small file
        pass
