"""The provider info Airflow reads from the ``apache_airflow_provider`` entry point: the
``curator`` connection type (with its form fields, declared so the UI needs no hook import),
hooks, operators, sensors, triggers and the ``@task.curator`` TaskFlow decorator.

Invariant: importing this module imports nothing from Airflow or curator_flows (every Airflow
process loads it).
"""

from __future__ import annotations

from typing import Any

from .hooks.connection_fields import connection_type_info

INTEGRATION = "Curator"


def get_provider_info() -> dict[str, Any]:
    def modules(*names: str) -> list[dict[str, Any]]:
        return [{"integration-name": INTEGRATION, "python-modules": list(names)}]

    return {
        "package-name": "curator-flows",
        "name": "Curator",
        "description": (
            "Synthetic datasets with LLMs (Curator's API) as resumable Airflow tasks: online, "
            "provider batch (deferrable) and offline vLLM on GPU workers."
        ),
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://github.com/bespokelabsai/curator",
                "tags": ["software"],
            }
        ],
        "hooks": modules("airflow_provider.hooks.curator"),
        "operators": modules(
            "airflow_provider.operators.curator",
            "airflow_provider.operators.steps",
            "airflow_provider.operators.batch",
            "airflow_provider.operators.vllm",
        ),
        "sensors": modules("airflow_provider.sensors.batch"),
        "triggers": modules("airflow_provider.triggers.batch"),
        "task-decorators": [
            {"name": "curator", "class-name": "airflow_provider.decorators.curator.curator_task"}
        ],
        "connection-types": [connection_type_info()],
    }
