"""What a flow run's parameters look like to the Prefect API.

Prefect stores every flow run's parameters on the server (and shows them in the UI) by
JSON-encoding whatever was passed, recursing into plain objects: an ``LLM`` instance would
send its ``backend_params`` (an ``api_key`` included), a list of rows would send the whole
dataset. :class:`CuratorFlow` stores a public view instead.

Invariants:
- an ``LLM`` is stored as its class's import path, model, backend and mode;
- credentials are stored as a block's name or a masked description, never a key; any mapping
  entry named like a secret (``api_key``, ``*secret``, ``*access_key``, ``*_token``,
  ``password``) is masked;
- a dataset of more than :data:`MAX_STORED_ROWS` rows is stored as a one-line description
  (a URI is stored as is: it is what a deployment passes; an upstream run as its URIs);
- parameters sent to a deployment's flow run (``run_deployment``) bypass this view: they never
  carry a secret (:func:`refuse_secrets`).
"""

from __future__ import annotations

from typing import Any

from prefect import Flow

from curator_flows.credentials import Credentials
from curator_flows.errors import ConfigError
from curator_flows.llm import LLM
from curator_flows.rebuild import import_path

MASK = "**********"
#: datasets up to this many rows are stored with the flow run (e.g. a handful of seed prompts)
MAX_STORED_ROWS = 20
_SECRET_SUFFIXES = ("api_key", "apikey", "secret", "secret_key", "access_key", "password", "_token")


def _is_secret_name(name: Any) -> bool:
    lowered = str(name).lower()
    return lowered == "token" or lowered.endswith(_SECRET_SUFFIXES)


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (MASK if _is_secret_name(k) else _masked(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


def secret_names(value: Any, where: str = "") -> list[str]:
    """The paths of the entries of ``value`` named like secrets (``backend_params.api_key``)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if _is_secret_name(key) and item is not None:
                found.append(path)
            else:
                found.extend(secret_names(item, path))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found.extend(secret_names(item, f"{where}[{i}]"))
    return found


def refuse_secrets(llm_kwargs: dict[str, Any] | None, shard: str | None = None) -> None:
    """Raise :class:`~curator_flows.errors.ConfigError` when ``llm_kwargs`` bound for a shard
    flow run hold a secret: ``run_deployment`` stores a flow run's parameters on the Prefect
    server as given (no public view applies), so a key there would be stored and shown."""
    names = secret_names(llm_kwargs or {})
    if names:
        where = f"shard {shard}: " if shard else ""
        raise ConfigError(
            f"{where}llm_kwargs hold {', '.join(names)}: a shard flow run's parameters are "
            "stored on the Prefect server as given, so keys must not travel in them; save the "
            "key in a CuratorCredentials block and pass its name as credentials="
        )


def public_llm(llm: LLM) -> dict[str, Any]:
    return {
        "llm": import_path(type(llm)),
        "model_name": llm.model_name,
        "backend": llm.backend,
        "mode": llm.mode,
    }


def public_credentials(value: Any) -> Any:
    from .credentials import CuratorCredentials

    if value is None or isinstance(value, str):
        return value  # a saved block's name
    if isinstance(value, CuratorCredentials):
        return {
            "block": getattr(value, "_block_document_name", None) or "(unsaved)",
            "provider": value.provider,
            "base_url": value.base_url,
            "api_key": MASK if value.api_key is not None else None,
        }
    if isinstance(value, Credentials):
        return value.public_dict()
    if isinstance(value, dict):
        try:
            return Credentials.coerce(value).public_dict()
        except Exception:
            return _masked(value)
    return f"<{type(value).__name__}>"


def public_dataset(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    cache_dir = getattr(value, "cache_dir", None)
    if cache_dir is not None and hasattr(value, "dataset"):  # a CuratorResponse
        return {"curator_response": str(cache_dir)}
    if isinstance(value, dict) and "run_uri" in value:  # an upstream step's result
        return {k: value[k] for k in ("run_uri", "output_uri") if k in value}
    try:
        rows = len(value)
    except TypeError:
        return f"<{type(value).__name__}: not stored>"
    if isinstance(value, list | tuple) and rows <= MAX_STORED_ROWS:
        return _masked(list(value))
    return f"<{type(value).__name__} of {rows} rows: not stored with the flow run>"


def public_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The view of ``parameters`` that may be stored by the Prefect API."""
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        if isinstance(value, LLM):
            out[name] = public_llm(value)
        elif name == "credentials":
            out[name] = public_credentials(value)
        elif name == "dataset":
            out[name] = public_dataset(value)
        else:
            out[name] = MASK if _is_secret_name(name) and value is not None else _masked(value)
    return out


class CuratorFlow(Flow):
    """A Prefect flow whose run parameters reach the API as :func:`public_parameters`."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        return super().serialize_parameters(public_parameters(parameters))

    def with_options(self, *args: Any, **kwargs: Any) -> CuratorFlow:
        copy = super().with_options(*args, **kwargs)
        copy.__class__ = type(self)  # same state, same parameter view
        return copy  # type: ignore[return-value]


def curator_flow(**options: Any) -> Any:
    """``@flow``-like decorator building a :class:`CuratorFlow`."""

    def decorate(fn: Any) -> CuratorFlow:
        return CuratorFlow(fn=fn, **options)

    return decorate
