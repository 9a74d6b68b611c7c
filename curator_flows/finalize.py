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
from typing import TYPE_CHECKING, Any

from .acceptance import Acceptance
from .credentials import Credentials
from .errors import IncompleteRunError, ParseError
from .ledger import run_totals
from .results import FinalizeResult, make
from .rowcodec import decode as decode_input
from .runs import RunRef, llm_for, open_run
from .store import FAILED, OUTPUT_STATS, RunStore
from .types import CuratorResponse, PerformanceStats, RunStats

if TYPE_CHECKING:
    from .llm import LLM

__all__ = ["FAILED", "OUTPUT_STATS", "finalize", "finalize_run", "load_response"]


def latest_responses(store: RunStore, shard: str) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in store.iter_records(f"responses/{shard}.*jsonl"):
        key = record.get("id")
        previous = latest.get(key)
        if previous is None or "content" in record or "content" not in previous:
            latest[key] = record
    return latest


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


def finalize_run(store: RunStore, manifest: dict[str, Any], llm: LLM) -> dict[str, Any]:
    """Parse every shard, write ``output/``, ``failed_requests.jsonl`` and ``output/stats.json``;
    return what ``stats.json`` holds."""
    from .cost import resolve_prices

    acceptance = Acceptance(llm)
    stats = RunStats()
    failed_lines = retryable_failures = 0
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
                    if record.get("reused_from") and "content" in record:
                        stats.cost_info.cached_cost += record.get("cost") or 0.0
                        stats.request_stats.cached += 1
                response: Any = None
                if error is None:
                    response, error = acceptance.validate(record["content"])
                if error is not None:
                    stats.request_stats.failed += 1
                    failed_file.write(_failure_line(request, record, error))
                    failed_lines += 1
                    if record is None or record.get("retryable", True):
                        retryable_failures += 1
                    continue
                stats.request_stats.succeeded += 1
                try:
                    parsed = llm.parse(decode_input(request["input"]), response)
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
    totals = run_totals(store)
    stats.request_stats.attempts = totals["sent"]
    stats.request_stats.rate_limited = totals["rate_limited"]
    params = llm.config.params
    prices = resolve_prices(
        llm.model_name, params.in_mtok_cost, params.out_mtok_cost, manifest["mode"] == "batch"
    )
    stats.cost_info.input_cost_per_million = prices.input
    stats.cost_info.output_cost_per_million = prices.output
    stats.cost_info.batch_discount = manifest["mode"] == "batch"
    stats.performance_stats = _performance(totals)
    rows_out = sum(_row_count(store, rel) for rel in outputs)
    output = {
        **stats.to_dict(),
        "outputs": outputs,
        "rows": rows_out,
        "parse_fingerprint": llm.parse_fingerprint(),
        "limits": totals.get("limits") or {},
        "failed": failed_lines,
        "retryable_failures": retryable_failures,
        "finalized_at": time.time(),
    }
    store.write_json(OUTPUT_STATS, output)
    return output


def _row_count(store: RunStore, rel: str) -> int:
    import pyarrow as pa

    if store.local:
        reader = pa.ipc.open_stream(pa.memory_map(store.path(rel)))
    else:
        reader = pa.ipc.open_stream(store.read_bytes(rel))
    return sum(batch.num_rows for batch in reader)


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


def _performance(totals: dict[str, Any]) -> PerformanceStats:
    elapsed = totals.get("total_time") or 0.0
    succeeded = totals.get("succeeded") or 0
    minutes = elapsed / 60.0 if elapsed else 0.0
    return PerformanceStats(
        total_time=elapsed,
        requests_per_minute=succeeded / minutes if minutes else 0.0,
        input_tokens_per_minute=(totals.get("input_tokens") or 0) / minutes if minutes else 0.0,
        output_tokens_per_minute=(totals.get("output_tokens") or 0) / minutes if minutes else 0.0,
        max_concurrent_requests=totals.get("max_in_flight") or 0,
        mean_latency=(totals.get("latency_total") or 0.0) / succeeded if succeeded else 0.0,
    )


def statistics_of(output: dict[str, Any]) -> dict[str, Any]:
    """The four statistics blocks of a ``stats.json``."""
    return {k: output[k] for k in RunStats().to_dict()}


def check_complete(store: RunStore, output: dict[str, Any], require_all: bool) -> None:
    """Raise :class:`IncompleteRunError` (after everything was written) when every request of a
    non-empty run failed, or when ``require_all`` and any failed."""
    request_stats = output["request_stats"]
    failed, total = request_stats["failed"], request_stats["total"]
    if not failed:
        return
    where = f"{store.uri}/{FAILED}"
    retryable = bool(output.get("retryable_failures"))
    if failed == total:
        raise IncompleteRunError(
            f"every request of the run failed ({failed} of {total}); they are listed in {where} "
            "with their reasons",
            failed=failed,
            total=total,
            failed_requests_uri=where,
            retryable=retryable,
        )
    if require_all:
        raise IncompleteRunError(
            f"{failed} of {total} requests failed (require_all_responses=True); they are listed "
            f"in {where}; every successful response is stored, so running again sends only the "
            "failed ones",
            failed=failed,
            total=total,
            failed_requests_uri=where,
            retryable=retryable,
        )


def finalize(
    run: RunRef,
    *,
    llm: LLM | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
    output_uri: str | None = None,
) -> FinalizeResult:
    """Parse the stored responses into the run's output (and publish it to ``output_uri``);
    see :func:`curator_flows.steps.finalize`."""
    credentials = Credentials.coerce(credentials)
    store, manifest = open_run(run, credentials.storage_options)
    llm = llm_for(manifest, llm)
    output = finalize_run(store, manifest, llm)
    published = None
    if output_uri is not None:
        from .publish import publish

        published = publish(store, manifest, output, output_uri, credentials.storage_options)
    check_complete(store, output, llm.config.require_all_responses)
    return summary_of(store, manifest, output, published)


def summary_of(
    store: RunStore,
    manifest: dict[str, Any],
    output: dict[str, Any],
    output_uri: str | None = None,
) -> FinalizeResult:
    request_stats = output["request_stats"]
    return make(
        FinalizeResult,
        run_uri=store.uri,
        run_id=manifest["run_id"],
        output_uri=output_uri,
        rows=output["rows"],
        requests=request_stats["total"],
        succeeded=request_stats["succeeded"],
        failed=request_stats["failed"],
        failed_requests_uri=f"{store.uri}/{FAILED}" if request_stats["failed"] else None,
        statistics=statistics_of(output),
        outputs=list(output["outputs"]),
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


def load_response(
    run: RunRef,
    *,
    llm: LLM | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
) -> CuratorResponse:
    """The :class:`CuratorResponse` of a finalized run (the dataset memory-mapped when local)."""
    from .errors import RunNotFoundError

    credentials = Credentials.coerce(credentials)
    store, manifest = open_run(run, credentials.storage_options)
    if not store.exists(OUTPUT_STATS):
        raise RunNotFoundError(f"run {manifest['run_id']} is not finalized yet: call finalize")
    output = store.read_json(OUTPUT_STATS)
    stats = RunStats.from_dict(output)
    config = manifest.get("config") or {}
    limits = output.get("limits") or {}
    failed_path = f"{store.uri}/{FAILED}" if stats.request_stats.failed else None
    return CuratorResponse(
        dataset=load_dataset(store, output["outputs"]),
        model_name=manifest["model_name"],
        cache_dir=store.uri,
        failed_requests_path=failed_path,
        viewer_url=None,
        batch_mode=manifest["mode"] == "batch",
        max_requests_per_minute=config.get("max_requests_per_minute")
        or limits.get("max_requests_per_minute"),
        max_tokens_per_minute=config.get("max_tokens_per_minute")
        or limits.get("max_tokens_per_minute"),
        token_usage=stats.token_usage,
        cost_info=stats.cost_info,
        request_stats=stats.request_stats,
        performance_stats=stats.performance_stats,
        metadata={
            "run_id": manifest["run_id"],
            "run_uri": store.uri,
            "run_key": manifest.get("run_key"),
            "mode": manifest["mode"],
            "backend": manifest["backend"],
            "shards": len(manifest["shards"]),
            "rows": output.get("rows"),
        },
    )
