"""Opening a prepared run from its URI: the store, the manifest, its shards and its LLM.

Invariant: a run is re-opened from its URI alone (plus fsspec ``storage_options``, which are
never stored); every step starts here, so answers spilled by an earlier step on this machine
are back in the run before a step reads or sends anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CorruptRunError, RunModeError, RunNotFoundError, UnknownShardError
from .pending import damaged_run
from .rebuild import llm_from_spec
from .spill import merge_spills
from .store import MANIFEST, RunStore

if TYPE_CHECKING:
    from .llm import LLM

RunRef = str | dict[str, Any]


def run_uri(run: RunRef) -> str:
    """The URI of ``run``: a URI, or any step result that carries ``run_uri``."""
    if isinstance(run, dict):
        return run["run_uri"]
    uri = getattr(run, "cache_dir", None)  # a CuratorResponse
    return str(uri if uri is not None else run)


def open_run(
    run: RunRef, storage_options: dict[str, Any] | None = None, mode: str | None = None
) -> tuple[RunStore, dict[str, Any]]:
    """The store and manifest of a prepared run (of ``mode``, when given), with the answers an
    earlier step of it on this machine had to spill merged back (:mod:`curator_flows.spill`)."""
    store = RunStore(run_uri(run), storage_options)
    manifest = read_manifest(store)
    if manifest is None:
        raise RunNotFoundError(f"no prepared run at {store.uri} (manifest.json missing)")
    if mode is not None and manifest["mode"] != mode:
        raise RunModeError(f"run {manifest['run_id']} is a {manifest['mode']} run, not {mode}")
    merge_spills(store, manifest)
    return store, manifest


#: the manifest's fields every step reads, and the type each must have
_MANIFEST_FIELDS = {
    "run_id": str,
    "mode": str,
    "backend": str,
    "model_name": str,
    "llm": dict,
    "shards": list,
    "rows": int,
    "requests": int,
}


def read_manifest(store: RunStore) -> dict[str, Any] | None:
    """The run's manifest, ``None`` when it has none (not prepared, or a prepare that
    crashed); one that is not valid JSON or not of the shape prepare writes raises
    :class:`~curator_flows.errors.CorruptRunError` naming the file and the field."""
    try:
        manifest = store.read_json_if_exists(MANIFEST)
    except CorruptRunError as exc:
        raise damaged_run(store, str(exc)) from None
    if manifest is None:
        return None
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise damaged_run(store, f"{store.uri}/{MANIFEST} is damaged: {problem}")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    for name, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            return f"its {name!r} is {_shown(manifest.get(name))}, not a {kind.__name__}"
    for index, shard in enumerate(manifest["shards"]):
        if not (
            isinstance(shard, dict)
            and isinstance(shard.get("name"), str)
            and isinstance(shard.get("requests"), int)
        ):
            return f"its shard {index} is {_shown(shard)}, not a {{'name', 'requests'}} object"
    return None


def _shown(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def shard_names(manifest: dict[str, Any], shard: str | list[str] | None) -> list[str]:
    """``shard`` (a name, a list, or ``None`` for every shard) checked against the run."""
    names = [s["name"] for s in manifest["shards"]]
    if shard is None:
        return names
    wanted = [shard] if isinstance(shard, str) else list(shard)
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise UnknownShardError(f"unknown shard(s) {unknown}; this run has {names}")
    return wanted


def shard_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    return {s["name"]: s["requests"] for s in manifest["shards"]}


def llm_for(manifest: dict[str, Any], llm: LLM | None) -> LLM:
    """``llm`` if given, else the LLM rebuilt from the manifest."""
    return llm if llm is not None else llm_from_spec(manifest["llm"])
