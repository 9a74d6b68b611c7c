"""Airflow provider of curator-flows: the ``curator`` connection, ``CuratorOperator`` (a whole
job) and its TaskFlow form ``@task.curator`` (``curator_task``), granular step operators,
``CuratorBatchSensor`` and ``CuratorBatchTrigger``.

Every class is a few lines around one :mod:`curator_flows.steps` call (see
``docs/architecture.md``). Public names load lazily: importing this package imports neither
Airflow nor the engine, and a DAG file that imports an operator imports none of litellm, vllm,
datasets or openai.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CuratorHook": "airflow_provider.hooks.curator",
    "CuratorOperator": "airflow_provider.operators.curator",
    "curator_task": "airflow_provider.decorators.curator",
    "CuratorPrepareOperator": "airflow_provider.operators.steps",
    "CuratorOnlineShardOperator": "airflow_provider.operators.steps",
    "CuratorFinalizeOperator": "airflow_provider.operators.steps",
    "CuratorSubmitBatchOperator": "airflow_provider.operators.batch",
    "CuratorCollectOperator": "airflow_provider.operators.batch",
    "CuratorVLLMOperator": "airflow_provider.operators.vllm",
    "CuratorBatchSensor": "airflow_provider.sensors.batch",
    "CuratorBatchTrigger": "airflow_provider.triggers.batch",
    "CuratorBatchCancelled": "airflow_provider.exceptions",
    "CuratorBatchFailed": "airflow_provider.exceptions",
    "CuratorBatchTimeout": "airflow_provider.exceptions",
    "CuratorPermanentError": "airflow_provider.exceptions",
    "CuratorPollError": "airflow_provider.exceptions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'airflow_provider' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
