"""Row sources: every kind of ``dataset`` as one stream of rows for ``prompt()``.

A row is what ``prompt()`` receives: a dict (one row of a table), a string (a plain prompt, as
in Curator) or a list of ``{"role", "content"}`` messages (one conversation).

What a ``dataset`` can be:

- ``None``: one empty row (for a ``prompt()`` that takes no input);
- a string: a prompt (one row, the string itself), unless it is a *data reference*: a string
  without whitespace that starts with a URI scheme fsspec knows (``s3://``, ``gs://``,
  ``gcs://``, ``file://``, ``memory://``, ``hf://``, ``https://``...), ends in a data file
  suffix (``.parquet``, ``.jsonl``, ``.arrow``...; a missing file is then an error, never a
  prompt), or is a path (it has a ``/``) that exists locally. A ``pathlib.Path`` is always data.
  Strings inside a list are always prompts, so ``llm(["s3://..."])`` sends the text;
- a data reference names a Parquet, JSON Lines (``.jsonl``/``.ndjson``/``.json``, optionally
  compressed) or Arrow IPC/Feather file, a glob of them (only when no path of that name
  exists: an existing path is literal, brackets and all), or a directory: a published output
  (``_SUCCESS`` marker: exactly the files it lists), a run directory (``manifest.json``: the
  run's finalized output), a saved Hugging Face dataset (``save_to_disk``), or any directory of
  such files (hidden and ``_``-prefixed names skipped);
- a previous run: a :class:`~curator_flows.types.CuratorResponse` (its dataset) or a step
  result dict carrying ``run_uri`` (the run's output), so builds chain stage to stage;
- a pandas ``DataFrame`` (its rows; the index is not a column), a pyarrow ``Table``,
  ``RecordBatch``, ``RecordBatchReader`` or ``dataset.Dataset``, any object exporting an Arrow
  stream (``__arrow_c_stream__``, e.g. polars), a ``datasets.Dataset`` or ``IterableDataset``;
- a list that is one conversation (every item a message with a chat role): one row;
- any other iterable of dicts, strings, conversations, mappings, dataclasses or pydantic
  models (dumped in Python mode, so a datetime field stays a datetime).

Invariants:
- rows stream: files, tables and runs are read in chunks of at most :data:`CHUNK_ROWS` rows,
  so memory is bounded by a chunk (a Parquet row group, an Arrow record batch) however long
  the input;
- pandas, pyarrow and datasets are imported only when the input is one of theirs (types are
  recognised by module name), so ``import curator_flows`` stays light;
- ``storage_options`` reach every fsspec call and are never stored or logged;
- a bad input raises :class:`~curator_flows.errors.InputError` naming the file, line or row.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from .credentials import check_storage_credentials
from .errors import InputError
from .store import MANIFEST, OUTPUT_STATS, access_errors, is_local

#: rows converted to Python objects at a time from a columnar source
CHUNK_ROWS = 1024
#: chat roles that make a list of ``{"role", "content"}`` dicts one conversation
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SUCCESS_MARKER = "_SUCCESS"

_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_GLOB = re.compile(r"[*?\[]")
#: a data file of a publish (``part-<publish_id>-<shard>.parquet``, or before it is committed
#: ``_part-<publish_id>-<shard>.parquet.tmp``; see curator_flows.publish)
_PUBLISHED_PART = re.compile(r"^_?part-\d{20}-[0-9a-f]{8}-[^/]+\.parquet(?:\.tmp)?$")


# ----------------------------------------------------------------------------- entry point
def iter_rows(dataset: Any, storage_options: dict[str, Any] | None = None) -> Iterator[Any]:
    """The rows of ``dataset`` (see the module docstring for what it can be), in order."""
    storage_options = storage_options or {}
    if dataset is None:
        yield {}
        return
    if isinstance(dataset, str):
        if is_data_reference(dataset):
            yield from iter_uri(dataset, storage_options)
        else:
            yield dataset
        return
    if isinstance(dataset, os.PathLike):
        yield from iter_uri(os.fspath(dataset), storage_options)
        return
    from .types import CuratorResponse

    if isinstance(dataset, CuratorResponse):
        yield from iter_rows(dataset.dataset, storage_options)
        return
    kind = _foreign_kind(dataset)
    if kind is not None:
        yield from kind(dataset)
        return
    if isinstance(dataset, dict):
        if isinstance(dataset.get("run_uri"), str) and "run_id" in dataset:  # a step result
            yield from _iter_run(dataset["run_uri"], storage_options)
            return
        raise InputError(
            "dataset must be an iterable of rows, not a single dict: wrap it in a list"
        )
    if isinstance(dataset, list | tuple) and is_conversation(dataset):
        yield list(dataset)
        return
    if isinstance(dataset, bytes | bytearray) or not isinstance(dataset, Iterable):
        raise InputError(
            f"dataset must be iterable (rows, a table, a URI or a previous run), got "
            f"{type(dataset).__name__}"
        )
    for index, row in enumerate(dataset):
        kind = type(row)
        yield row if kind is dict or kind is str else as_row(index, row)


def as_row(index: int, row: Any) -> Any:
    """One item of an iterable dataset as a row: a dict, a string or a conversation."""
    if isinstance(row, dict | str):
        return row
    if isinstance(row, list):
        if is_conversation(row):
            return row
        raise InputError(
            f"row {index}: a list that is not a conversation (a non-empty list of "
            "{'role': ..., 'content': ...} messages); rows are dicts or strings"
        )
    if hasattr(row, "model_dump") and hasattr(type(row), "model_fields"):
        return row.model_dump()
    if isinstance(row, Mapping):
        return dict(row)
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    raise InputError(
        f"row {index}: expected a dict, a string, a conversation or a pydantic model, "
        f"got {type(row).__name__}"
    )


def is_conversation(items: list[Any] | tuple[Any, ...]) -> bool:
    """A non-empty list of ``{"role": <chat role>, "content": ...}`` messages."""
    return bool(items) and all(
        isinstance(item, dict) and "content" in item and item.get("role") in CHAT_ROLES
        for item in items
    )


def is_data_reference(text: str) -> bool:
    """Whether a string given as the dataset names data rather than being a prompt (see the
    module docstring)."""
    if not text or any(ch.isspace() for ch in text):
        return False
    match = _SCHEME.match(text)
    if match:
        import fsspec

        return match.group(1).lower() in fsspec.available_protocols()
    if _format_of(text) is not None:
        return True
    return "/" in text and os.path.exists(os.path.expanduser(text))


# ----------------------------------------------------------------------------- in-memory tables
def _foreign_kind(dataset: Any):
    """The reader for a pandas, pyarrow, datasets or Arrow-stream object, else ``None``."""
    cls = type(dataset)
    module, name = cls.__module__, cls.__name__
    if module.startswith("pandas"):
        if name == "DataFrame":
            return _iter_dataframe
        return None
    if module.startswith("pyarrow"):
        if name in ("Table", "RecordBatch"):
            return lambda data: _iter_batches([data])
        if name == "RecordBatchReader":
            return _iter_batches
        if name in ("Dataset", "FileSystemDataset", "UnionDataset", "InMemoryDataset"):
            return lambda data: _iter_batches(data.to_batches(batch_size=CHUNK_ROWS))
        return None
    if module.startswith("datasets"):
        if name in ("DatasetDict", "IterableDatasetDict"):
            return _refuse_splits
        if name == "Dataset":
            return _iter_hf_dataset
        return None  # IterableDataset: an iterable of dicts
    if hasattr(dataset, "__arrow_c_stream__"):  # polars, duckdb, ...: the Arrow PyCapsule stream
        return _iter_arrow_stream
    return None


def _refuse_splits(dataset: Any) -> Iterator[Any]:
    raise InputError(
        f"dataset is a {type(dataset).__name__} with splits {sorted(dataset)}: pass one split, "
        "e.g. dataset['train']"
    )
    yield  # pragma: no cover


def _iter_dataframe(frame: Any) -> Iterator[dict[str, Any]]:
    duplicated = frame.columns[frame.columns.duplicated()]
    if len(duplicated):
        raise InputError(
            f"the DataFrame has duplicated column names {list(duplicated)}: rename them"
        )
    for start in range(0, len(frame), CHUNK_ROWS):
        yield from frame.iloc[start : start + CHUNK_ROWS].to_dict("records")


def _iter_batches(batches: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Rows of Arrow record batches (or tables), converted :data:`CHUNK_ROWS` at a time."""
    for batch in batches:
        if hasattr(batch, "to_batches"):  # a Table
            yield from _iter_batches(batch.to_batches(max_chunksize=CHUNK_ROWS))
            continue
        for start in range(0, batch.num_rows, CHUNK_ROWS):
            yield from _arrow_rows(batch.slice(start, CHUNK_ROWS))


def _arrow_rows(batch: Any) -> list[dict[str, Any]]:
    """``batch.to_pylist()``, with second to microsecond timestamp columns converted through
    numpy: the same values (zone and fold included), several times faster than Arrow's
    per-value conversion."""
    import pyarrow as pa

    names = batch.schema.names
    timestamps = [
        i
        for i, field in enumerate(batch.schema)
        if pa.types.is_timestamp(field.type) and field.type.unit != "ns"
    ]
    if not timestamps or len(set(names)) != len(names):
        return batch.to_pylist()
    others = [i for i in range(batch.num_columns) if i not in timestamps]
    rows = batch.select(others).to_pylist() if others else [{} for _ in range(batch.num_rows)]
    for i in timestamps:
        name = names[i]
        for row, value in zip(rows, _timestamps(batch.column(i)), strict=True):
            row[name] = value
    if timestamps != list(range(len(others), len(names))):  # restore the column order
        rows = [{name: row[name] for name in names} for row in rows]
    return rows


def _timestamps(column: Any) -> list[Any]:
    import datetime

    import pyarrow as pa

    kind = column.type
    naive = column.cast(pa.timestamp(kind.unit)).to_numpy(zero_copy_only=False)
    values = naive.astype(object).tolist()
    if kind.tz is None:
        return values
    zone = pa.lib.string_to_tzinfo(kind.tz)
    utc = datetime.UTC
    return [None if v is None else v.replace(tzinfo=utc).astimezone(zone) for v in values]


def _iter_arrow_stream(data: Any) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    yield from _iter_batches(pa.RecordBatchReader.from_stream(data))


def _iter_hf_dataset(dataset: Any) -> Iterator[dict[str, Any]]:
    """A ``datasets.Dataset`` in batches, formatted as it formats rows (features decoded)."""
    for batch in dataset.iter(batch_size=CHUNK_ROWS):
        columns = list(batch)
        for values in zip(*batch.values(), strict=True):
            yield dict(zip(columns, values, strict=True))


# ----------------------------------------------------------------------------- URIs
def iter_uri(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[Any]:
    """The rows stored at ``uri`` (a file, a glob or a directory; see the module docstring)."""
    import fsspec

    check_storage_credentials(uri, storage_options)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open the dataset URI {uri!r}: {exc}") from None
    fs.invalidate_cache()  # a long-lived worker must see today's files, not a cached listing
    with access_errors(uri, "read the dataset"):
        files = _resolve(fs, path, uri, storage_options or {})
        if isinstance(files, _Rows):
            yield from files.rows
            return
        for file in files:
            try:
                yield from _read_file(fs, file)
            except FileNotFoundError:
                raise InputError(
                    f"{file}, a file of the dataset {uri}, disappeared while it was being read; "
                    "prepare again once the dataset is complete",
                    retryable=True,
                ) from None


class _Rows:
    """Rows a resolved reference yields directly (a run read through its own store)."""

    def __init__(self, rows: Iterator[Any]) -> None:
        self.rows = rows


def _format_of(path: str) -> str | None:
    lower = path.lower()
    for suffix in _COMPRESSIONS:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    return _FORMATS.get(os.path.splitext(lower)[1])


def _resolve(fs: Any, path: str, uri: str, storage_options: dict[str, Any]) -> Any:
    """The data files ``path`` stands for, in order. A path that exists is taken literally
    (a run directory or an output under ``runs[1]/``); only a path that does not is a glob."""
    if fs.isdir(path):
        return _resolve_directory(fs, path.rstrip("/"), uri, storage_options)
    if fs.exists(path):
        if _format_of(path) is None:
            raise InputError(
                f"{uri}: unknown data format; use Parquet (.parquet), JSON Lines (.jsonl) or "
                "Arrow IPC/Feather (.arrow, .feather)"
            )
        return [path]
    if _GLOB.search(path):
        files = [p for p in sorted(fs.glob(path)) if _format_of(p) and fs.isfile(p)]
        if not files:
            raise InputError(f"no data files match {uri}")
        return files
    raise InputError(
        f"no such file or directory: {uri} (to send this text as a prompt, pass it in a list: "
        "llm([text]))"
    )


def _resolve_directory(fs: Any, path: str, uri: str, storage_options: dict[str, Any]) -> Any:
    marker = f"{path}/{SUCCESS_MARKER}"
    if fs.isfile(marker) and _marker_files(fs, path) is not None:
        return _Rows(_iter_published(fs, path, uri))
    if fs.isfile(f"{path}/{MANIFEST}"):
        return _Rows(_iter_run(uri, storage_options))
    if fs.isfile(f"{path}/dataset_dict.json"):
        splits = sorted(
            p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p)
        )
        raise InputError(
            f"{uri} is a saved DatasetDict with splits {splits}: point at one split, e.g. "
            f"{uri.rstrip('/')}/{splits[0] if splits else 'train'}"
        )
    if fs.isfile(f"{path}/state.json") and fs.isfile(f"{path}/dataset_info.json"):
        state = orjson.loads(fs.cat_file(f"{path}/state.json"))
        return [f"{path}/{entry['filename']}" for entry in state.get("_data_files", [])]
    found = sorted(fs.find(path))
    names = [p[len(path) :].strip("/") for p in found]
    if any(_PUBLISHED_PART.match(name) for name in names):
        raise InputError(
            f"nothing is published at {uri} yet: it holds parts of a publish but no "
            f"{SUCCESS_MARKER} marker (a publish in progress, or one that crashed); finalize "
            "the run with output_uri= to publish it",
            retryable=True,
        )
    files = [p for p, name in zip(found, names, strict=True) if _format_of(p) and not _hidden(name)]
    if not files:
        raise InputError(
            f"no data files (.parquet, .jsonl, .arrow, .feather) under {uri}, and it is neither "
            "a published output (_SUCCESS), a run directory nor a saved Hugging Face dataset"
        )
    return files


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def _marker_files(fs: Any, path: str) -> list[str] | None:
    """The files (relative to ``path``) that the published output's ``_SUCCESS`` marker lists,
    in row order, or ``None`` when the marker is not ours (an empty one, as Spark writes)."""
    try:
        raw = fs.cat_file(f"{path}/{SUCCESS_MARKER}")
    except FileNotFoundError:
        return None
    try:
        content = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        return None
    files = content.get("files") if isinstance(content, dict) else None
    if not isinstance(files, list):
        return None
    names = [entry.get("path") if isinstance(entry, dict) else entry for entry in files]
    if not all(isinstance(name, str) and name for name in names):
        return None
    return names


def _iter_published(fs: Any, path: str, uri: str) -> Iterator[Any]:
    """Exactly the files the marker lists. A listed file that is gone means a newer publish
    replaced the output: before any row was read, the new marker is read instead; after, the
    read fails (retryable), so rows of two publishes are never mixed."""
    for _ in range(3):
        names = _marker_files(fs, path)
        if names is None:
            raise InputError(f"the {SUCCESS_MARKER} marker at {uri} disappeared", retryable=True)
        started = False
        try:
            for name in names:
                for row in _read_file(fs, f"{path}/{name}"):
                    started = True
                    yield row
            return
        except FileNotFoundError:
            if started:
                raise InputError(
                    f"the output published at {uri} was replaced by a newer publish while it was "
                    "being read; prepare again to read the new one",
                    retryable=True,
                ) from None
    raise InputError(
        f"the output published at {uri} keeps being replaced; try again later", retryable=True
    )


def _iter_run(uri: str, storage_options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The finalized output of the run at ``uri``."""
    from .store import RunStore

    store = RunStore(uri, storage_options)
    output = store.read_json_if_exists(OUTPUT_STATS)
    if output is None:
        raise InputError(
            f"the run at {store.uri} is not finalized yet (no {OUTPUT_STATS}): finalize it "
            "before using it as a dataset"
        )
    for rel in output.get("outputs", []):
        try:
            with store.arrow_stream(rel) as batches:  # as finalize wrote them
                yield from _iter_batches(batches)
        except FileNotFoundError:
            raise InputError(
                f"the run at {store.uri} lacks its output file {rel}: finalize it again to "
                "rewrite it (nothing is sent), then use it as a dataset"
            ) from None


# ----------------------------------------------------------------------------- file formats
def _read_file(fs: Any, path: str) -> Iterator[Any]:
    form = _format_of(path)
    if form == "parquet":
        yield from _read_parquet(fs, path)
    elif form == "arrow":
        yield from _read_arrow(fs, path)
    elif form == "jsonl":
        yield from _read_jsonl(fs, path)
    else:
        raise InputError(f"{path}: unknown data format")


def _read_parquet(fs: Any, path: str) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        try:
            reader = pq.ParquetFile(handle, buffer_size=1 << 16, pre_buffer=False)
        except Exception as exc:  # pyarrow raises ArrowInvalid for a file that is not Parquet
            raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
        batches = reader.iter_batches(batch_size=CHUNK_ROWS, use_threads=False)
        yield from _iter_batches(batches)


def _read_arrow(fs: Any, path: str) -> Iterator[dict[str, Any]]:
    """Arrow IPC: the file format (Feather v2) or the stream format (``datasets`` files)."""
    import pyarrow as pa

    local = is_local(fs)
    source = pa.memory_map(path) if local else fs.open(path, "rb")
    with source:
        head = source.read(6)
        source.seek(0)
        try:
            if head == b"ARROW1":
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = pa.ipc.open_stream(source)
        except pa.ArrowInvalid as exc:
            raise InputError(f"{path}: not a readable Arrow IPC file: {exc}") from None
        yield from _iter_batches(batches)


def _read_jsonl(fs: Any, path: str) -> Iterator[Any]:
    with fs.open(path, "rb", compression="infer") as handle:
        for line_number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InputError(
                    f"{path} line {line_number}: not valid JSON ({exc}); JSON files are read as "
                    "JSON Lines, one value per line"
                ) from None
            try:
                yield as_row(line_number, value)
            except InputError:
                raise InputError(
                    f"{path} line {line_number}: expected a JSON object, a string or a "
                    f"conversation, got {type(value).__name__}"
                ) from None
