"""Publishing a finalized run's dataset as Parquet under an ``output_uri`` (any fsspec URI).

The contract (readers rely on it; see docs/architecture.md):

```
<output_uri>/_SUCCESS                               the marker: JSON, written last, atomically
<output_uri>/part-<publish_id>-<shard>.parquet      the data files of one publish
<output_uri>/_report.html                           a page for people (after the marker, unlisted)
```

- A reader reads ``<output_uri>/_SUCCESS`` and then **exactly the files it lists** (``files``,
  paths relative to ``output_uri``, in row order), never a directory listing: every other file
  there is either a publish in progress, a publish that crashed, or an older publish about to be
  removed. No ``_SUCCESS`` means no complete output yet.
- The marker holds ``format`` (``"parquet"``), ``version`` (1), ``run_id``, ``run_uri``,
  ``publish_id``, ``published_at`` (epoch seconds), ``output_fingerprint``, ``rows``,
  ``files`` (``[{"path", "rows", "bytes"}]``), ``columns`` (``{name: Arrow type}``) and
  ``statistics`` (the run's token, cost, request and performance blocks). Every listed file
  has the same Arrow schema.
- Object stores have no atomic directory rename, so a publish never overwrites a file: its parts
  get names of their own (``publish_id`` = time + random), each appears whole (one PUT or a
  completed multipart upload; locally a rename), and the marker, written last in one atomic
  write, switches readers from the old complete output to the new one. Only then are the
  previous marker's files removed; parts of crashed publishes are removed by a later publish
  once they are older than ``ORPHAN_GRACE_SECONDS`` (a publish still running elsewhere is never
  touched). A reader that finds a listed file gone re-reads ``_SUCCESS``: a newer publish
  replaced it.
- A kill at any point leaves the old output complete and readable; publishing again completes.
  Publishing a run whose output files hold the same bytes (``output_fingerprint``, recorded by
  finalize and in the marker) and the same statistics again rewrites nothing, however often
  the run was finalized in between.
- Memory is bounded by one record batch of one shard: shards stream from the run's Arrow files
  into the Parquet writer.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson

from .errors import StorageWriteError
from .report.render import write_report
from .store import RunStore

log = logging.getLogger(__name__)

MARKER = "_SUCCESS"
FORMAT_VERSION = 1
#: parts that no marker lists are removed once they are this old (a crashed publish's)
ORPHAN_GRACE_SECONDS = 3600.0
_STAT_KEYS = ("token_usage", "cost_info", "request_stats", "performance_stats")


def read_marker(
    output_uri: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``_SUCCESS`` marker of ``output_uri``, or ``None`` when nothing was published."""
    return RunStore(output_uri, storage_options).read_json_if_exists(MARKER)


def published_files(output_uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Full URIs of the files a reader must read, in order (empty when nothing is published)."""
    marker = read_marker(output_uri, storage_options)
    if marker is None:
        return []
    base = output_uri.rstrip("/")
    return [f"{base}/{entry['path']}" for entry in marker["files"]]


def publish(
    store: RunStore,
    manifest: dict[str, Any],
    output: dict[str, Any],
    output_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS,
) -> str:
    """Publish the run's output (``output`` is its ``stats.json``) under ``output_uri``;
    return ``output_uri``."""
    target = RunStore(output_uri, storage_options)
    previous = read_marker(output_uri, storage_options)
    statistics = {key: output[key] for key in _STAT_KEYS}
    if (
        previous is not None
        and previous.get("run_id") == manifest["run_id"]
        and previous.get("output_fingerprint") == output["output_fingerprint"]
        and previous.get("statistics") == statistics
    ):
        write_report(store, target, previous, only_if_missing=True)  # a crash lost it
        return target.uri  # the same rows and statistics are published already
    started = time.time()
    publish_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    try:
        files, columns = _write_parts(store, target, output["outputs"], publish_id)
        marker = {
            "format": "parquet",
            "version": FORMAT_VERSION,
            "run_id": manifest["run_id"],
            "run_uri": store.uri,
            "publish_id": publish_id,
            "published_at": time.time(),
            "finalized_at": output.get("finalized_at"),
            "output_fingerprint": output["output_fingerprint"],
            "rows": sum(entry["rows"] for entry in files),
            "files": files,
            "columns": columns,
            "statistics": statistics,
        }
        target.write_bytes(MARKER, orjson.dumps(marker, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise StorageWriteError(
            f"publishing run {manifest['run_id']} to {target.uri} failed "
            f"({type(exc).__name__}: {exc}); the previous output there is intact: finalize "
            "again to publish"
        ) from exc
    _remove_superseded(target, previous, marker, started - orphan_grace_seconds)
    write_report(store, target, marker)  # for people; never fails the publish
    return target.uri


def _write_parts(
    store: RunStore, target: RunStore, outputs: list[str], publish_id: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    import pyarrow as pa

    files: list[dict[str, Any]] = []
    schema = None
    for rel in outputs:
        with store.arrow_stream(rel) as reader:
            schema = reader.schema
            batches = (batch for batch in reader if batch.num_rows)
            first = next(batches, None)
            if first is None:
                continue
            shard = rel.rsplit("/", 1)[-1].removeprefix("data-").removesuffix(".arrow")
            name = f"part-{publish_id}-{shard}.parquet"
            rows, size = _write_parquet(target, name, schema, [first], batches)
        files.append({"path": name, "rows": rows, "bytes": size})
    if not files:  # an empty dataset still publishes its schema
        schema = schema if schema is not None else pa.schema([])
        name = f"part-{publish_id}-empty.parquet"
        rows, size = _write_parquet(target, name, schema, [], [])
        files.append({"path": name, "rows": 0, "bytes": size})
    columns = {field.name: str(field.type) for field in schema} if schema is not None else {}
    return files, columns


def _write_parquet(target: RunStore, name: str, schema, *batch_groups) -> tuple[int, int]:
    """Stream the batches into ``<target>/<name>``; the file appears whole (a local rename, or
    one upload on object stores). Returns ``(rows, bytes)``."""
    import pyarrow.parquet as pq

    rows = 0
    with target.atomic_writer(name) as handle:
        writer = pq.ParquetWriter(handle, schema)
        for group in batch_groups:
            for batch in group:
                writer.write_batch(batch)
                rows += batch.num_rows
        writer.close()
        size = handle.tell()
    return rows, size


def _remove_superseded(
    target: RunStore, previous: dict[str, Any] | None, marker: dict[str, Any], cutoff: float
) -> None:
    """Remove the previous marker's files, and parts no marker lists that are older than
    ``cutoff`` (epoch seconds); failures only leave garbage behind."""
    keep = {entry["path"] for entry in marker["files"]}
    doomed = {entry["path"] for entry in (previous or {}).get("files", [])} - keep
    for name in target.glob("part-*.parquet"):
        if name in keep or name in doomed:
            continue
        born = _publish_time(name)
        if born is not None and born < cutoff:
            doomed.add(name)
    for name in sorted(doomed):
        try:
            target.remove(name)
        except OSError as exc:
            log.warning("could not remove %s/%s: %s", target.uri, name, exc)


def _publish_time(name: str) -> float | None:
    """When the publish that wrote part ``name`` started (from its ``publish_id``)."""
    try:
        return int(name.split("-", 2)[1]) / 1e9
    except (IndexError, ValueError):
        return None
