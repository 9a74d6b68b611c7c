"""Publishing a finalized run's dataset as Parquet under an ``output_uri`` (any fsspec URI),
conforming to the asset's schema contract, optionally as one Hive partition of a table.

The layout (readers rely on it; see docs/architecture.md, "Published outputs"):

```
<asset>/_schema/<generation>.json                the schema contract (curator_flows.schema_contract)
<asset>/README.md                                the dataset card, with partitions: all of them
<dir>/_SUCCESS                                   the marker: JSON, written last, atomically
<dir>/part-<publish_id>-<shard>.parquet          the data files of one publish
<dir>/README.md                                  the dataset card, without partitions
<dir>/_part-<publish_id>-<shard>.parquet.tmp     a part not committed yet (listing readers skip it)
<dir>/_report.html                               the run page (after the marker; not listed in it)
```

``<dir>`` is ``output_uri`` itself, or with ``partition={"date": "2026-12-04"}`` the Hive
directory ``<output_uri>/date=2026-12-04`` (then ``<asset>`` is ``output_uri``: every night
reads as one table with a ``date`` column). Without ``partition``, ``<asset>`` is ``output_uri``
less its trailing dated segments (:func:`asset_of`): ``s3://b/recipes`` for
``s3://b/recipes/2026-12-04``.

- A reader reads ``<dir>/_SUCCESS`` and then **exactly the files it lists** (``files``, paths
  relative to ``<dir>``, in row order). No ``_SUCCESS`` means no complete output yet.
- A *listing* reader (DuckDB's or Spark's globs, ``pyarrow.dataset`` discovery, Athena) sees the
  committed parts only: a part is written whole under a ``_``-prefixed ``.tmp`` name, which such
  readers skip, and moved to its ``part-*.parquet`` name just before the marker switches; the
  previous publish's parts are removed right after. So a listing reader of the directory being
  replaced may see both publishes' parts for those seconds (never a part file half written,
  never a crashed publish's uncommitted parts); every other partition is untouched. A crash
  within those seconds leaves committed-named parts no marker lists until the next publish
  removes them (once older than ``ORPHAN_GRACE_SECONDS``). ``README.md`` is no Parquet file:
  a listing reader reads ``*.parquet`` (pyarrow: ``ignore_prefixes=[".", "_", "README.md"]``).
- The marker holds ``format`` (``"parquet"``), ``version`` (1), ``run_id``, ``run_uri``,
  ``publish_id``, ``published_at`` (epoch seconds), ``output_fingerprint``, ``rows``,
  ``files`` (``[{"path", "rows", "bytes"}]``), ``columns`` (``{name: Arrow type}``),
  ``schema`` (the contract: generation, fingerprint, source, fields, its URI), ``asset_uri``,
  ``partition``, ``invalid_rows`` / ``invalid_requests`` / ``invalid_rows_uri``, ``run``
  (model, backend, mode, run key, fingerprints), ``failures_by_reason`` and ``statistics``.
  Every listed file has the contract's Arrow schema.
- Values are cast to the contract (:mod:`curator_flows.contract_cast`); a row with a value that
  does not cast is left out and listed in the run's ``invalid_rows.jsonl``; ``admit`` (the
  publish gate) sees their count before anything is committed.
- Object stores have no atomic rename, so no committed file is ever overwritten: parts get
  names of their own (``publish_id`` = time + random) and the marker, written in one atomic
  write, switches readers from the old complete output to the new one. A kill at any point
  leaves the old output complete and readable; publishing again completes. Publishing the same
  rows, statistics and contract again rewrites nothing.
- Memory is bounded by one record batch of one shard.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .errors import ConfigError, CorruptRunError, StorageAccessError, StorageWriteError
from .report.render import write_report
from .store import RunStore, join_uri

log = logging.getLogger(__name__)

MARKER = "_SUCCESS"
FORMAT_VERSION = 1
#: the run's list of rows a publish left out (a value that does not fit the contract)
INVALID_ROWS = "invalid_rows.jsonl"
#: parts that no marker lists are removed once they are this old (a crashed publish's)
ORPHAN_GRACE_SECONDS = 3600.0
_STAT_KEYS = ("token_usage", "cost_info", "request_stats", "performance_stats")
_PARTITION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9._:+-]+$")
#: a path segment that dates a dataset: ``key=value`` (Hive) or digits and separators
#: (``2026-12-04``, ``20261204``, ``2026-12-04T02:00:00``, the ``12`` of ``2026/12/04``)
_DATED_SEGMENT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=[^/]*|\d[\dT:._+-]*)$")
_TMP_PREFIX = "_part-"
_TMP_SUFFIX = ".parquet.tmp"


def read_marker(
    output_uri: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``_SUCCESS`` marker of ``output_uri``, or ``None`` when nothing was published. A
    marker that is not valid JSON or lists no files (it is written whole, so it was damaged)
    raises :class:`~curator_flows.errors.CorruptRunError` naming it."""
    target = RunStore(output_uri, storage_options)
    republish = "finalize the run with this output_uri again to publish it anew"
    try:
        marker = target.read_json_if_exists(MARKER)
    except CorruptRunError as exc:
        raise CorruptRunError(f"{exc}; {republish}") from None
    files = marker.get("files") if isinstance(marker, dict) else None
    if marker is not None and not (
        isinstance(files, list)
        and all(isinstance(entry, dict) and isinstance(entry.get("path"), str) for entry in files)
    ):
        raise CorruptRunError(
            f"{target.uri}/{MARKER} is damaged: it lists no files as a publish writes them; "
            f"{republish}"
        )
    return marker


def published_files(output_uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Full URIs of the files a reader must read, in order (empty when nothing is published)."""
    marker = read_marker(output_uri, storage_options)
    if marker is None:
        return []
    base = output_uri.rstrip("/")
    return [f"{base}/{entry['path']}" for entry in marker["files"]]


# ----------------------------------------------------------------------------- locations
def partition_path(partition: Mapping[str, Any] | None) -> str:
    """``key=value/...`` of a Hive partition (``""`` for none); refuses keys that are not
    identifiers and values a path or Hive reader would misread."""
    if not partition:
        return ""
    if not isinstance(partition, Mapping):
        raise ConfigError(
            f"partition must be a dict such as {{'date': '2026-12-04'}}, got {partition!r}"
        )
    segments = []
    for key, value in partition.items():
        text = value.isoformat() if hasattr(value, "isoformat") else str(value)
        if not isinstance(key, str) or not _PARTITION_KEY.match(key):
            raise ConfigError(f"partition key {key!r} must be an identifier (letters, _, digits)")
        if not _PARTITION_VALUE.match(text):
            raise ConfigError(
                f"partition value {text!r} of {key!r} must be letters, digits and . _ : + - "
                "(no / or spaces), e.g. a date '2026-12-04'"
            )
        segments.append(f"{key}={text}")
    return "/".join(segments)


def asset_of(output_uri: str, partition: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """``(asset URI, directory the publish writes)``. With ``partition`` the asset is
    ``output_uri``; without, ``output_uri`` less its trailing dated segments (``key=value`` or
    digits with separators), or ``output_uri`` itself when none is dated."""
    base = output_uri.rstrip("/")
    if partition:
        return base, join_uri(base, partition_path(partition))
    scheme, sep, path = base.rpartition("://")
    segments = path.split("/")
    keep = len(segments)
    while keep > 1 and _DATED_SEGMENT.match(segments[keep - 1]):
        keep -= 1
    root = "/".join(segments[:keep]) or "/"
    return (f"{scheme}{sep}{root}" if sep else root), base


# ----------------------------------------------------------------------------- publishing
def publish(
    store: RunStore,
    manifest: dict[str, Any],
    output: dict[str, Any],
    output_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    partition: Mapping[str, Any] | None = None,
    schema_evolution: str = "strict",
    admit: Callable[[int], None] | None = None,
    orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS,
) -> tuple[str, dict[str, Any]]:
    """Publish the run's output (``output`` is its ``stats.json``) under ``output_uri``
    (``partition``: as that Hive partition); return ``(the directory written, its marker)``.

    ``admit(invalid_requests)``: called with the number of input rows whose output has a value
    the contract refuses, after every part is written and before anything is committed; if it
    raises, nothing is published (the previous output stays) and the error propagates."""
    from .schema_contract import Contract, read_contract, settle

    asset_uri, target_uri = asset_of(output_uri, partition)
    target = RunStore(target_uri, storage_options)
    asset = RunStore(asset_uri, storage_options)
    declared = output.get("declared_schema")
    proposed, source = _proposed_schema(store, output["outputs"], declared)
    _check_partition_columns(partition, proposed)
    if declared is None and not len(proposed):  # no rows tonight: nothing to infer from
        contract = read_contract(asset) or Contract(proposed, 0, "no columns yet", 0.0, None)
    else:
        contract, _ = settle(
            asset,
            proposed,
            declared=declared is not None,
            source=source,
            evolution=schema_evolution,
            run_id=manifest["run_id"],
        )
    statistics = {key: output[key] for key in _STAT_KEYS}
    try:
        previous = read_marker(target_uri, storage_options)
    except CorruptRunError as exc:  # publishing anew replaces it
        log.warning("%s", exc)
        previous = None
    if (
        previous is not None
        and previous.get("run_id") == manifest["run_id"]
        and previous.get("output_fingerprint") == output["output_fingerprint"]
        and previous.get("statistics") == statistics
        and (previous.get("schema") or {}).get("fingerprint") == contract.fingerprint
    ):  # the same rows, statistics and contract are published already
        if admit is not None:
            admit(int(previous.get("invalid_requests") or 0))
        _write_card(asset, target, previous, partition, contract.schema)
        write_report(store, target, previous, only_if_missing=True)  # a crash lost it
        return target.uri, previous
    started = time.time()
    publish_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    staged: list[tuple[str, str]] = []
    try:
        with store.atomic_writer(INVALID_ROWS) as invalid_file:
            files, invalid = _write_parts(
                store, target, output["outputs"], publish_id, contract.schema, invalid_file, staged
            )
        if not invalid["rows"]:
            store.remove(INVALID_ROWS)
        if admit is not None:
            admit(invalid["requests"])
        for temporary, final in staged:
            _move(target, temporary, final)
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
            "columns": {field.name: str(field.type) for field in contract.schema},
            "schema": contract.summary(asset.uri),
            "asset_uri": asset.uri,
            "partition": {k: str(v) for k, v in (partition or {}).items()} or None,
            "invalid_rows": invalid["rows"],
            "invalid_requests": invalid["requests"],
            "invalid_rows_uri": f"{store.uri}/{INVALID_ROWS}" if invalid["rows"] else None,
            "run": _run_facts(manifest, output),
            "failures_by_reason": output.get("failures_by_reason"),
            "statistics": statistics,
        }
        target.write_bytes(MARKER, orjson.dumps(marker, option=orjson.OPT_INDENT_2))
    except StorageAccessError:  # a path or permission to fix, not a write to retry
        _discard(target, staged)
        raise
    except OSError as exc:
        _discard(target, staged)
        raise StorageWriteError(
            f"publishing run {manifest['run_id']} to {target.uri} failed "
            f"({type(exc).__name__}: {exc}); the previous output there is intact: finalize "
            "again to publish"
        ) from exc
    except BaseException:
        _discard(target, staged)
        raise
    _write_card(asset, target, marker, partition, contract.schema)
    _remove_superseded(target, previous, marker, started - orphan_grace_seconds)
    write_report(store, target, marker)  # for people; never fails the publish
    return target.uri, marker


def _proposed_schema(store: RunStore, outputs: list[str], declared: dict[str, Any] | None):
    """``(schema, source)`` this run proposes: the declared one, else its output's."""
    import pyarrow as pa

    if declared is not None:
        from .output_schema import schema_from_json

        return schema_from_json(declared["arrow_schema"]), f"declared by {declared['source']}"
    for rel in outputs:
        with store.arrow_stream(rel) as reader:
            return reader.schema.remove_metadata(), "inferred from the first publish"
    return pa.schema([]), "inferred from the first publish"


def _check_partition_columns(partition: Mapping[str, Any] | None, schema) -> None:
    clash = sorted(set(partition or {}) & set(schema.names))
    if clash:
        raise ConfigError(
            f"partition key(s) {clash} are also columns of the dataset: a Hive reader would "
            "read two columns of one name; rename the partition key or the column"
        )


def _run_facts(manifest: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    """What the dataset card says about the run that made the data."""
    fingerprints = manifest.get("fingerprints") or {}
    return {
        "model_name": manifest.get("model_name"),
        "backend": manifest.get("backend"),
        "mode": manifest.get("mode"),
        "run_key": manifest.get("run_key"),
        "fingerprints": {
            "prompts": fingerprints.get("content"),
            "family": fingerprints.get("family"),
            "parse": output.get("parse_fingerprint"),
            "acceptance": output.get("acceptance_fingerprint"),
        },
    }


def _write_parts(
    store: RunStore,
    target: RunStore,
    outputs: list[str],
    publish_id: str,
    contract,
    invalid_file: Any,
    staged: list[tuple[str, str]],
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Write every shard's output, cast to ``contract``, as a part under its temporary name
    (``staged`` collects ``(temporary, final)`` names as they appear); list rows left out in
    ``invalid_file``. Returns ``(files, {"rows", "requests"} left out)``."""
    files: list[dict[str, Any]] = []
    counts = {"rows": 0, "requests": 0}
    for rel in outputs:
        shard = rel.rsplit("/", 1)[-1].removeprefix("data-").removesuffix(".arrow")
        origins = _origins(store, rel)
        bad_requests: set[Any] = set()
        with store.arrow_stream(rel) as reader:
            batches = _conformed(reader, contract, shard, origins, target.uri, invalid_file)
            first = next(batches, None)
            if first is None:
                continue
            name = f"part-{publish_id}-{shard}.parquet"
            temporary = f"{_TMP_PREFIX}{publish_id}-{shard}{_TMP_SUFFIX}"
            staged.append((temporary, name))
            rows, size = _write_parquet(
                target, temporary, contract, _counting([first], counts, bad_requests),
                _counting(batches, counts, bad_requests),
            )  # fmt: skip
        counts["requests"] += len(bad_requests)
        files.append({"path": name, "rows": rows, "bytes": size})
    if not files:  # an empty dataset still publishes its schema
        name = f"part-{publish_id}-empty.parquet"
        temporary = f"{_TMP_PREFIX}{publish_id}-empty{_TMP_SUFFIX}"
        staged.append((temporary, name))
        rows, size = _write_parquet(target, temporary, contract, [], [])
        files.append({"path": name, "rows": 0, "bytes": size})
    return files, counts


def _counting(items, counts: dict[str, int], bad_requests: set):
    """The conformed batches of ``items``, counting the rows each left out."""
    for table, left_out in items:
        counts["rows"] += len(left_out)
        bad_requests.update(left_out)
        if table.num_rows:
            yield from table.to_batches()


def _conformed(reader, contract, shard: str, origins, where: str, invalid_file: Any):
    """``(table cast to contract, input rows of the rows left out)`` per record batch; every
    row left out is one line in ``invalid_file``."""
    import pyarrow as pa

    from .contract_cast import conform

    offset = 0
    for batch in reader:
        if not batch.num_rows:
            continue
        result = conform(pa.Table.from_batches([batch]), contract)
        left_out = []
        for index, problems in sorted(result.invalid.items()):
            position = offset + index
            row = origins[position] if origins is not None else None
            left_out.append(row if row is not None else (shard, position))
            invalid_file.write(_invalid_line(where, shard, position, row, problems))
        offset += batch.num_rows
        yield result.table, left_out


def _invalid_line(where: str, shard: str, position: int, row: Any, problems: list) -> bytes:
    text = "; ".join(
        f"column {p['column']!r}: a {p['value_type']} ({p['output_type']}) "
        f"{p['value'] if p['value'] is not None else ''} {p['reason']}".replace("  ", " ")
        for p in problems
    )
    line = {
        "output_uri": where,
        "shard": shard,
        "output_row": position,
        "row": row,
        "error": f"row left out of the publish: {text}",
        "errors": problems,
    }
    return orjson.dumps(line) + b"\n"


def _origins(store: RunStore, rel: str) -> list[int] | None:
    """The input row of each output row of a shard (written by finalize), or ``None``."""
    origins_rel = rel.replace("/data-", "/origins-", 1)
    if origins_rel == rel:
        return None
    try:
        with store.arrow_stream(origins_rel) as reader:
            return reader.read_all().column("row").to_pylist()
    except (FileNotFoundError, KeyError):
        return None


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


def _move(target: RunStore, source: str, destination: str) -> None:
    """Give a written part its committed name (a rename locally, a server-side copy and a
    delete on object stores)."""
    if target.local:
        os.replace(target.path(source), target.path(destination))
    else:  # cp_file and rm_file take the path as it is (mv would expand glob characters)
        target.fs.cp_file(target.path(source), target.path(destination))
        target.fs.rm_file(target.path(source))


def _discard(target: RunStore, staged: list[tuple[str, str]]) -> None:
    """Remove what an aborted publish wrote (its temporary and any moved parts); failures
    only leave garbage behind for a later publish to remove."""
    for temporary, final in staged:
        for rel in (temporary, final):
            try:
                target.remove(rel)
            except OSError as exc:
                log.warning("could not remove %s/%s: %s", target.uri, rel, exc)


def _write_card(
    asset: RunStore,
    target: RunStore,
    marker: dict[str, Any],
    partition: Mapping[str, Any] | None,
    schema,
) -> None:
    """The dataset card: at the asset root over every partition, or beside the data."""
    from .dataset_card import write_card, write_partitioned_card

    try:
        if partition:
            write_partitioned_card(asset, list(partition), schema)
        else:
            write_card(target, marker, schema)
    except OSError as exc:  # the data is published; the next publish writes the card again
        log.warning("could not write the dataset card of %s: %s", asset.uri, exc)


def _remove_superseded(
    target: RunStore, previous: dict[str, Any] | None, marker: dict[str, Any], cutoff: float
) -> None:
    """Remove the previous marker's files, and parts no marker lists (committed or temporary)
    that are older than ``cutoff`` (epoch seconds); failures only leave garbage behind."""
    keep = {entry["path"] for entry in marker["files"]}
    doomed = {entry["path"] for entry in (previous or {}).get("files", [])} - keep
    for pattern in ("part-*.parquet", f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
        for name in target.glob(pattern):
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
        return int(name.removeprefix("_").split("-", 2)[1]) / 1e9
    except (IndexError, ValueError):
        return None
