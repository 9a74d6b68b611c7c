"""Opening a prepared run from its URI: the store, the manifest, its shards and its LLM.

Invariant: a run is re-opened from its URI alone (plus fsspec ``storage_options``, which are
never stored); every step starts here, so answers spilled by an earlier step on this machine
are back in the run before a step reads or sends anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import RunModeError, RunNotFoundError, UnknownShardError
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
    manifest = store.read_json_if_exists(MANIFEST)
    if manifest is None:
        raise RunNotFoundError(f"no prepared run at {store.uri} (manifest.json missing)")
    if mode is not None and manifest["mode"] != mode:
        raise RunModeError(f"run {manifest['run_id']} is a {manifest['mode']} run, not {mode}")
    merge_spills(store, manifest)
    return store, manifest


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
