"""The ``curator`` connection form: one definition for the provider info (the ``conn-fields`` and
``ui-field-behaviour`` Airflow 3's UI reads, without importing the hook) and for the hook's
``get_ui_field_behaviour``.

Invariants:
- the API key is the connection's password (masked everywhere by Airflow); ``base_url`` is its
  host; everything else lives in the extras: ``provider`` and two JSON objects,
  ``backend_params`` (non-secret defaults for LLMs given as an import path) and
  ``storage_options`` (fsspec options for the run directory and outputs; sensitive);
- this module imports nothing (``get_provider_info`` is loaded by every Airflow process).
"""

from __future__ import annotations

from typing import Any

CONN_TYPE = "curator"
HOOK_NAME = "Curator (LLM API)"
PROVIDERS = ("openai", "anthropic", "litellm")

#: extras fields (Airflow 3 ``conn-fields`` format: label, description, JSON schema)
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "provider": {
        "label": "Provider",
        "description": (
            "Which API the key and base URL belong to: openai (and any OpenAI-compatible "
            "server), anthropic or litellm."
        ),
        "schema": {"type": ["string", "null"], "enum": [*PROVIDERS, None], "default": "openai"},
    },
    "backend_params": {
        "label": "Backend params (JSON)",
        "description": (
            'Defaults for LLMs given as an import path, e.g. {"max_requests_per_minute": 5000, '
            '"max_tokens_per_minute": 2000000}. Never put the API key here.'
        ),
        "schema": {"type": ["string", "null"]},
    },
    "storage_options": {
        "label": "Storage options (JSON)",
        "description": (
            "fsspec options for the run directory, inputs and published outputs, e.g. "
            '{"key": "...", "secret": "...", "endpoint_url": "http://minio:9000"}.'
        ),
        "schema": {"type": ["string", "null"], "format": "password"},
    },
}

#: hidden / relabelled standard fields and placeholders (kebab-case keys: provider-info format)
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"host": "Base URL", "password": "API key"},
    "placeholders": {
        "host": "https://api.openai.com/v1 (empty: the provider's default endpoint)",
        "password": "sk-...",
        "provider": "openai",
        "backend_params": '{"max_requests_per_minute": 5000}',
        "storage_options": '{"endpoint_url": "http://127.0.0.1:9000"}',
    },
}


def ui_field_behaviour() -> dict[str, Any]:
    """:data:`UI_FIELD_BEHAVIOUR` in the hook method's format (snake_case keys)."""
    return {
        "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
        "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
        "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
    }


def connection_type_info() -> dict[str, Any]:
    """The ``connection-types`` entry of the provider info."""
    return {
        "connection-type": CONN_TYPE,
        "hook-class-name": "airflow_provider.hooks.curator.CuratorHook",
        "hook-name": HOOK_NAME,
        "conn-fields": CONN_FIELDS,
        "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
    }
