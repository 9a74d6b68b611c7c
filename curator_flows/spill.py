"""Paid answers the run directory could not take (a full disk, an object store refusing writes):
kept in a spill file on this machine and merged into the run by its next step.

Layout: ``<spill_dir or the system temp dir>/curator-flows-spill/<run_id>-<uri digest>/``
holds ``<shard>.<time_ns>-<pid>-<random>.jsonl`` files of response lines, exactly as they would
have been appended, and ``run.json`` (``{"run_uri"}``, for people). The digest of the run's URI
keeps two copies of one run (same id, other working dirs) apart.

Invariants:
- a spill file appears whole (temp name, fsync, rename) or not at all; it never holds a secret;
- :func:`merge_spills` runs when a step opens the run (:func:`curator_flows.runs.open_run`),
  before anything is sent: it appends each spilled line the shard does not hold yet, then
  removes the file, so merging twice (a crash between append and removal, two steps at once,
  serialized by a lock on the spill file) adds nothing twice; a merge that cannot write
  raises :class:`~curator_flows.errors.StorageWriteError` and the step sends nothing;
- the spill is local to the machine that wrote it: a step on another machine does not see it
  and sends those requests again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import uuid
from typing import Any

import orjson

from .errors import StorageWriteError
from .pending import responses_pattern
from .store import RunStore, dumps

try:
    import fcntl
except ImportError:  # Windows: merges are not serialized (the content check still holds)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FOLDER = "curator-flows-spill"


def spill_folder(store: RunStore, run_id: str, spill_dir: str | None = None) -> str:
    """Where the spill files of the run at ``store`` go on this machine."""
    base = os.path.expanduser(spill_dir) if spill_dir else tempfile.gettempdir()
    uri = store.fs.unstrip_protocol(store.root)
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return os.path.join(base, FOLDER, f"{run_id}-{digest}")


def spill(
    store: RunStore, run_id: str, lines: dict[str, bytes], spill_dir: str | None = None
) -> str:
    """Write each shard's response ``lines`` (JSON lines, as appended) to a spill file; return
    the folder. Raises ``OSError`` when the spill location cannot take them either."""
    folder = spill_folder(store, run_id, spill_dir)
    about = os.path.join(folder, "run.json")
    for shard, data in lines.items():
        if not data:
            continue
        name = f"{shard}.{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        for attempt in range(3):
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
                if not os.path.exists(about):
                    _write_whole(about, orjson.dumps({"run_uri": store.uri, "run_id": run_id}))
                _write_whole(os.path.join(folder, name), data)
                break
            except FileNotFoundError:  # a merge removed the empty folder just now
                if attempt == 2:
                    raise
    return folder


def _write_whole(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def merge_spills(store: RunStore, manifest: dict[str, Any]) -> int:
    """Append the answers spilled for this run on this machine (in the system temp dir, or the
    run's ``spill_dir``) to its response files and remove the spill files; return how many
    lines were added."""
    configured = (manifest.get("config") or {}).get("spill_dir")
    folders = {spill_folder(store, manifest["run_id"], d) for d in (None, configured)}
    added = 0
    for folder in sorted(folders):
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".jsonl"))
        except FileNotFoundError:
            continue
        for name in names:
            added += _merge_file(store, os.path.join(folder, name), name.split(".", 1)[0])
        try:
            if os.listdir(folder) == ["run.json"]:
                os.remove(os.path.join(folder, "run.json"))
            os.rmdir(folder)
        except OSError:
            pass  # a step is spilling into it right now: the next merge takes it
    return added


def _merge_file(store: RunStore, path: str, shard: str) -> int:
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return 0  # merged by another step meanwhile
    with handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # another step merging it: wait for it
        try:
            if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                return 0
        except FileNotFoundError:
            return 0  # the other step merged and removed it
        records = []
        for raw in handle:
            if raw.endswith(b"\n") and raw.strip():
                try:
                    records.append(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    log.warning("ignoring an undecodable line in %s", path)
        ids = {record.get("id") for record in records}
        held = {
            dumps(record)
            for record in store.iter_records(responses_pattern(shard))
            if record.get("id") in ids
        }
        missing = [record for record in records if dumps(record) not in held]
        if missing:
            try:
                with store.appender(f"responses/{shard}") as out:
                    out.append_many(missing)
            except OSError as exc:
                raise StorageWriteError(
                    f"{len(missing)} paid answer(s) of shard {shard} were kept in {path} because "
                    f"{store.uri} could not take them, and it still cannot "
                    f"({type(exc).__name__}: {exc}); nothing was sent: free space there and run "
                    "the step again (it merges them first)"
                ) from exc
        os.remove(path)
    log.warning("merged %d spilled answer(s) of shard %s from %s", len(missing), shard, path)
    return len(missing)
