"""The prepare step: input rows → request shards + manifest.

Invariants:
- rows are streamed twice through a local spool file (once to fingerprint, once to render), so
  any iterable, even a one-shot generator, works in bounded memory;
- the manifest is written last: a run directory with a manifest is fully prepared, and a
  prepare that crashed is simply redone (shard files are replaced whole);
- a bad row fails with an error that names the row (and column), before any request is sent;
- shards respect the mode's limits on requests and bytes per shard.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from .fingerprint import RequestIds, digest
from .llm import LLM
from .store import MANIFEST, RunStore, default_working_dir, join_uri, shard_name

MANIFEST_VERSION = 1
# Provider batch limits: (requests, bytes) per batch input file.
# Bytes are decimal megabytes: the stricter reading of the providers' "200 MB" / "256 MB".
BATCH_LIMITS = {"openai": (50_000, 200_000_000), "anthropic": (100_000, 256_000_000)}
_BATCH_LINE_OVERHEAD = 160  # custom_id, method, url and JSON punctuation of one batch line


class InputError(ValueError):
    """A dataset row that cannot be used; the message names the row."""


class PromptError(RuntimeError):
    """``prompt()`` raised or returned something unusable; the message names the row."""


def iter_rows(dataset: Any) -> Iterator[dict[str, Any]]:
    """Rows of any supported input: ``None`` (one empty row), a string, a list of strings, a
    ``datasets.Dataset``, or any iterable of dicts or pydantic models."""
    if dataset is None:
        yield {}
        return
    if isinstance(dataset, str):
        yield {"prompt": dataset}
        return
    if isinstance(dataset, dict):
        raise InputError(
            "dataset must be an iterable of rows, not a single dict: wrap it in a list"
        )
    if not isinstance(dataset, Iterable):
        raise InputError(f"dataset must be iterable, got {type(dataset).__name__}")
    for index, row in enumerate(dataset):
        if isinstance(row, dict):
            yield row
        elif isinstance(row, str):
            yield {"prompt": row}
        elif hasattr(row, "model_dump"):
            yield row.model_dump(mode="json")
        else:
            raise InputError(
                f"row {index}: expected a dict, a string or a pydantic model, "
                f"got {type(row).__name__}"
            )


def _encode_row(index: int, row: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        for column, value in row.items():
            try:
                orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
            except TypeError:
                raise InputError(
                    f"row {index}, column {column!r}: a value of type {type(value).__name__} is not"
                    " JSON-serialisable; convert it (for example to str) before calling the LLM"
                ) from None
        raise


def spool(dataset: Any, spool_path: str) -> tuple[str, int]:
    """Write rows as JSON lines to ``spool_path``; return (data fingerprint, row count)."""
    count = 0
    hasher = hashlib.blake2b(digest_size=16)  # over the exact bytes written
    with open(spool_path, "wb", buffering=1 << 20) as handle:
        for count, row in enumerate(iter_rows(dataset), start=1):
            data = _encode_row(count - 1, row) + b"\n"
            handle.write(data)
            hasher.update(data)
    return hasher.hexdigest(), count


def to_messages(index: int, value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value
        )
    ):
        return value
    raise PromptError(
        f"prompt() on row {index} returned {type(value).__name__}: expected a string or a "
        "non-empty list of {'role': ..., 'content': ...} messages"
    )


def shard_limits(llm: LLM) -> tuple[int, int]:
    """(max requests, max bytes) per shard for the LLM's mode."""
    params = llm.config.params
    if llm.mode == "batch":
        max_requests, max_bytes = BATCH_LIMITS[llm.backend]
        if getattr(params, "batch_size", None):
            max_requests = min(max_requests, params.batch_size)
        return max_requests, max_bytes
    if llm.mode == "offline":
        return params.shard_size, 1 << 62
    return params.shard_size, 1 << 62


def run_id_for(llm: LLM, data_fp: str) -> str:
    family = llm.family_fingerprint()
    return f"{family[:12]}-{digest(family, llm.prompt_fingerprint(), data_fp, llm.mode)[:20]}"


def _render(llm: LLM, spool_path: str) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    takes_input = bool(inspect.signature(llm.prompt).parameters)
    ids = RequestIds(llm.family_fingerprint())
    with open(spool_path, "rb") as handle:
        for index, raw in enumerate(handle):
            row = orjson.loads(raw)
            try:
                value = llm.prompt(row) if takes_input else llm.prompt()
            except Exception as exc:
                raise PromptError(
                    f"prompt() raised on row {index}: {type(exc).__name__}: {exc}"
                ) from exc
            messages = to_messages(index, value)
            messages_json = orjson.dumps(messages)
            request = {
                "id": ids.next_id(messages_json),
                "row": index,
                "messages": messages,
                "input": row,
            }
            yield index, request, messages_json


def _write_shards(
    store: RunStore, llm: LLM, spool_path: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    max_requests, max_bytes = shard_limits(llm)
    if llm.mode == "batch":  # the exact size of the provider's batch line (see batch.sizing)
        from .batch.sizing import line_overhead

        overhead = line_overhead(llm)
    else:
        overhead = _BATCH_LINE_OVERHEAD + len(
            orjson.dumps(
                {"model": llm.model_name, "params": llm.generation_params, "schema": llm.schema()}
            )
        )
    shards: list[dict[str, Any]] = []
    owner: dict[str, str] = {}
    writer = None
    current: dict[str, Any] | None = None
    try:
        for _index, request, messages_json in _render(llm, spool_path):
            size = len(messages_json) + overhead
            if (
                current is None
                or current["requests"] >= max_requests
                or (current["requests"] and current["bytes"] + size > max_bytes)
            ):
                if writer is not None:
                    writer.__exit__(None, None, None)
                current = {"name": shard_name(len(shards)), "requests": 0, "bytes": 0}
                shards.append(current)
                writer = store.atomic_writer(f"requests/{current['name']}.jsonl")
                handle = writer.__enter__()
            handle.write(orjson.dumps(request) + b"\n")
            current["requests"] += 1
            current["bytes"] += size
            owner[request["id"]] = current["name"]
        if writer is not None:
            writer.__exit__(None, None, None)
            writer = None
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    return shards, owner


def reuse_sibling_responses(
    store: RunStore, working_dir: str, run_id: str, owner: dict[str, str]
) -> int:
    """Copy successful responses of earlier runs of the same request family (same model, params
    and schema) for this run's request ids: an edit of k rows then sends k requests."""
    family = run_id.split("-", 1)[0]
    root = RunStore(working_dir, store.storage_options)
    siblings = [p.split("/", 1)[0] for p in root.glob(f"{family}-*/{MANIFEST}")]
    wanted = dict(owner)
    reused = 0
    appenders: dict[str, Any] = {}
    try:
        for sibling in siblings:
            if sibling == run_id or not wanted:
                continue
            other = RunStore(join_uri(working_dir, sibling), store.storage_options)
            for record in other.iter_records("responses/*.jsonl"):
                shard = wanted.get(record.get("id"))
                if shard is None or "content" not in record:
                    continue
                del wanted[record["id"]]
                appender = appenders.get(shard)
                if appender is None:
                    appender = appenders[shard] = store.appender(f"responses/{shard}")
                appender.append({**record, "reused_from": sibling})
                reused += 1
    finally:
        for appender in appenders.values():
            appender.close()
    return reused


def prepare_run(
    llm: LLM, dataset: Any, working_dir: str | None = None
) -> tuple[RunStore, dict[str, Any]]:
    """Prepare (or re-open, when already prepared) the run of ``llm`` over ``dataset``."""
    working_dir = (working_dir or default_working_dir()).rstrip("/")
    spool_dir = tempfile.mkdtemp(prefix="curator-flows-spool-")
    try:
        spool_path = os.path.join(spool_dir, "rows.jsonl")
        data_fp, rows = spool(dataset, spool_path)
        run_id = run_id_for(llm, data_fp)
        store = RunStore(join_uri(working_dir, run_id))
        if store.exists(MANIFEST):
            return store, store.read_json(MANIFEST)
        shards, owner = _write_shards(store, llm, spool_path)
        reused = reuse_sibling_responses(store, working_dir, run_id, owner) if owner else 0
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    now = time.time()
    manifest = {
        "version": MANIFEST_VERSION,
        "run_id": run_id,
        "run_uri": store.uri,
        "working_dir": working_dir,
        "mode": llm.mode,
        "backend": llm.backend,
        "model_name": llm.model_name,
        "llm": llm.spec(),
        "config": llm.config.public_dict(),
        "fingerprints": {
            "family": llm.family_fingerprint(),
            "prompt": llm.prompt_fingerprint(),
            "data": data_fp,
        },
        "rows": rows,
        "requests": sum(s["requests"] for s in shards),
        "reused_responses": reused,
        "shards": shards,
        "created_at": now,
        "updated_at": now,
    }
    store.write_json(MANIFEST, manifest)
    return store, manifest
