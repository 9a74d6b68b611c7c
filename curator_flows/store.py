"""The run directory on fsspec: the only state a run has.

Layout under ``<working_dir>/<run_id>/`` (see docs/architecture.md)::

    manifest.json
    requests/<shard>.jsonl          one request per line, written whole
    responses/<shard>.jsonl         local filesystems: append-only, one write() per line
    responses/<shard>.part-*.jsonl  object stores: immutable part files, one per flush
    batches/<shard>.json            batch records
    output/                         parsed dataset + stats.json
    failed_requests.jsonl

Invariants:
- whole files appear atomically (temp name + rename locally; on object stores one PUT, or a
  multipart upload completed at once);
- a local temp name says who wrote it (``<file>.tmp-<scope>-<pid>-<start>-<random>``, see
  :mod:`curator_flows.liveness`); each successful write of a file removes the leftovers of
  earlier writes of that file (a writer killed mid-write) whose writer is certainly gone, or
  that nobody touched for ``STALE_TEMP_SECONDS``: never a live concurrent writer's temp file;
- a response line is either fully present or ignored: readers skip a torn or undecodable line,
  and an appender first terminates a torn tail so the next line starts clean;
- data files stream: lines are read one at a time, Arrow files a record batch at a time
  (memory-mapped locally), and a file written with :meth:`RunStore.atomic_writer` is spooled to
  local disk before an object-store upload; memory holds at most a line, an appender's flush
  buffer, or a small JSON file (manifest, batch record, stats).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import orjson

from . import liveness
from .credentials import check_storage_credentials
from .errors import CorruptRunError, StorageAccessError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
OUTPUT_STATS = "output/stats.json"
FAILED = "failed_requests.jsonl"
#: a temp file of an unknown writer (another host or container) untouched this long is a
#: leftover: no live writer goes a day without writing to its file
STALE_TEMP_SECONDS = 24 * 3600.0


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local filesystem."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def default_working_dir() -> str:
    """``CURATOR_FLOWS_WORKING_DIR``, else Curator's ``CURATOR_CACHE_DIR``, else
    ``~/.cache/curator-flows`` (``~`` expanded in either variable)."""
    for variable in ("CURATOR_FLOWS_WORKING_DIR", "CURATOR_CACHE_DIR"):
        configured = os.environ.get(variable)
        if configured:
            return os.path.expanduser(configured)
    return os.path.join(os.path.expanduser("~"), ".cache", "curator-flows")


def glob_magic(text: str) -> bool:
    """Whether ``text`` holds a glob character (``*``, ``?`` or ``[``)."""
    return any(ch in text for ch in "*?[")


_ACCESS_PROBLEMS = (
    (
        PermissionError,
        "permission denied: give this worker access to it (the directory's "
        "permissions, or the storage credentials and their policy)",
    ),
    (
        NotADirectoryError,
        "a part of the path is a file where a directory belongs (is "
        "working_dir or output_uri a file?)",
    ),
    (
        IsADirectoryError,
        "it is a directory where a file belongs (something other than curator-flows changed it)",
    ),
)


@contextlib.contextmanager
def access_errors(where: str, action: str) -> Iterator[None]:
    """Turn the OS errors no retry fixes (permission denied, a file where a directory belongs or
    the reverse) into :class:`~curator_flows.errors.StorageAccessError` naming ``where``."""
    try:
        yield
    except StorageAccessError:
        raise
    except OSError as exc:
        for kind, problem in _ACCESS_PROBLEMS:
            if isinstance(exc, kind):
                raise StorageAccessError(f"cannot {action} {where}: {problem}") from exc
        raise


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def shard_name(index: int) -> str:
    return f"{index:05d}"


def dumps(record: Any) -> bytes:
    return orjson.dumps(record) + b"\n"


class RunStore:
    """File access to one run directory, addressed by its URI."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options or {}
        check_storage_credentials(self.uri, self.storage_options)  # fails fast, never dials
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **self.storage_options)
        self.local = is_local(self.fs)
        if self.local:
            self.root = os.path.abspath(os.path.expanduser(self.root))

    # ----------------------------------------------------------------- paths
    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        with self._access(rel, "read"):
            return self.fs.exists(self.path(rel))

    def _access(self, rel: str, action: str) -> contextlib.AbstractContextManager[None]:
        return access_errors(f"{self.uri}/{rel}" if rel else self.uri, action)

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching ``pattern`` (relative to the run root), sorted.

        Only ``pattern`` is a pattern (``*``, ``?`` and ``[...]`` match within one name): the
        run root and every literal part are taken as they are, whatever characters they hold
        (a ``working_dir`` named ``runs[1]``), since directories are listed and their names
        matched here, never handed to fsspec's glob. Listings are fresh, never an fsspec cache.
        """
        found = [""]
        parts = pattern.split("/")
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if not glob_magic(part):
                found = [f"{rel}{part}" + ("" if last else "/") for rel in found]
                continue
            found = [
                f"{rel}{name}" + ("" if last else "/")
                for rel in found
                for name in self.list_names(rel.rstrip("/"))
                if fnmatch.fnmatchcase(name, part)
            ]
        if not glob_magic(parts[-1]):
            found = [rel for rel in found if self.exists(rel)]
        return sorted(found)

    def list_names(self, rel: str) -> list[str]:
        """Names directly under the directory ``rel`` (``""``: the run root); empty when it
        does not exist. The path is literal."""
        path = self.root if not rel else self.path(rel)
        if self.local:
            try:
                with self._access(rel, "list"):
                    return os.listdir(path)
            except FileNotFoundError:
                return []
        self.fs.invalidate_cache(path)
        try:
            with self._access(rel, "list"):
                listed = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        finally:  # leave no listing behind for other users of this (shared) fsspec instance
            self.fs.invalidate_cache(path)
        base = self.fs._strip_protocol(path).rstrip("/") + "/"
        children = (self.fs._strip_protocol(p).rstrip("/") for p in listed)
        return [child[len(base) :] for child in children if child.startswith(base)]

    def _ensure_parent(self, path: str) -> None:
        if self.local:
            parent = os.path.dirname(path)
            with access_errors(parent, "create the directory"):
                try:
                    os.makedirs(parent, exist_ok=True)
                except FileExistsError:  # a file of that name
                    raise NotADirectoryError(parent) from None

    # ------------------------------------------------------------ whole files
    @contextlib.contextmanager
    def _replacing(self, path: str) -> Iterator[str]:
        """A temporary name next to local ``path``; renamed over ``path`` if the block ends
        without an error (then the leftovers of earlier writes of ``path`` are removed),
        removed otherwise."""
        tmp = f"{path}{_TEMP_MARK}{_writer_tag()}-{uuid.uuid4().hex[:8]}"
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        _remove_leftovers(path)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``rel`` atomically."""
        path = self.path(rel)
        self._ensure_parent(path)
        with self._access(rel, "write"):
            if self.local:
                with self._replacing(path) as tmp, open(tmp, "wb") as handle:
                    handle.write(data)
            else:
                self.fs.pipe_file(path, data)

    def put_local_file(self, local_path: str, rel: str) -> None:
        """Move (locally) or upload (object stores) a finished local file to ``rel``, whole."""
        path = self.path(rel)
        self._ensure_parent(path)
        with self._access(rel, "write"):
            if self.local:
                with self._replacing(path) as tmp:
                    shutil.move(local_path, tmp)
            else:
                self.fs.put_file(local_path, path)

    def create_exclusive(self, rel: str, obj: Any) -> bool:
        """Create ``rel`` holding ``obj`` (JSON) only if it does not exist; ``False`` when it
        does. Locally ``O_EXCL``; on object stores a conditional PUT (``If-None-Match``)."""
        path = self.path(rel)
        data = orjson.dumps(obj)
        self._ensure_parent(path)
        if self.local:
            try:
                with self._access(rel, "create"):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return True
        try:
            with self._access(rel, "create"):
                self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # a refused precondition surfaces as a generic error on some stores
            if "precondition" in str(exc).lower() or "412" in str(exc):
                return False
            raise
        return True

    def read_bytes(self, rel: str) -> bytes:
        path = self.path(rel)
        with self._access(rel, "read"):
            if self.local:
                with open(path, "rb") as handle:
                    return handle.read()
            return self.fs.cat_file(path)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, orjson.dumps(obj, option=orjson.OPT_INDENT_2))

    def read_json(self, rel: str) -> Any:
        """``rel``'s JSON; a file that is not valid JSON (whole files are written atomically,
        so it was damaged) raises :class:`~curator_flows.errors.CorruptRunError` naming it."""
        data = self.read_bytes(rel)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CorruptRunError(
                f"{self.uri}/{rel} is damaged: not valid JSON ({exc}, {len(data)} bytes); it is "
                "written whole, so something other than curator-flows cut or changed it"
            ) from None

    def read_json_if_exists(self, rel: str) -> Any | None:
        """``rel``'s JSON, or ``None`` when there is no such file (one request, not two)."""
        try:
            return self.read_json(rel)
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[Any]:
        """A binary handle whose file appears at ``rel`` whole on success, never on error. On
        object stores the bytes go to a local temporary file, uploaded when the block ends (one
        PUT, or a multipart upload completed at once), so memory never holds the file."""
        path = self.path(rel)
        self._ensure_parent(path)
        if self.local:
            with self._access(rel, "write"), self._replacing(path) as tmp:
                with open(tmp, "wb", buffering=1 << 20) as handle:
                    yield handle
            return
        fd, tmp = tempfile.mkstemp(prefix="curator-flows-upload-")
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as handle:
                yield handle
            with self._access(rel, "write"):
                self.fs.put_file(tmp, path)
        finally:
            os.remove(tmp)

    @contextlib.contextmanager
    def arrow_stream(self, rel: str) -> Iterator[Any]:
        """A ``pyarrow`` reader of the Arrow IPC stream file ``rel``, a record batch at a time:
        memory-mapped locally (tables read from it stay valid when the file is replaced later),
        streamed from object stores (never read whole)."""
        import pyarrow as pa

        if self.local:
            with self._access(rel, "read"):
                source = pa.memory_map(self.path(rel))
            yield pa.ipc.open_stream(source)
            return
        with self._access(rel, "read"):
            handle = self.fs.open(self.path(rel), "rb")
        with handle:
            yield pa.ipc.open_stream(handle)

    def write_lines(self, rel: str, records: Iterable[Any]) -> int:
        """Stream ``records`` as JSON lines into ``rel``; the file appears whole or not at all."""
        count = 0
        with self.atomic_writer(rel) as handle:
            for record in records:
                handle.write(dumps(record))
                count += 1
        return count

    def remove(self, rel: str) -> None:
        """Remove the file or directory ``rel`` if it exists; the path is literal (fsspec's
        ``rm`` would expand glob characters in it)."""
        path = self.path(rel)
        with self._access(rel, "remove"), contextlib.suppress(FileNotFoundError):
            if self.local:
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
                return
            if not self.fs.exists(path):
                return
            files = self.fs.find(path) if self.fs.isdir(path) else [path]
            for file in files:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(file)
            self.fs.invalidate_cache(path)

    # -------------------------------------------------------------- reading
    def iter_lines(self, rel: str, *, whole: bool = False) -> Iterator[dict[str, Any]]:
        """Records of one JSONL file; a torn or undecodable line is skipped (a crash while
        appending). ``whole``: the file was written whole (a requests file), so such a line
        is damage: :class:`~curator_flows.errors.CorruptRunError` names the file and line."""
        path = self.path(rel)
        with self._access(rel, "read"):
            opener = open(path, "rb", buffering=1 << 20) if self.local else self.fs.open(path, "rb")
        with opener as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.endswith(b"\n"):
                    if whole:
                        raise self._damaged_line(rel, number, "is cut short")
                    log.warning("ignoring a torn last line in %s", path)
                    break
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    if whole:
                        raise self._damaged_line(rel, number, "is not valid JSON") from None
                    log.warning("ignoring an undecodable line in %s", path)
                    continue
                if whole and type(record) is not dict:
                    raise self._damaged_line(rel, number, "is not a JSON object")
                yield record

    def _damaged_line(self, rel: str, number: int, problem: str) -> CorruptRunError:
        return CorruptRunError(
            f"{self.uri}/{rel} is damaged: line {number} {problem}; the file is written whole, "
            "so something other than curator-flows cut or changed it"
        )

    def iter_records(self, pattern: str) -> Iterator[dict[str, Any]]:
        """Records of every file matching ``pattern``, file by file in name order."""
        for rel in self.glob(pattern):
            if ".tmp-" in rel:
                continue
            yield from self.iter_lines(rel)

    # -------------------------------------------------------------- appends
    def appender(self, rel_stem: str, flush_lines: int = 2000, flush_seconds: float = 1.5):
        """An append-only writer for ``<rel_stem>.jsonl`` (see :class:`LineAppender`)."""
        if self.local:
            return LocalAppender(self.path(rel_stem + ".jsonl"))
        return PartAppender(self, rel_stem, flush_lines, flush_seconds)


_TEMP_MARK = ".tmp-"


def _writer_tag() -> str:
    """``<scope>-<pid>-<start>`` of this process, or ``unknown`` where /proc cannot tell."""
    me = liveness.current()
    return f"{me.scope}-{me.pid}-{me.start}" if me is not None else "unknown"


def _is_leftover(tag: str, modified: float) -> bool:
    """Whether the temp file written by ``tag`` (at ``modified``) has no live writer."""
    scope, _, rest = tag.partition("-")
    pid, _, rest = rest.partition("-")
    start, _, _ = rest.partition("-")
    if pid.isdigit() and start.isdigit() and liveness.is_gone(scope, int(pid), int(start)):
        return True
    return time.time() - modified > STALE_TEMP_SECONDS


def _remove_leftovers(path: str) -> None:
    """Remove the temp files of earlier writes of local ``path`` that no live writer owns;
    never raises (a leftover that stays is removed by a later write)."""
    folder, name = os.path.split(path)
    prefix = name + _TEMP_MARK
    try:
        with os.scandir(folder) as entries:
            candidates = [e for e in entries if e.name.startswith(prefix)]
        for entry in candidates:
            if _is_leftover(entry.name[len(prefix) :], entry.stat().st_mtime):
                os.remove(entry.path)
                log.info("removed %s, left by an interrupted write", entry.path)
    except OSError:
        pass


class LocalAppender:
    """One ``write()`` per line on an ``O_APPEND`` descriptor: a line survives ``kill -9`` as soon
    as :meth:`append` returns (it is in the kernel's page cache).

    A line is accepted before any I/O: the file is opened by the first write, so a file that
    cannot be opened (a refused permission) fails that write like a full disk does. A failed or
    partial write keeps the unwritten bytes and raises; the next :meth:`flush` (or append)
    writes the rest first, so a line is never torn by a retry. What could not be written is
    available whole (:meth:`unwritten_lines`, a line torn by a partial write included from its
    start) for a caller that keeps it elsewhere and then drops it (:meth:`discard`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.pending: list[bytes] = []
        self.offset = 0  # bytes of pending[0] already written

    def _open(self) -> None:
        """Open the file for appending; a torn last line (a crash mid-write) is terminated
        first, so the next line starts clean. Nothing is written before this succeeds."""
        with access_errors(self.path, "append to"):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self.fd).st_size
        if size:
            with open(self.path, "rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    self.pending.insert(0, b"\n")  # isolate a torn tail from the next line

    def append(self, record: Any) -> None:
        self.pending.append(dumps(record))
        self.flush()

    def append_many(self, records: Iterable[Any]) -> None:
        data = b"".join(dumps(r) for r in records)
        if data:
            self.pending.append(data)
            self.flush()

    @property
    def unwritten(self) -> int:
        """Lines accepted but not yet written (after a failed write)."""
        return self.unwritten_lines().count(b"\n")

    def unwritten_lines(self) -> bytes:
        """The lines not wholly written yet, each whole (a torn one from its start)."""
        if not self.pending:
            return b""
        first = self.pending[0]
        start = first.rfind(b"\n", 0, self.offset) + 1 if self.offset else 0
        data = first[start:] + b"".join(self.pending[1:])
        return data.lstrip(b"\n")  # (the separator that isolates a torn tail is no line)

    def discard(self) -> None:
        """Forget the unwritten lines (the caller kept them elsewhere)."""
        self.pending = []
        self.offset = 0

    def flush(self) -> None:
        if self.pending and self.fd < 0:
            self._open()
        while self.pending:
            data = self.pending[0]
            self.offset += os.write(self.fd, memoryview(data)[self.offset :])
            if self.offset >= len(data):
                self.pending.pop(0)
                self.offset = 0

    def flush_if_due(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> LocalAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PartAppender:
    """Appends for object stores, which have no append: buffered lines become an immutable
    ``<stem>.part-<time>-<uuid>.jsonl`` every ``flush_lines`` lines or ``flush_seconds``.
    A crash loses at most the unflushed buffer, whose requests are then simply pending again."""

    def __init__(self, store: RunStore, rel_stem: str, flush_lines: int, flush_seconds: float):
        self.store = store
        self.rel_stem = rel_stem
        self.flush_lines = flush_lines
        self.flush_seconds = flush_seconds
        self.buffer: list[bytes] = []
        self.first_at = time.monotonic()

    def append(self, record: Any) -> None:
        if not self.buffer:
            self.first_at = time.monotonic()
        self.buffer.append(dumps(record))
        if len(self.buffer) >= self.flush_lines or self._due():
            self.flush()

    def append_many(self, records: Iterable[Any]) -> None:
        self.buffer.extend(dumps(r) for r in records)
        self.flush()

    def _due(self) -> bool:
        return bool(self.buffer) and time.monotonic() - self.first_at >= self.flush_seconds

    def flush_if_due(self) -> None:
        """Flush when the oldest buffered line is ``flush_seconds`` old (called on a timer, so
        lines never wait for the next append)."""
        if self._due():
            self.flush()

    @property
    def unwritten(self) -> int:
        return len(self.buffer)

    def unwritten_lines(self) -> bytes:
        """The buffered lines (no part file holds them yet)."""
        return b"".join(self.buffer)

    def discard(self) -> None:
        """Forget the buffered lines (the caller kept them elsewhere)."""
        self.buffer = []

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"{self.rel_stem}.part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        self.store.write_bytes(name, b"".join(self.buffer))
        self.buffer = []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> PartAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
