"""The finalize step: stored responses → ``parse()`` → the output dataset, stats and
``failed_requests.jsonl``.

Invariants:
- finalize reads only the run directory and sends nothing; running it again (say, after
  editing ``parse()``) rewrites the same files from the same responses;
- per request id the standing line decides, and the statistics charge what the lines cost,
  both under the one rule of :mod:`curator_flows.pending`: every paid line once (taken back or
  superseded too), a copy from a sibling run only while it stands; plus what a step's ledger
  paid beyond its lines (:func:`curator_flows.ledger.unlined`: a line a crash destroyed); rows
  come out in input order (shards in order, rows in order within a shard);
- every stored success is judged again by the current acceptance rule
  (:class:`~curator_flows.acceptance.Acceptance`); one it refuses is taken back with an
  invalidation line, so the request is pending again and the next run sends it; what the
  rule made of the accepted ones is recorded (``judged_fingerprint``, what a cache hit
  compares);
- requests with no standing answer (never answered, or taken back) make the run incomplete:
  :class:`~curator_flows.errors.IncompleteRunError` names their shards (``pending_shards``),
  raised after everything was written;
- values are stored under one policy, **widen the type, else store the column as JSON text**
  (:mod:`curator_flows.columns`); every shard file of a run has the same schema; a value not
  even JSON can hold raises :class:`~curator_flows.errors.OutputError` naming the row and the
  column;
- memory is bounded by one shard's responses and parsed rows;
- ``parse()`` raising on a row skips that row (as Curator does): it is listed in
  ``failed_requests.jsonl`` with the exception and counted as failed, its paid response stays
  stored and is not pending, so a call with a fixed ``parse()`` re-parses it without sending;
  the first few are logged. Such failures are not retryable (the same code fails the same way);
- ``return_completions_object``: ``parse()`` receives the stored provider answer
  (``completion``), or the OpenAI chat completion shape of the stored content when a line has
  none;
- ``cost_info.projected_remaining_cost`` estimates what sending the requests that have no
  standing answer would cost (prompt-token estimate and the output budget per request).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .acceptance import Acceptance, Judged
from .backends.factory import output_estimate
from .credentials import Credentials
from .errors import (
    ConfigError,
    CorruptRunError,
    IncompleteRunError,
    ParseError,
    TooManyFailuresError,
)
from .failures import (
    NOT_SENT,
    PARSE_ERROR,
    TAKEN_BACK,
    describe_reasons,
    failure_summary,
    reason_of,
)
from .fingerprint import digest
from .ledger import read_ledgers, run_totals, unlined
from .pending import INVALIDATED, Charge, invalidation_line, iter_requests, read_shard
from .results import FinalizeResult, make
from .rowcodec import decode as decode_input
from .runs import RunRef, llm_for, open_run
from .store import FAILED, OUTPUT_STATS, RunStore
from .tokens import estimate_prompt_tokens
from .types import CuratorResponse, PerformanceStats, RunStats

if TYPE_CHECKING:
    from .llm import LLM

__all__ = ["finalize", "finalize_run", "load_response"]

log = logging.getLogger(__name__)
#: the share of a run's requests that may fail in an output ``finalize`` publishes
DEFAULT_MAX_FAILED_FRACTION = 0.01
#: parse() failures logged one by one per finalize; the rest are counted in one line
PARSE_FAILURES_LOGGED = 3


def _rows_of(index: int, parsed: Any, kinds: set[Any] | None = None) -> list[dict[str, Any]]:
    """The rows ``parse()`` returned for input row ``index``; ``kinds`` collects the class of
    each (a pydantic model's, or ``dict``)."""
    if parsed is None:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    rows = []
    for item in items:
        if kinds is not None:
            kinds.add(type(item))
        if hasattr(item, "model_dump") and not isinstance(item, dict):
            item = item.model_dump()
        if not isinstance(item, dict):
            raise ParseError(
                f"parse() on row {index} returned {type(item).__name__}: expected a dict, a "
                "pydantic model or a list of them"
            )
        if not all(type(key) is str for key in item):
            bad = next(key for key in item if type(key) is not str)
            raise ParseError(
                f"parse() on row {index} returned a row with the column name {bad!r} "
                f"({type(bad).__name__}): column names must be strings"
            )
        rows.append(item)
    return rows


class _Digesting:
    """A binary sink that hashes the bytes passing through it to ``handle``."""

    closed = False

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.hash = hashlib.blake2b(digest_size=16)

    def write(self, data: Any) -> int:
        self.hash.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def tell(self) -> int:
        return self.handle.tell()


def _write_table(store: RunStore, rel: str, table) -> str:
    """Write ``table`` to ``rel`` (Arrow IPC stream); return the digest of the bytes written."""
    import pyarrow as pa

    with store.atomic_writer(rel) as handle:
        sink = _Digesting(handle)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return sink.hash.hexdigest()


_REFINALIZE = "finalize the run again to rewrite it from the stored responses (nothing is sent)"


def _read_table(store: RunStore, rel: str):
    """An output file, whole; one that is missing or damaged raises
    :class:`~curator_flows.errors.CorruptRunError` (finalize rewrites it)."""
    import pyarrow as pa

    try:
        with store.arrow_stream(rel) as reader:
            return reader.read_all()
    except FileNotFoundError:
        problem = "is missing"
    except pa.ArrowInvalid as exc:  # cut short or overwritten
        problem = f"is damaged ({exc})"
    raise CorruptRunError(f"{store.uri}/{rel} {problem}: {_REFINALIZE}")


def read_output(store: RunStore) -> dict[str, Any] | None:
    """The run's ``output/stats.json``, ``None`` before the first finalize; one that is
    damaged (not JSON, or not the shape finalize writes) raises
    :class:`~curator_flows.errors.CorruptRunError` saying to finalize again."""
    try:
        output = store.read_json_if_exists(OUTPUT_STATS)
    except CorruptRunError as exc:
        raise CorruptRunError(f"{exc}; {_REFINALIZE}") from None
    if output is None:
        return None
    outputs = output.get("outputs") if isinstance(output, dict) else None
    if not (
        isinstance(outputs, list)
        and all(isinstance(rel, str) for rel in outputs)
        and all(isinstance(output.get(key), dict) for key in RunStats().to_dict())
    ):
        raise CorruptRunError(
            f"{store.uri}/{OUTPUT_STATS} is damaged: not the statistics finalize writes; "
            f"{_REFINALIZE}"
        )
    return output


class _ShardOutput:
    """One shard's parsed output as written: its file, row count, column kinds and the digest
    of its bytes."""

    def __init__(self, name: str, rel: str, rows: int, kinds: dict[str, Any], digest: str):
        self.name, self.rel, self.rows, self.kinds = name, rel, rows, kinds
        self.digest = digest

    def origin(self, index: int) -> str:
        return f"{index} of shard {self.name}'s output"


@dataclass
class _Tally:
    """What finalize counts over the whole run."""

    stats: RunStats = field(default_factory=RunStats)
    failed: int = 0
    retryable: int = 0
    invalidated: int = 0
    unanswered: int = 0
    pending_shards: list[str] = field(default_factory=list)
    parse_failures: int = 0
    #: failed requests by reason key (:mod:`curator_flows.failures`)
    by_reason: dict[str, int] = field(default_factory=dict)
    #: the classes of the rows parse() returned (pydantic models, dict)
    row_kinds: set[Any] = field(default_factory=set)
    #: requests without a standing answer: how many, and their estimated prompt tokens
    resend_requests: int = 0
    resend_input_tokens: int = 0
    #: what the acceptance rule made of the stored successes it accepted
    judged: Judged = field(default_factory=Judged)
    #: what the lines of each step that tags its lines charge
    lines_by_step: dict[str, Charge] = field(default_factory=dict)


def _judge(record: dict[str, Any] | None, acceptance: Acceptance) -> tuple[Any, str | None, bool]:
    """``(response, error, taken_back)`` for a request's standing line: the validated response,
    or why there is none; ``taken_back`` when a stored success is refused now."""
    if record is None:
        return None, "no response yet (never sent or never answered): the next run sends it", False
    if INVALIDATED in record:
        return None, f"{record[INVALIDATED]}; the next run sends it again", False
    if "content" not in record:
        return None, record.get("error", "failed"), False
    response, error = acceptance.accept(record.get("finish_reason"), record["content"])
    if error is None:
        return response, None, False
    return (
        None,
        f"the stored response is refused by the current response_format or finish-reason rule "
        f"({error}); the next run sends it again",
        True,
    )


def _finalize_shard(
    store: RunStore,
    name: str,
    expected: int,
    llm: LLM,
    acceptance: Acceptance,
    tally: _Tally,
    failed_file,
    batch: bool,
) -> _ShardOutput:
    """Judge and parse one shard's requests in order; write its output file, its failure lines
    and the invalidation lines of answers refused now. Statistics charge what the shard's
    lines cost under the rule of :mod:`curator_flows.pending` (``batch``: its retry log too)."""
    from .columns import rows_table

    stats = tally.stats
    lines = read_shard(store, name, keep=True, retries=batch)
    charge = lines.charge
    stats.cost_info.total_cost += charge.cost
    stats.token_usage.input += charge.input_tokens
    stats.token_usage.output += charge.output_tokens
    stats.cost_info.cached_cost += lines.cached_cost
    stats.request_stats.cached += len(lines.copies)
    for step, paid in lines.by_step.items():
        tally.lines_by_step.setdefault(step, Charge()).add(
            paid.input_tokens, paid.output_tokens, paid.cost
        )
    latest = lines.lines
    rows: list[dict[str, Any]] = []
    origins: list[Any] = []
    refused: list[dict[str, Any]] = []
    unanswered = 0
    for request in iter_requests(store, name, expected):
        stats.request_stats.total += 1
        record = latest.get(request["id"])
        response, error, taken = _judge(record, acceptance)
        if error is not None:
            if taken:
                refused.append(invalidation_line(request["id"], error))
            stats.request_stats.failed += 1
            reason = _reason(record, taken)
            tally.by_reason[reason] = tally.by_reason.get(reason, 0) + 1
            failed_file.write(_failure_line(request, record, error, reason))
            tally.failed += 1
            tally.resend_requests += 1
            tally.resend_input_tokens += estimate_prompt_tokens(request["messages"])
            if record is None or taken or INVALIDATED in record:
                unanswered += 1
                tally.retryable += 1
            elif record.get("retryable", True):  # lines written before the flag: may be
                tally.retryable += 1
            continue
        tally.judged.add(request["id"], response)
        if llm.return_completions_object:
            response = _completion_of(llm, request, record)
        try:
            parsed = llm.parse(decode_input(request["input"]), response)
        except Exception as exc:  # noqa: BLE001 - whatever user code raises skips its row
            error = _parse_failure(store, request, exc, tally)
            stats.request_stats.failed += 1
            tally.by_reason[PARSE_ERROR] = tally.by_reason.get(PARSE_ERROR, 0) + 1
            failed_file.write(_failure_line(request, record, error, PARSE_ERROR))
            tally.failed += 1
            continue
        stats.request_stats.succeeded += 1
        produced = _rows_of(request["row"], parsed, tally.row_kinds)
        rows.extend(produced)
        origins.extend([request["row"]] * len(produced))
    if refused:
        with store.appender(f"responses/{name}") as appender:
            appender.append_many(refused)
        tally.invalidated += len(refused)
    if unanswered:
        tally.unanswered += unanswered
        tally.pending_shards.append(name)
    rel = f"output/data-{name}.arrow"
    table, kinds = rows_table(rows, origins)
    _write_origins(store, name, origins)
    return _ShardOutput(name, rel, table.num_rows, kinds, _write_table(store, rel, table))


def _reason(record: dict[str, Any] | None, taken: bool) -> str:
    """The reason key of a request without an accepted answer (:mod:`curator_flows.failures`)."""
    if record is None:
        return NOT_SENT
    if taken or INVALIDATED in record:
        return TAKEN_BACK
    return reason_of(record)


def _write_origins(store: RunStore, name: str, origins: list[Any]) -> None:
    """``output/origins-<shard>.arrow``: the input row of each output row (a publish names it
    when it leaves the row out)."""
    from array import array

    import pyarrow as pa

    # straight from a buffer: pa.array() of a list would import pandas
    rows = pa.Array.from_buffers(
        pa.int64(), len(origins), [None, pa.py_buffer(array("q", origins))]
    )
    _write_table(store, f"output/origins-{name}.arrow", pa.Table.from_arrays([rows], ["row"]))


def _completion_of(llm: LLM, request: dict[str, Any], record: dict[str, Any]) -> Any:
    """What ``parse()`` receives under ``return_completions_object``."""
    completion = record.get("completion")
    if completion is not None:
        return completion
    from .backends.openai import chat_completion_object

    return chat_completion_object(
        llm.model_name,
        request["id"],
        record["content"],
        record.get("finish_reason"),
        record.get("usage") or [0, 0],
    )


def _parse_failure(store: RunStore, request: dict[str, Any], exc: Exception, tally: _Tally) -> str:
    """The failure text of a row whose ``parse()`` raised (logged for the first few)."""
    error = (
        f"parse() raised on row {request['row']}: {type(exc).__name__}: {exc}; the response is "
        f"stored in {store.uri}: fix parse() and call again (nothing is sent)"
    )
    tally.parse_failures += 1
    if tally.parse_failures <= PARSE_FAILURES_LOGGED:
        log.warning("skipping row %s: %s", request["row"], error)
    return error


def finalize_run(store: RunStore, manifest: dict[str, Any], llm: LLM) -> dict[str, Any]:
    """Parse every shard, write ``output/``, ``failed_requests.jsonl`` and ``output/stats.json``;
    return what ``stats.json`` holds."""
    from .cost import resolve_prices

    acceptance = Acceptance(llm)
    batch = manifest["mode"] == "batch"
    tally = _Tally()
    stats = tally.stats
    with store.atomic_writer(FAILED) as failed_file:
        outputs = [
            _finalize_shard(
                store, shard["name"], shard["requests"], llm, acceptance, tally, failed_file, batch
            )
            for shard in manifest["shards"]
        ]
    if not tally.failed:
        store.remove(FAILED)
    if tally.parse_failures > PARSE_FAILURES_LOGGED:
        log.warning(
            "parse() raised on %d rows in all; they are listed in %s/%s",
            tally.parse_failures,
            store.uri,
            FAILED,
        )
    columns = _conform_shards(store, outputs)
    totals = run_totals(store)
    beyond = unlined(read_ledgers(store), tally.lines_by_step)  # paid, its line lost
    stats.cost_info.total_cost += beyond.cost
    stats.token_usage.input += beyond.input_tokens
    stats.token_usage.output += beyond.output_tokens
    stats.request_stats.attempts = totals["sent"]
    stats.request_stats.rate_limited = totals["rate_limited"]
    params = llm.config.params
    prices = resolve_prices(
        llm.model_name, params.in_mtok_cost, params.out_mtok_cost, manifest["mode"] == "batch"
    )
    stats.cost_info.input_cost_per_million = prices.input
    stats.cost_info.output_cost_per_million = prices.output
    stats.cost_info.projected_remaining_cost = prices.cost(
        tally.resend_input_tokens, tally.resend_requests * output_estimate(llm)
    )
    stats.token_usage.total = stats.token_usage.input + stats.token_usage.output
    stats.cost_info.batch_discount = manifest["mode"] == "batch"
    stats.performance_stats = _performance(totals)
    output = {
        **stats.to_dict(),
        "outputs": [shard.rel for shard in outputs],
        #: what the output files hold: equal fingerprints, byte-identical files
        "output_fingerprint": digest(*(f"{shard.rel}:{shard.digest}" for shard in outputs)),
        "rows": sum(shard.rows for shard in outputs),
        "columns": columns,
        "parse_fingerprint": llm.parse_fingerprint(),
        "judged_fingerprint": tally.judged.fingerprint(),
        "limits": totals.get("limits") or {},
        "failed": tally.failed,
        "retryable_failures": tally.retryable,
        "invalidated": tally.invalidated,
        "unanswered": tally.unanswered,
        "pending_shards": tally.pending_shards,
        "parse_failures": tally.parse_failures,
        "failures_by_reason": dict(sorted(tally.by_reason.items())),
        "declared_schema": _declared_schema(llm, tally.row_kinds),
        "finalized_at": time.time(),
    }
    store.write_json(OUTPUT_STATS, output)
    return output


def _declared_schema(llm: LLM, row_kinds: set[Any]) -> dict[str, Any] | None:
    """The output schema the code declares (see :mod:`curator_flows.output_schema`) as
    ``{"source", "arrow_schema"}``, or ``None``; ``row_kinds``: the classes parse() returned."""
    from .output_schema import declared_schema, schema_to_json

    returned = next(iter(row_kinds)) if len(row_kinds) == 1 else None
    if returned is not None and not hasattr(returned, "model_fields"):
        returned = None  # plain dicts declare nothing
    declared = declared_schema(llm, returned)
    if declared is None:
        return None
    schema, source = declared
    return {"source": source, "arrow_schema": schema_to_json(schema)}


def _conform_shards(store: RunStore, outputs: list[_ShardOutput]) -> dict[str, str]:
    """Give every shard file the run's joined schema (rewriting, one shard at a time, only the
    files that differ); return ``{column: Arrow type}`` for people."""
    from .columns import conform, join_schemas, schema_of

    target = join_schemas([shard.kinds for shard in outputs])
    for shard in outputs:
        if list(shard.kinds.items()) == list(target.items()):
            continue
        table = _read_table(store, shard.rel)
        conformed = conform(table, shard.kinds, target, shard.origin)
        shard.digest = _write_table(store, shard.rel, conformed)
    return {field.name: str(field.type) for field in schema_of(target)}


def _failure_line(
    request: dict[str, Any], record: dict[str, Any] | None, error: str, reason: str
) -> bytes:
    import orjson

    line = {
        "id": request["id"],
        "row": request["row"],
        "messages": request["messages"],
        "error": error,
        "reason": reason,
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
    non-empty run failed, when requests have no answer yet (never answered, or a stored answer
    the current model refuses: their shards are named), or when ``require_all`` and any failed.
    Every request listed as failed is pending: running again sends exactly those."""
    request_stats = output["request_stats"]
    failed, total = request_stats["failed"], request_stats["total"]
    if not failed:
        return
    where = f"{store.uri}/{FAILED}"
    log.warning(failure_summary(failed, total, output.get("failures_by_reason") or {}, where))
    shards = list(output.get("pending_shards") or [])
    unanswered = int(output.get("unanswered") or 0)
    retryable = bool(output.get("retryable_failures"))
    waiting = ""
    if unanswered:
        waiting = (
            f"; {unanswered} of them have no answer yet (never sent, or a stored answer the "
            f"current response_format refuses) in shard(s) {', '.join(shards)}"
        )
    common = dict(
        failed=failed,
        total=total,
        failed_requests_uri=where,
        pending_shards=shards,
    )
    if failed == total:
        raise IncompleteRunError(
            f"every request of the run failed ({failed} of {total}){waiting}; they are listed "
            f"in {where} with their reasons; running again sends them again",
            retryable=retryable,
            **common,
        )
    if unanswered:
        raise IncompleteRunError(
            f"the run is not complete: {failed} of {total} requests failed{waiting}; they are "
            f"listed in {where}; every accepted response is stored, so sending the pending "
            "shards again (or calling the LLM again) sends only these, then finalize",
            retryable=True,
            **common,
        )
    if require_all:
        raise IncompleteRunError(
            f"{failed} of {total} requests failed (require_all_responses=True); they are listed "
            f"in {where}; every accepted response is stored, so running again sends only the "
            "failed ones",
            retryable=retryable,
            **common,
        )


def check_publishable(
    store: RunStore,
    output: dict[str, Any],
    output_uri: str,
    max_failed_fraction: float,
    invalid_requests: int = 0,
) -> None:
    """Raise :class:`TooManyFailuresError` when more than ``max_failed_fraction`` of the run's
    requests failed, counting the requests whose rows the asset's schema contract refused
    (``invalid_requests``, never retryable: the same data fails the same way): nothing is
    published then, and the previous output stays as it was. Retryable when sending the
    retryable failures again could bring the share within it."""
    request_stats = output["request_stats"]
    failed = request_stats["failed"] + invalid_requests
    total = request_stats["total"]
    if not failed or failed <= max_failed_fraction * total:
        return
    by_reason = dict(output.get("failures_by_reason") or {})
    if invalid_requests:
        by_reason["schema_contract"] = by_reason.get("schema_contract", 0) + invalid_requests
    where = f"{store.uri}/{FAILED}"
    permanent = failed - int(output.get("retryable_failures") or 0)
    retryable = permanent <= max_failed_fraction * total
    if retryable:
        resume = (
            "sending again (the LLM call, the run_online / advance / run_offline steps, an "
            "Airflow retry of the whole task, a Prefect flow run with retry_failed=True) sends "
            "exactly these, then finalize publishes"
        )
    else:
        resume = (
            f"{permanent} of them fail whatever is sent again (a request the provider refuses, "
            "an answer the acceptance rule kept refusing, parse() raising): fix their cause and "
            "run again, or raise max_failed_fraction to publish what succeeded"
        )
    raise TooManyFailuresError(
        f"{failed} of {total} requests failed ({failed / total:.1%}, more than "
        f"max_failed_fraction={max_failed_fraction:g}): {describe_reasons(by_reason)}; nothing "
        f"was published to {output_uri} (an earlier output there stays as it was); the failed "
        f"requests are listed in {where}; {resume}",
        failed=failed,
        total=total,
        failures_by_reason=by_reason,
        max_failed_fraction=max_failed_fraction,
        failed_requests_uri=where,
        retryable=retryable,
    )


def _checked_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(
            f"max_failed_fraction must be a number from 0 to 1 (the share of requests allowed "
            f"to fail in a published output), got {value!r}"
        )
    return float(value)


def finalize(
    run: RunRef,
    *,
    llm: LLM | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
    output_uri: str | None = None,
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
    partition: dict[str, Any] | None = None,
    schema_evolution: str = "strict",
) -> FinalizeResult:
    """Parse the stored responses into the run's output (and publish it to ``output_uri``
    when at most ``max_failed_fraction`` of the requests failed); see
    :func:`curator_flows.steps.finalize`."""
    max_failed_fraction = _checked_fraction(max_failed_fraction)
    credentials = Credentials.coerce(credentials)
    if partition and output_uri is None:
        from .errors import ConfigError

        raise ConfigError("partition= names a partition of output_uri: pass output_uri too")
    store, manifest = open_run(run, credentials.storage_options)
    llm = llm_for(manifest, llm)
    output = finalize_run(store, manifest, llm)
    check_complete(store, output, llm.config.require_all_responses)  # publish only what is whole
    published = None
    if output_uri is not None:
        from .publish import publish

        check_publishable(store, output, output_uri, max_failed_fraction)
        published = publish(
            store,
            manifest,
            output,
            output_uri,
            credentials.storage_options,
            partition=partition,
            schema_evolution=schema_evolution,
            admit=lambda invalid: check_publishable(
                store, output, output_uri, max_failed_fraction, invalid_requests=invalid
            ),
        )
    return summary_of(store, manifest, output, published)


def summary_of(
    store: RunStore,
    manifest: dict[str, Any],
    output: dict[str, Any],
    published: tuple[str, dict[str, Any]] | None = None,
) -> FinalizeResult:
    """The step's result; ``published``: ``(directory, _SUCCESS marker)`` of the publish."""
    request_stats = output["request_stats"]
    where, marker = published if published is not None else (None, None)
    return make(
        FinalizeResult,
        run_uri=store.uri,
        run_id=manifest["run_id"],
        output_uri=where,
        rows=output["rows"],
        requests=request_stats["total"],
        succeeded=request_stats["succeeded"],
        failed=request_stats["failed"],
        failed_requests_uri=f"{store.uri}/{FAILED}" if request_stats["failed"] else None,
        failures_by_reason=dict(output.get("failures_by_reason") or {}),
        statistics=statistics_of(output),
        outputs=list(output["outputs"]),
        **_published_keys(marker),
    )


def _published_keys(marker: dict[str, Any] | None) -> dict[str, Any]:
    """What a publish adds to the result (``None`` / 0 without one)."""
    if marker is None:
        return {}
    schema = marker["schema"]
    return {
        "asset_uri": marker["asset_uri"],
        "partition": marker.get("partition"),
        "published_rows": marker["rows"],
        "invalid_rows": marker.get("invalid_rows") or 0,
        "invalid_requests": marker.get("invalid_requests") or 0,
        "invalid_rows_uri": marker.get("invalid_rows_uri"),
        "schema": {key: schema[key] for key in ("uri", "generation", "fingerprint", "columns")},
    }


def _read_output(store: RunStore, outputs: list[str]):
    """The output as one Arrow table, opened now: memory-mapped for local runs (a later
    finalize replaces the files, the mapped ones stay as they were), read for object stores."""
    import pyarrow as pa

    tables = [_read_table(store, rel) for rel in outputs]
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def _as_dataset(table):
    import datasets

    return datasets.Dataset.from_dict({}) if table is None else datasets.Dataset(table)


def load_response(
    run: RunRef,
    *,
    llm: LLM | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
) -> CuratorResponse:
    """The :class:`CuratorResponse` of a finalized run. The output is opened here (memory-mapped
    when local), so the response keeps it even if the run is finalized again later; the
    ``datasets.Dataset`` around it is built on first access, so a run that only needs the
    statistics never imports ``datasets``."""
    from .errors import RunNotFoundError

    credentials = Credentials.coerce(credentials)
    store, manifest = open_run(run, credentials.storage_options)
    output = read_output(store)
    if output is None:
        raise RunNotFoundError(f"run {manifest['run_id']} is not finalized yet: call finalize")
    return response_of(store, manifest, output)


def response_of(
    store: RunStore, manifest: dict[str, Any], output: dict[str, Any]
) -> CuratorResponse:
    """The :class:`CuratorResponse` of a finalized run whose manifest and ``stats.json``
    (``output``) the caller holds; the output files are opened here."""
    stats = RunStats.from_dict(output)
    config = manifest.get("config") or {}
    limits = output.get("limits") or {}
    failed_path = f"{store.uri}/{FAILED}" if stats.request_stats.failed else None
    table = _read_output(store, output["outputs"])  # this call's output, whatever comes later
    return CuratorResponse.lazy(
        lambda: _as_dataset(table),
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
