"""The finalize step: stored responses → ``parse()`` → the output dataset, stats and
``failed_requests.jsonl``.

Invariants:
- finalize reads only the run directory and sends nothing; running it again (say, after
  editing ``parse()``) rewrites the same files from the same responses;
- per request id the latest success wins over any failure line; rows come out in input order
  (shards in order, rows in order within a shard);
- memory is bounded by one shard's responses and parsed rows;
- ``parse()`` raising stops with an error naming the row; every response stays stored.
"""

from __future__ import annotations

import time
from typing import Any

from .llm import LLM
from .store import RunStore
from .types import PerformanceStats, RunStats

OUTPUT_STATS = "output/stats.json"
FAILED = "failed_requests.jsonl"


class ParseError(RuntimeError):
    """``parse()`` raised; the message names the row. Responses stay stored."""


class IncompleteRunError(RuntimeError):
    """``require_all_responses`` is on and some requests failed; everything else is stored."""


def latest_responses(store: RunStore, shard: str) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in store.iter_records(f"responses/{shard}.*jsonl"):
        key = record.get("id")
        previous = latest.get(key)
        if previous is None or "content" in record or "content" not in previous:
            latest[key] = record
    return latest


def _response_validator(llm: LLM):
    model = llm.response_format
    if model is None:
        return None
    from pydantic import ValidationError

    def validate(content: str) -> tuple[Any, str | None]:
        try:
            return model.model_validate_json(content), None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "response"
            return None, f"content does not match {model.__name__}: {where}: {first.get('msg')}"

    return validate


def schema_problem(llm: LLM):
    """``content -> error or None`` for the online runner (``None`` when no response_format)."""
    validate = _response_validator(llm)
    if validate is None:
        return None
    return lambda content: validate(content)[1]


def _rows_of(index: int, parsed: Any) -> list[dict[str, Any]]:
    if parsed is None:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    rows = []
    for item in items:
        if hasattr(item, "model_dump"):
            item = item.model_dump(mode="json")
        if not isinstance(item, dict):
            raise ParseError(
                f"parse() on row {index} returned {type(item).__name__}: expected a dict, a "
                "pydantic model or a list of them"
            )
        rows.append(item)
    return rows


def _table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key in row:
            if key not in columns:
                columns[key] = []
    for key, values in columns.items():
        values.extend(row.get(key) for row in rows)
    try:
        return pa.table({key: pa.array(values) for key, values in columns.items()})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ParseError(f"parse() returned values of mixed types in one column: {exc}") from None


def _write_table(store: RunStore, rel: str, table) -> None:
    import pyarrow as pa

    with store.atomic_writer(rel) as handle:
        with pa.ipc.new_stream(handle, table.schema) as writer:
            writer.write_table(table)


def finalize_run(
    store: RunStore,
    manifest: dict[str, Any],
    llm: LLM,
    session: dict[str, Any] | None = None,
) -> RunStats:
    """Parse every shard, write ``output/`` and ``failed_requests.jsonl``; return the stats.

    ``session`` carries what only the caller knows (requests sent in this call, timings)."""
    validate = _response_validator(llm)
    stats = RunStats()
    failed_lines = 0
    outputs = []
    with store.atomic_writer(FAILED) as failed_file:
        for shard in manifest["shards"]:
            name = shard["name"]
            latest = latest_responses(store, name)
            rows: list[dict[str, Any]] = []
            for request in store.iter_lines(f"requests/{name}.jsonl"):
                stats.request_stats.total += 1
                record = latest.get(request["id"])
                error = None
                if record is None:
                    error = "no response yet (the request was never completed)"
                elif "content" not in record:
                    error = record.get("error", "failed")
                if record is not None:
                    used = record.get("usage") or [0, 0]
                    wasted = record.get("wasted") or [0, 0]
                    stats.token_usage.input += used[0] + wasted[0]
                    stats.token_usage.output += used[1] + wasted[1]
                    stats.cost_info.total_cost += record.get("cost") or 0.0
                    if record.get("reused_from"):
                        stats.cost_info.cached_cost += record.get("cost") or 0.0
                response: Any = None
                if error is None:
                    response = record["content"]
                    if validate is not None:
                        response, error = validate(response)
                if error is not None:
                    stats.request_stats.failed += 1
                    failed_file.write(_failure_line(request, record, error))
                    failed_lines += 1
                    continue
                stats.request_stats.succeeded += 1
                try:
                    parsed = llm.parse(request["input"], response)
                except Exception as exc:
                    raise ParseError(
                        f"parse() raised on row {request['row']}: {type(exc).__name__}: {exc}. "
                        f"Every response is stored in {store.uri}: fix parse() and call again; "
                        "no request will be sent"
                    ) from exc
                rows.extend(_rows_of(request["row"], parsed))
            rel = f"output/data-{name}.arrow"
            _write_table(store, rel, _table(rows))
            outputs.append(rel)
    if not failed_lines:
        store.remove(FAILED)
    session = session or {}
    stats.request_stats.cached = session.get("cached", 0)
    stats.request_stats.attempts = session.get("sent", 0)
    stats.request_stats.rate_limited = session.get("rate_limited", 0)
    prices = session.get("prices")
    if prices is not None:
        stats.cost_info.input_cost_per_million = prices.input
        stats.cost_info.output_cost_per_million = prices.output
    stats.cost_info.batch_discount = manifest["mode"] == "batch"
    stats.performance_stats = _performance(session)
    store.write_json(
        OUTPUT_STATS,
        {
            **stats.to_dict(),
            "outputs": outputs,
            "parse_fingerprint": llm.parse_fingerprint(),
            "failed": failed_lines,
            "finalized_at": time.time(),
        },
    )
    return stats


def _failure_line(request: dict[str, Any], record: dict[str, Any] | None, error: str) -> bytes:
    import orjson

    line = {
        "id": request["id"],
        "row": request["row"],
        "messages": request["messages"],
        "error": error,
        "attempts": (record or {}).get("attempts", 0),
    }
    return orjson.dumps(line) + b"\n"


def _performance(session: dict[str, Any]) -> PerformanceStats:
    elapsed = session.get("elapsed") or 0.0
    succeeded = session.get("succeeded") or 0
    minutes = elapsed / 60.0 if elapsed else 0.0
    return PerformanceStats(
        total_time=elapsed,
        requests_per_minute=succeeded / minutes if minutes else 0.0,
        input_tokens_per_minute=(session.get("input_tokens") or 0) / minutes if minutes else 0.0,
        output_tokens_per_minute=(session.get("output_tokens") or 0) / minutes if minutes else 0.0,
        max_concurrent_requests=session.get("max_in_flight") or 0,
        mean_latency=(session.get("latency_total") or 0.0) / succeeded if succeeded else 0.0,
    )


def load_dataset(store: RunStore, outputs: list[str]):
    """The output as a ``datasets.Dataset`` (memory-mapped for local runs)."""
    import datasets
    import pyarrow as pa

    tables = []
    for rel in outputs:
        if store.local:
            tables.append(pa.ipc.open_stream(pa.memory_map(store.path(rel))).read_all())
        else:
            tables.append(pa.ipc.open_stream(store.read_bytes(rel)).read_all())
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return datasets.Dataset.from_dict({})
    table = pa.concat_tables(tables, promote_options="permissive")
    return datasets.Dataset(table)
