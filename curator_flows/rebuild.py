"""Rebuilding a run's ``LLM`` in another process from the manifest alone.

Invariants:
- the manifest holds the LLM's class (an import path) and the exact arguments its constructor
  was called with, as JSON (classes such as a ``response_format`` as import paths, a
  ``pyarrow.Schema`` such as an ``output_schema`` as its Arrow IPC bytes in base64); API keys
  are removed from ``backend_params`` and a ``SecretStr`` argument is never stored;
- a spec whose arguments are not JSON-serialisable is marked ``rebuildable: false`` with the
  reason; rebuilding it raises :class:`~curator_flows.errors.LLMRebuildError`, which tells the
  caller to pass ``llm=`` to the step;
- this module never imports :mod:`curator_flows.llm` (engine modules rebuild through it).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import LLMRebuildError
from .fingerprint import canonical

_CLASS_TAG = "__class__"
#: a ``pyarrow.Schema`` argument (``output_schema``): base64 of its Arrow IPC form
_ARROW_SCHEMA_TAG = "__arrow_schema__"


def import_path(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def load_import_path(path: str) -> Any:
    """The object at ``"package.module:Qualified.name"``."""
    module, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _encode(value: Any, where: str) -> Any:
    """``value`` as JSON (classes as tagged import paths); raises TypeError naming ``where``."""
    from pydantic import SecretStr

    from .credentials import Secret

    if isinstance(value, SecretStr | Secret):
        raise TypeError(f"{where} is a secret (secrets are never stored)")
    if type(value).__name__ == "Schema" and type(value).__module__.startswith("pyarrow"):
        import base64

        return {_ARROW_SCHEMA_TAG: base64.b64encode(value.serialize().to_pybytes()).decode()}
    if isinstance(value, type):
        if "<locals>" in value.__qualname__:
            raise TypeError(f"{where} is a class defined inside a function ({value.__qualname__})")
        return {_CLASS_TAG: import_path(value)}
    if isinstance(value, dict):
        return {str(k): _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    try:
        canonical(value)
    except TypeError:
        raise TypeError(f"{where} ({type(value).__name__}) is not JSON-serialisable") from None
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_CLASS_TAG}:
            return load_import_path(value[_CLASS_TAG])
        if set(value) == {_ARROW_SCHEMA_TAG}:
            import base64

            import pyarrow as pa

            return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(value[_ARROW_SCHEMA_TAG])))
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


_SECRET_NAMES = frozenset({"api_key"})


def _without_keys(value: Any) -> Any:
    """``value`` with every ``api_key`` entry removed, at any depth."""
    if isinstance(value, dict):
        return {k: _without_keys(v) for k, v in value.items() if k not in _SECRET_NAMES}
    if isinstance(value, list | tuple):
        return [_without_keys(v) for v in value]
    return value


def _by_name(cls: type, args: tuple, kwargs: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    """``args`` bound to the constructor's parameter names where they have one (so a positional
    ``backend_params`` is scrubbed like a keyword one); only ``*args`` stay positional."""
    import inspect

    try:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except (TypeError, ValueError):
        return list(args), dict(kwargs)
    positional: list = []
    named: dict[str, Any] = {}
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    for parameter in parameters:
        if parameter.name not in bound.arguments:
            continue
        value = bound.arguments[parameter.name]
        if parameter.kind is parameter.VAR_POSITIONAL:
            positional.extend(value)
        elif parameter.kind is parameter.VAR_KEYWORD:
            named.update(value)
        elif parameter.kind is parameter.POSITIONAL_ONLY:
            positional.append(value)
        else:
            named[parameter.name] = value
    return positional, named


def constructor_spec(cls: type, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """How to call ``cls`` again: ``{"class", "args", "kwargs", "rebuildable", "reason"}``;
    every ``api_key`` (at any depth, however it was passed) is left out."""
    spec: dict[str, Any] = {"class": import_path(cls), "args": [], "kwargs": {}}
    if "<locals>" in cls.__qualname__:
        return {**spec, "rebuildable": False, "reason": f"{cls.__qualname__} is defined inside a "
                "function, so no other process can import it"}  # fmt: skip
    args, kwargs = _by_name(cls, args, kwargs)
    try:
        spec["args"] = [
            _encode(_without_keys(a), f"positional argument {i}") for i, a in enumerate(args)
        ]
        spec["kwargs"] = {
            k: _encode(_without_keys(v), f"argument {k!r}")
            for k, v in kwargs.items()
            if k not in _SECRET_NAMES
        }
    except TypeError as exc:
        return {**spec, "args": [], "kwargs": {}, "rebuildable": False, "reason": str(exc)}
    return {**spec, "rebuildable": True, "reason": None}


def llm_from_spec(spec: dict[str, Any]) -> Any:
    """Call the recorded class with the recorded arguments. Raises
    :class:`~curator_flows.errors.LLMRebuildError` when that is impossible, saying why."""
    hint = "; pass llm= to the step (an LLM built the same way as the one that prepared the run)"
    if not spec.get("rebuildable", True):
        raise LLMRebuildError(f"the run's LLM cannot be rebuilt: {spec.get('reason')}{hint}")
    try:
        cls = load_import_path(spec["class"])
        args = _decode(spec.get("args") or [])
        kwargs = _decode(spec.get("kwargs") or {})
    except (ImportError, AttributeError) as exc:
        raise LLMRebuildError(
            f"cannot import the LLM class {spec['class']!r} recorded in the run manifest "
            f"({type(exc).__name__}: {exc}){hint}"
        ) from None
    try:
        return cls(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever a user constructor raises
        raise LLMRebuildError(
            f"rebuilding {spec['class']} from its recorded arguments failed "
            f"({type(exc).__name__}: {exc}){hint}"
        ) from None


def verify_rebuild(llm: Any, spec: dict[str, Any]) -> None:
    """Rebuild ``llm`` from ``spec`` here and check it is the same LLM (same requests family and
    same ``parse()`` state); raise :class:`LLMRebuildError` saying why not."""
    rebuilt = llm_from_spec(spec)
    if type(rebuilt) is not type(llm):
        raise LLMRebuildError(
            f"the class recorded for this run ({spec['class']}) imports as another class; "
            "pass llm= to the steps"
        )
    if rebuilt.family_fingerprint() != llm.family_fingerprint():
        raise LLMRebuildError(
            f"{spec['class']} rebuilt from its constructor arguments sends different requests "
            "(model, generation_params, schema or backend_params set outside the constructor?); "
            "pass llm= to the steps"
        )
    if rebuilt.parse_fingerprint() != llm.parse_fingerprint():
        ours, theirs = llm.parse_state(), rebuilt.parse_state()
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise LLMRebuildError(
            f"{spec['class']} rebuilt from its constructor arguments differs in {differ} "
            "(state set outside the constructor, or not JSON-serialisable); pass llm= to the "
            "steps"
        )
