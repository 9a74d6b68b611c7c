"""Prefect integration of curator-flows: the ``CuratorCredentials`` block, one task per step,
the flows ``curate`` (online), ``curate_batch``, ``curate_offline`` and
``curate_offline_shard``, and the automation that marks dead flow runs crashed
(``zombie_automation``).

Names load lazily: ``import prefect_tasks`` imports neither Prefect nor the engine.
``prefect block register -m prefect_tasks`` registers the block type.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CuratorCredentials": "prefect_tasks.credentials",
    "prepare": "prefect_tasks.tasks",
    "run_online_shard": "prefect_tasks.tasks",
    "run_offline_shard": "prefect_tasks.tasks",
    "launch_offline_shard": "prefect_tasks.tasks",
    "submit_batch": "prefect_tasks.tasks",
    "wait_for_batch": "prefect_tasks.tasks",
    "collect_batch": "prefect_tasks.tasks",
    "finalize": "prefect_tasks.tasks",
    "retry_transient": "prefect_tasks.policy",
    "step_cache_key": "prefect_tasks.policy",
    "curate": "prefect_tasks.flows",
    "curate_batch": "prefect_tasks.flows",
    "curate_offline": "prefect_tasks.flows",
    "curate_offline_shard": "prefect_tasks.flows",
    "zombie_automation": "prefect_tasks.automations",
    "ensure_zombie_automation": "prefect_tasks.automations",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
