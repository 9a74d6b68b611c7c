"""Airflow internals the tests use that moved between the supported releases, from the newest
place that has them (the provider's own moved names are in :mod:`airflow_provider.compat`)."""

from __future__ import annotations

from typing import Any

try:  # Airflow >= 3.2
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk._shared.module_loading import import_string
    from airflow.serialization.serialized_objects import DagSerialization
except ImportError:  # Airflow 3.1
    from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    from airflow.serialization.serialized_objects import (  # type: ignore[no-redef]
        SerializedDAG as DagSerialization,
    )
    from airflow.utils.module_loading import import_string  # type: ignore[no-redef]

__all__ = ["DagBag", "DagSerialization", "airflow_at_least", "import_string", "task_runtime_hooks"]


def task_runtime_hooks() -> Any:
    """The hooks a task's ``Connection.get_hook`` looks up (by connection type)."""
    try:  # Airflow >= 3.2: the task SDK's own provider registry
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime
    except ImportError:  # Airflow 3.1
        from airflow.providers_manager import ProvidersManager

        return ProvidersManager().hooks
    return ProvidersManagerTaskRuntime().hooks


def airflow_at_least(version: str) -> bool:
    """Whether the installed Airflow is ``version`` or later (``"3.2"``)."""
    from airflow import __version__
    from packaging.version import Version

    return Version(Version(__version__).base_version) >= Version(version)
