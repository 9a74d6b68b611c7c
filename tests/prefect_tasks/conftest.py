"""Prefect fixtures: ONE temporary Prefect server (``prefect_test_harness``) for the whole test
session, with ``PREFECT_HOME`` (result storage, the task cache) in a temporary directory and
analytics off. Without Prefect installed (the ``prefect`` extra) the whole package is
skipped and the rest of the suite runs."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _prefect_installed() -> bool:
    try:
        return importlib.util.find_spec("prefect") is not None
    except (ImportError, ValueError):  # ValueError: a stand-in module without a spec
        return False


PREFECT_INSTALLED = _prefect_installed()


def pytest_collection_modifyitems(config, items) -> None:
    """Without Prefect, every test of this package is skipped (their modules import Prefect
    only inside the tests, so they collect), the rest of the suite runs."""
    if PREFECT_INSTALLED:
        return
    skip = pytest.mark.skip(reason="the prefect extra is not installed")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


#: the shared test LLMs (``dish_llms``) beside this folder's own (``flow_llms``)
SUPPORT = HERE.parent / "support"
sys.path[:0] = [str(HERE), str(SUPPORT)]

# Before Prefect is imported anywhere in this session: its home, its telemetry, its loggers.
PREFECT_HOME = tempfile.mkdtemp(prefix="curator-prefect-home-")
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = PREFECT_HOME
# Prefect derives these from ~/.prefect, not from PREFECT_HOME: set them too
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = os.path.join(PREFECT_HOME, "storage")
os.environ["PREFECT_MEMO_STORE_PATH"] = os.path.join(PREFECT_HOME, "memo_store.toml")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"


@pytest.fixture(scope="session")
def prefect_server():
    """The session's temporary Prefect server; yields its API URL."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    updates = {
        prefect.settings.PREFECT_HOME: PREFECT_HOME,
        prefect.settings.PREFECT_LOCAL_STORAGE_PATH: os.path.join(PREFECT_HOME, "storage"),
    }
    with (
        prefect.settings.temporary_settings(updates=updates),
        prefect_test_harness(server_startup_timeout=90),
    ):
        yield prefect.settings.PREFECT_API_URL.value()


@pytest.fixture
def prefect_env(prefect_server) -> dict[str, str]:
    """The environment a child process needs to use the session's Prefect server."""
    return {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": PREFECT_HOME,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.fixture
def storage_dir() -> Path:
    """Where Prefect persists task results (and the cache) in this session."""
    return Path(PREFECT_HOME) / "storage"
