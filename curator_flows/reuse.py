"""Reusing the responses of sibling runs: an edit of k rows sends k requests.

Sibling runs are earlier runs of the same request family (same backend, model, generation
params, schema and ``run_key``) in the same working directory. Request ids are content
addressed, so a successful response a sibling holds for one of this run's ids is exactly the
response this run would be sent; it is copied (marked ``reused_from``) instead.

Invariants:
- only a sibling's *standing* successes are copied (the rule of :mod:`curator_flows.pending`: an
  answer the sibling took back is not), each id at most once, into the shard that holds it;
- the copies are written by ``prepare`` before the manifest, into an empty ``responses/`` (a
  prepare that crashed is redone from scratch), so a run holds each copy once;
- nothing is read when no sibling exists (the common first run);
- memory is 24 bytes per request of this run (40 while sorting: its ids as two 64-bit halves
  and their sort order, in numpy arrays) plus the standing lines of one sibling shard, never a
  Python object per request of this run; the siblings are read shard by shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from .pending import SUCCESS, read_shard
from .store import MANIFEST, RunStore, join_uri

_CHUNK = 4096


def sibling_runs(working_dir: str, family: str, storage_options: dict[str, Any]) -> list[str]:
    """Ids of the prepared runs under ``working_dir`` of the request family ``family``."""
    root = RunStore(working_dir, storage_options)
    return [p.split("/", 1)[0] for p in root.glob(f"{family[:12]}-*/{MANIFEST}")]


class SpooledIds:
    """The request ids of a run being prepared, read from its spooled request lines (each
    starts with ``{"id":"<32 hex digits>"``), sorted for vectorised lookups."""

    def __init__(self, spool_dir: str, shards: list[dict[str, Any]]) -> None:
        import numpy as np

        halves = []
        for shard in shards:
            with open(os.path.join(spool_dir, f"{shard['name']}.jsonl"), "rb", 1 << 20) as handle:
                raw = bytes.fromhex(b"".join(line[7:39] for line in handle).decode())
            halves.append(np.frombuffer(raw, dtype="<u8").reshape(-1, 2))
        ids = np.concatenate(halves) if halves else np.empty((0, 2), dtype="<u8")
        self.order = np.lexsort((ids[:, 1], ids[:, 0]))
        self.high = ids[self.order, 0]
        self.low = ids[self.order, 1]
        del ids, halves
        #: two of this run's ids share their first half (about 1e-8 for a million requests):
        #: lookups then scan instead of taking the first candidate
        self.shared_halves = bool(np.any(self.high[1:] == self.high[:-1]))
        self.taken = np.zeros(len(self.order), dtype=bool)
        self.remaining = len(self.order)
        self.names = [s["name"] for s in shards]
        starts, position = [], 0
        for shard in shards:
            starts.append(position)
            position += shard["requests"]
        self.starts = np.array(starts, dtype=np.int64)

    def claim(self, ids: list[str]) -> list[str | None]:
        """For each id (32 hex digits), the shard holding it if it is this run's and not claimed
        yet (it is then claimed), else ``None``."""
        import numpy as np

        if not self.remaining or not ids:
            return [None] * len(ids)
        try:
            raw = bytes.fromhex("".join(ids))
        except ValueError:  # some id is not hexadecimal: claim the others
            valid = [i for i, value in enumerate(ids) if _is_request_id(value)]
            found: list[str | None] = [None] * len(ids)
            for i, shard in zip(valid, self.claim([ids[i] for i in valid]), strict=True):
                found[i] = shard
            return found
        wanted = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
        slots = self._slots(wanted)
        hits = np.flatnonzero(slots >= 0)
        hit_slots = slots[hits]
        fresh = ~self.taken[hit_slots]
        hits, hit_slots = hits[fresh], hit_slots[fresh]
        _, first = np.unique(hit_slots, return_index=True)  # an id twice in one chunk: once
        hits, hit_slots = hits[first], hit_slots[first]
        self.taken[hit_slots] = True
        self.remaining -= len(hits)
        shard_of = np.searchsorted(self.starts, self.order[hit_slots], side="right") - 1
        found = [None] * len(ids)
        for index, shard in zip(hits.tolist(), shard_of.tolist(), strict=True):
            found[index] = self.names[shard]
        return found

    def _slots(self, wanted: Any) -> Any:
        """The sorted position of each wanted id, ``-1`` when it is not this run's."""
        import numpy as np

        size = len(self.high)
        slots = np.searchsorted(self.high, wanted[:, 0])
        inside = np.minimum(slots, max(size - 1, 0))
        if size == 0:
            return np.full(len(wanted), -1)
        match = (slots < size) & (self.high[inside] == wanted[:, 0])
        exact = match & (self.low[inside] == wanted[:, 1])
        result = np.where(exact, inside, -1)
        if self.shared_halves:
            for i in np.flatnonzero(match & ~exact).tolist():
                slot, (high, low) = int(inside[i]), wanted[i].tolist()
                while slot < size and self.high[slot] == high:
                    if self.low[slot] == low:
                        result[i] = slot
                        break
                    slot += 1
        return result


def reuse_sibling_responses(
    store: RunStore, working_dir: str, siblings: list[str], ids: SpooledIds
) -> int:
    """Copy the siblings' successful responses for this run's request ids; return how many."""
    reused = 0
    appenders: dict[str, Any] = {}
    try:
        for sibling in siblings:
            if not ids.remaining:
                break
            other = RunStore(join_uri(working_dir, sibling), store.storage_options)
            for chunk in _success_chunks(other):
                by_shard: dict[str, list[dict[str, Any]]] = {}
                for record, shard in zip(chunk, ids.claim([r["id"] for r in chunk]), strict=True):
                    if shard is not None:
                        by_shard.setdefault(shard, []).append({**record, "reused_from": sibling})
                for shard, records in by_shard.items():
                    appender = appenders.get(shard)
                    if appender is None:
                        appender = appenders[shard] = store.appender(f"responses/{shard}")
                    appender.append_many(records)
                    reused += len(records)
    finally:
        for appender in appenders.values():
            appender.close()
    return reused


def _success_chunks(run: RunStore) -> Iterator[list[dict[str, Any]]]:
    """The run's standing successes (:mod:`curator_flows.pending`: none the run took back)
    with well-formed ids, shard by shard, a chunk at a time."""
    shards = sorted(
        {rel.split("/", 1)[1].split(".", 1)[0] for rel in run.glob("responses/*.jsonl")}
    )
    for shard in shards:
        lines = read_shard(run, shard, keep=True)
        chunk: list[dict[str, Any]] = []
        for request_id, kind in lines.kinds.items():
            if kind == SUCCESS and type(request_id) is str and len(request_id) == 32:
                chunk.append(lines.lines[request_id])  # claim() checks that it is hexadecimal
            if len(chunk) >= _CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _is_request_id(value: str) -> bool:
    try:
        return len(bytes.fromhex(value)) == 16
    except ValueError:
        return False
