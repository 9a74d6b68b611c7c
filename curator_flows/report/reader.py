"""Reading a run directory for people: its facts, failures by reason, and its rows a page at a
time (input, prompt, the response that stands, the parsed output rows), read-only.

Invariants:
- nothing here writes to the run directory: unlike the steps (:func:`curator_flows.runs.open_run`),
  opening a run merges no spilled answers, takes no lease and appends no invalidation line;
- memory holds one page of rows and, per shard read, at most that shard's ids (which line
  stands, a search's hits, the input row of each output row): never the run. A search reads
  at most ``scan_limit`` requests and says when it stopped early;
- which response line stands for a request is the rule of :mod:`curator_flows.pending`
  (:class:`~curator_flows.pending.ShardLines`), fed only the lines of the ids wanted;
- a parsed output row is matched to its request by ``output/origins-<shard>.arrow`` (the input
  row of each output row, written by finalize beside the shard's output); without it (a run
  finalized by an older version) no parsed row is shown and the page says why: counts alone
  cannot tell a ``parse()`` that made one row of each request from one that made two of some
  and none of others. Parsed rows are those of the last finalize, so a run resumed since then
  may show answers without their parsed rows;
- failures come from ``failed_requests.jsonl`` once the run is finalized (every failed request
  of that finalize, parse() failures included), else from the failure lines that stand in the
  response files now.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import RunNotFoundError
from ..failures import reason_of
from ..pending import FAILURE, INVALIDATED, ShardLines, read_shard, responses_pattern
from ..store import FAILED, MANIFEST, OUTPUT_STATS, RunStore
from .cells import shown, text_of

#: rows on a page unless asked otherwise, and the most a page may hold
PAGE_SIZE = 25
MAX_PAGE_SIZE = 200
#: requests a search reads before it stops and says so
SEARCH_SCAN_LIMIT = 200_000
#: characters of one text shown on a page (the rest is cut, and says so)
CELL_CHARS = 20_000
#: examples shown per failure reason, and distinct reasons kept apart (the rest: "other")
FAILURE_EXAMPLES = 5
MAX_REASONS = 50
#: shards whose output-row origins are kept between pages
_ORIGINS_CACHED = 4
_STATS_KEYS = (
    "token_usage",
    "cost_info",
    "request_stats",
    "performance_stats",
    "rows",
    "columns",
    "failed",
    "retryable_failures",
    "invalidated",
    "unanswered",
    "parse_failures",
    "finalized_at",
)


def reason_key(line: dict[str, Any]) -> str:
    """The reason key of a failure line (:func:`curator_flows.failures.reason_of`)."""
    return reason_of(line)


@dataclass
class _Origins:
    """The input row of each output row of one shard's last finalize (``rows``), or why the
    output cannot be matched to its requests (``note``)."""

    rel: str | None
    rows: list[int] | None
    note: str | None = None

    def positions(self, row: int) -> range:
        """Output positions of input row ``row`` (``rows`` is in input order)."""
        assert self.rows is not None
        return range(bisect.bisect_left(self.rows, row), bisect.bisect_right(self.rows, row))


class RunView:
    """One run directory, read for people (see the module docstring); safe to share between
    threads."""

    def __init__(self, run_uri: str, storage_options: dict[str, Any] | None = None) -> None:
        store = RunStore(run_uri, storage_options)
        manifest = store.read_json_if_exists(MANIFEST)
        if manifest is None:
            raise RunNotFoundError(
                f"no prepared run at {store.uri} (manifest.json missing): give a run directory, "
                "<working_dir>/<run_id>, as `curator-flows status` prints it"
            )
        self.store = store
        self.manifest = manifest
        self.shards: list[tuple[str, int]] = [
            (shard["name"], int(shard["requests"])) for shard in manifest["shards"]
        ]
        self.requests = sum(count for _, count in self.shards)
        self._lock = threading.Lock()
        self._origins: OrderedDict[tuple[str, Any], _Origins] = OrderedDict()

    # ------------------------------------------------------------------ the run
    def facts(self) -> dict[str, Any]:
        """What the run is (no configuration, never a secret)."""
        manifest = self.manifest
        return {
            "run_id": manifest["run_id"],
            "run_uri": self.store.uri,
            "run_key": manifest.get("run_key"),
            "mode": manifest["mode"],
            "backend": manifest["backend"],
            "model_name": manifest["model_name"],
            "rows": manifest.get("rows"),
            "requests": self.requests,
            "shards": len(self.shards),
            "reused_responses": manifest.get("reused_responses") or 0,
            "created_at": manifest.get("created_at"),
        }

    def output_stats(self) -> dict[str, Any] | None:
        """The last finalize's statistics (``output/stats.json``), or ``None``."""
        return self.store.read_json_if_exists(OUTPUT_STATS)

    def finalized(self) -> dict[str, Any] | None:
        """What the page shows of the last finalize's statistics, or ``None``."""
        stats = self.output_stats()
        if stats is None:
            return None
        return shown({key: stats[key] for key in _STATS_KEYS if key in stats})

    def shard_counts(self) -> list[dict[str, Any]]:
        """Per shard: succeeded, failed, pending, cost and tokens, from its response lines
        under the rule of :mod:`curator_flows.pending` (what ``status`` counts)."""
        batch = self.manifest["mode"] == "batch"
        out = []
        for name, count in self.shards:
            lines = read_shard(self.store, name, retries=batch)
            charge = lines.charge
            succeeded, failed = lines.succeeded, lines.failed
            out.append(
                {
                    "shard": name,
                    "requests": count,
                    "succeeded": succeeded,
                    "failed": failed,
                    "pending": max(0, count - succeeded - failed),
                    "cost": charge.cost,
                    "input_tokens": charge.input_tokens,
                    "output_tokens": charge.output_tokens,
                }
            )
        return out

    # ------------------------------------------------------------------ failures
    def failures(self, examples: int = FAILURE_EXAMPLES) -> dict[str, Any]:
        """Failed requests grouped by reason (most frequent first), each with its count, how
        many may succeed if sent again, and a few examples (row when known, id, message)."""
        tally = _FailureTally(examples)
        if self.output_stats() is not None:
            source = "failed_requests.jsonl, as of the last finalize"
            if self.store.exists(FAILED):
                for line in self.store.iter_lines(FAILED):
                    tally.add(line, line.get("row"))
        else:
            source = "the failure lines that stand in the response files now"
            for name, _ in self.shards:
                for line in _standing_failures(self.store, name):
                    tally.add(line, None)
        return {"source": source, **tally.result()}

    # ------------------------------------------------------------------ rows
    def page(
        self, page: int = 1, size: int = PAGE_SIZE, cell_chars: int | None = CELL_CHARS
    ) -> dict[str, Any]:
        """Page ``page`` (from 1) of the run's requests in input order, ``size`` rows each."""
        size = max(1, min(int(size), MAX_PAGE_SIZE))
        pages = max(1, -(-self.requests // size))
        page = max(1, min(int(page), pages))
        rows = self.rows((page - 1) * size, size, cell_chars)
        return {"page": page, "size": size, "pages": pages, "total": self.requests, "rows": rows}

    def rows(
        self, offset: int, count: int, cell_chars: int | None = CELL_CHARS
    ) -> list[dict[str, Any]]:
        """``count`` rows from request ``offset`` (input order), shard by shard."""
        stats = self.output_stats()
        out: list[dict[str, Any]] = []
        for name, size in self.shards:
            if count <= 0:
                break
            if offset >= size:
                offset -= size
                continue
            requests = list(
                itertools.islice(
                    self.store.iter_lines(f"requests/{name}.jsonl"), offset, offset + count
                )
            )
            out.extend(self._rows_of(name, requests, stats, cell_chars))
            count -= len(requests)
            offset = 0
        return out

    def search(
        self,
        query: str,
        page: int = 1,
        size: int = PAGE_SIZE,
        scan_limit: int = SEARCH_SCAN_LIMIT,
        cell_chars: int | None = CELL_CHARS,
    ) -> dict[str, Any]:
        """Page ``page`` of the requests whose id, input, prompt, or standing response or
        error contains ``query`` (case-insensitive), in input order. Reads requests from the
        start, at most ``scan_limit`` of them: ``stopped_early`` says the limit ended the
        search, ``more`` that another page has matches."""
        needle = query.casefold().strip()
        size = max(1, min(int(size), MAX_PAGE_SIZE))
        page = max(1, int(page))
        skip = (page - 1) * size
        found: list[tuple[str, dict[str, Any]]] = []
        matched = scanned = 0
        more = stopped = False
        for name, _ in self.shards:
            if scanned >= scan_limit:
                stopped = True
                break
            hits = _response_hits(self.store, name, needle)
            for request in self.store.iter_lines(f"requests/{name}.jsonl"):
                if scanned >= scan_limit:
                    stopped = True
                    break
                scanned += 1
                if request["id"] in hits or needle in _request_text(request):
                    matched += 1
                    if matched > skip + size:
                        more = True
                        break
                    if matched > skip:
                        found.append((name, request))
            if more or stopped:
                break
        stats = self.output_stats()
        rows: list[dict[str, Any]] = []
        for name, group in itertools.groupby(found, key=lambda item: item[0]):
            rows.extend(self._rows_of(name, [request for _, request in group], stats, cell_chars))
        return {
            "query": query,
            "page": page,
            "size": size,
            "total": self.requests,
            "rows": rows,
            "more": more,
            "scanned": scanned,
            "scan_limit": scan_limit,
            "stopped_early": stopped and not more,
        }

    # ------------------------------------------------------------------ one shard's rows
    def _rows_of(
        self,
        shard: str,
        requests: list[dict[str, Any]],
        stats: dict[str, Any] | None,
        cell_chars: int | None,
    ) -> list[dict[str, Any]]:
        if not requests:
            return []
        ids = {request["id"] for request in requests}
        standing = _standing_lines(self.store, shard, ids)
        listed = self._listed_failures(ids, standing) if stats is not None else {}
        outputs = self._outputs(shard, [request["row"] for request in requests], stats)
        rows = []
        for request in requests:
            record = standing.get(request["id"])
            row = _row(request, record, listed.get(request["id"]), shard, cell_chars)
            produced, note = outputs.get(request["row"], (None, None))
            if row["status"] != "succeeded":
                produced, note = None, None
            row["outputs"] = shown(produced, cell_chars)
            row["outputs_note"] = note
            rows.append(row)
        return rows

    def _listed_failures(
        self, ids: set[str], standing: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """finalize's failure lines of the ids whose standing line is a success (parse()
        raised on them); read only when the page has such ids."""
        wanted = {i for i in ids if i in standing and "content" in standing[i]}
        if not wanted or not self.store.exists(FAILED):
            return {}
        return {
            line["id"]: line for line in self.store.iter_lines(FAILED) if line.get("id") in wanted
        }

    def _outputs(
        self, shard: str, rows: list[int], stats: dict[str, Any] | None
    ) -> dict[int, tuple[list[dict[str, Any]] | None, str | None]]:
        """Per input row of ``rows``: its parsed output rows (or ``None``) and a note."""
        if stats is None:
            note = "not finalized yet: parsed rows appear after finalize"
            return {row: (None, note) for row in rows}
        origins = self._origins_of(shard, stats)
        if origins.rows is None or origins.rel is None:
            return {row: (None, origins.note) for row in rows}
        wanted = {row: origins.positions(row) for row in rows}
        spans = [span for span in wanted.values() if len(span)]
        positions = sorted({position for span in spans for position in span})
        values = _read_rows(self.store, origins.rel, positions) if positions else {}
        out: dict[int, tuple[list[dict[str, Any]] | None, str | None]] = {}
        for row, span in wanted.items():
            produced = [values[position] for position in span]
            out[row] = (produced, None if produced else "parse() returned no row for it")
        return out

    def _origins_of(self, shard: str, stats: dict[str, Any]) -> _Origins:
        key = (shard, stats.get("finalized_at"))
        with self._lock:
            cached = self._origins.get(key)
            if cached is not None:
                self._origins.move_to_end(key)
                return cached
        origins = _read_origins(self.store, shard, stats)
        with self._lock:
            self._origins[key] = origins
            while len(self._origins) > _ORIGINS_CACHED:
                self._origins.popitem(last=False)
        return origins


# ----------------------------------------------------------------------------- helpers
def _row(
    request: dict[str, Any],
    record: dict[str, Any] | None,
    listed: dict[str, Any] | None,
    shard: str,
    cell_chars: int | None,
) -> dict[str, Any]:
    """One request and the line that stands for it, as the page shows them."""
    row: dict[str, Any] = {
        "row": request["row"],
        "shard": shard,
        "id": request["id"],
        "input": shown(request.get("input"), cell_chars),
        "prompt": [
            {"role": shown(m.get("role")), "content": shown(m.get("content"), cell_chars)}
            for m in request.get("messages") or []
        ],
        "params": shown(request.get("params"), cell_chars),
        "status": "pending",
        "response": None,
        "error": None,
        "finish_reason": None,
        "usage": None,
        "cost": None,
        "attempts": None,
        "reused": False,
    }
    if record is None:
        row["error"] = "no answer yet"
        return row
    if INVALIDATED in record:
        row["status"] = "taken_back"
        row["error"] = shown(f"{record[INVALIDATED]}; the next run sends it again", cell_chars)
        return row
    row["attempts"] = record.get("attempts")
    row["cost"] = shown(record.get("cost"))
    if "content" in record:
        row["status"] = "succeeded"
        row["response"] = shown(record["content"], cell_chars)
        row["finish_reason"] = shown(record.get("finish_reason"))
        row["usage"] = shown(record.get("usage"))
        row["reused"] = "reused_from" in record
        if listed is not None:
            row["status"] = "parse_failed"
            row["error"] = shown(listed.get("error"), cell_chars)
        return row
    row["status"] = "failed"
    row["error"] = shown(record.get("error"), cell_chars)
    row["reason"] = reason_key(record)
    return row


def _standing_lines(store: RunStore, shard: str, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The line that stands for each of ``ids`` (only their lines are kept)."""
    lines = ShardLines(keep=True)
    for record in store.iter_records(responses_pattern(shard)):
        if record.get("id") in ids:
            lines.add(record)
    return lines.lines


def _standing_failures(store: RunStore, shard: str) -> Iterator[dict[str, Any]]:
    """The failure lines that stand in ``shard`` now (one per failed request)."""
    lines = ShardLines()
    failures: dict[str, dict[str, Any]] = {}
    for record in store.iter_records(responses_pattern(shard)):
        if lines.add(record) and "error" in record and "content" not in record:
            failures[record["id"]] = {
                key: record.get(key) for key in ("id", "error", "reason", "retryable")
            }
    for request_id, kind in lines.kinds.items():
        if kind == FAILURE and request_id in failures:
            yield failures[request_id]


def _response_hits(store: RunStore, shard: str, needle: str) -> set[str]:
    """Ids of ``shard`` whose standing line's content, error or reason contains ``needle``."""
    lines = ShardLines()
    hits: set[str] = set()
    for record in store.iter_records(responses_pattern(shard)):
        if not lines.add(record):
            continue
        request_id = record.get("id")
        text = record.get("content") or record.get("error") or record.get(INVALIDATED) or ""
        if needle in str(text).casefold():
            hits.add(request_id)
        else:
            hits.discard(request_id)
    return hits


def _request_text(request: dict[str, Any]) -> str:
    """What a search looks in on the request side: id, input and prompt, case-folded."""
    return text_of([request["id"], request.get("input"), request.get("messages")]).casefold()


def _read_rows(store: RunStore, rel: str, positions: list[int]) -> dict[int, dict[str, Any]]:
    """The rows at ``positions`` (sorted) of the Arrow IPC stream file ``rel``, reading it a
    record batch at a time and converting only those rows."""
    out: dict[int, dict[str, Any]] = {}
    offset = 0
    with store.arrow_stream(rel) as reader:
        for batch in reader:
            end = offset + batch.num_rows
            lo, hi = bisect.bisect_left(positions, offset), bisect.bisect_left(positions, end)
            if lo < hi:
                inside = positions[lo:hi]
                taken = batch.take([position - offset for position in inside]).to_pylist()
                out.update(zip(inside, taken, strict=True))
            offset = end
            if hi >= len(positions):
                break
    return out


def _count_rows(store: RunStore, rel: str) -> int:
    with store.arrow_stream(rel) as reader:
        return sum(batch.num_rows for batch in reader)


def _read_origins(store: RunStore, shard: str, stats: dict[str, Any]) -> _Origins:
    """How the output rows of ``shard`` map to its input rows (see the module docstring)."""
    rel = f"output/data-{shard}.arrow"
    if rel not in (stats.get("outputs") or []) or not store.exists(rel):
        return _Origins(None, None, "this shard has no output file (finalize again)")
    produced = _count_rows(store, rel)
    origins_rel = f"output/origins-{shard}.arrow"
    if store.exists(origins_rel):
        with store.arrow_stream(origins_rel) as reader:
            table = reader.read_all()
        rows = table.column("row").to_pylist() if "row" in table.column_names else []
        if len(rows) == produced:
            return _Origins(rel, rows)
        return _Origins(
            None,
            None,
            f"the output of shard {shard} and the record of where its rows came from disagree "
            "(a finalize was interrupted): finalize again",
        )
    return _Origins(
        None,
        None,
        "this run was finalized without a record of which request each parsed row came from "
        "(output/origins-*.arrow): finalize again to see its parsed rows here",
    )


class _FailureTally:
    """Failures counted by reason, a few examples each, at most :data:`MAX_REASONS` reasons."""

    def __init__(self, examples: int) -> None:
        self.examples = examples
        self.total = 0
        self.by_reason: dict[str, dict[str, Any]] = {}

    def add(self, line: dict[str, Any], row: Any) -> None:
        self.total += 1
        key = reason_key(line)
        if key not in self.by_reason and len(self.by_reason) >= MAX_REASONS:
            key = "other"
        entry = self.by_reason.setdefault(
            key, {"reason": key, "count": 0, "retryable": None, "examples": []}
        )
        entry["count"] += 1
        retryable = line.get("retryable")
        if isinstance(retryable, bool):  # lines of older writers do not say
            entry["retryable"] = (entry["retryable"] or 0) + int(retryable)
        message = str(line.get("error") or line.get(INVALIDATED) or "")
        known = {example["message"] for example in entry["examples"]}
        if len(entry["examples"]) < self.examples and message not in known:
            entry["examples"].append({"row": row, "id": line.get("id"), "message": message})

    def result(self) -> dict[str, Any]:
        reasons = sorted(self.by_reason.values(), key=lambda e: (-e["count"], e["reason"]))
        return {"total": self.total, "reasons": shown(reasons, CELL_CHARS)}
