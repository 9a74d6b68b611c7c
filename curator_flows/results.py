"""The small typed results every step returns.

Invariants:
- every result is a plain ``dict`` (a ``TypedDict``) of JSON values: it goes into XCom, a
  Prefect result or a log line as is, and never holds rows, secrets or large lists;
- a result has the same keys whether or not the step had work to do: build one with
  :func:`make`, which starts from the type's defaults and refuses unknown keys.
"""

from __future__ import annotations

from typing import Any, TypedDict, TypeVar


class PrepareResult(TypedDict):
    run_uri: str
    run_id: str
    run_key: str | None
    mode: str
    backend: str
    model_name: str
    shards: list[str]
    rows: int
    requests: int
    #: responses copied from earlier runs of the same request family (never sent again)
    reused_responses: int
    #: requests without a successful response when prepare returned
    pending: int
    #: whether this call wrote the run (``False``: it existed and was re-opened)
    created: bool


class ShardResult(TypedDict):
    """What ``run_online`` / ``run_offline`` did to their shards in this call."""

    run_uri: str
    run_id: str
    shards: list[str]
    pending_before: int
    #: HTTP attempts (or generations) in this call, retries included
    sent: int
    succeeded: int
    failed: int
    rate_limited: int
    input_tokens: int
    output_tokens: int
    cost: float
    elapsed: float
    max_in_flight: int
    latency_total: float
    #: the limits the call ended with (configured or learned), per minute
    limits: dict[str, Any]
    #: mode-specific figures (offline: chunks, engine_seconds, generate_seconds)
    details: dict[str, Any]


class BatchShardState(TypedDict):
    """The state of one shard of a batch run after ``submit``, ``poll``, ``collect`` or
    ``advance``. ``state`` is one of ``submitted`` (poll it), ``ended`` (collect it),
    ``collected``, ``reconciling`` (ask again later), ``queued`` (the provider's batch queue
    has no room for it yet: ask again after ``wait_seconds``; a ``poll`` says ``done`` once it
    may be submitted), ``waiting_for_budget`` (``max_cost`` holds no room for this batch until
    other batches of the run are collected: submit again later), ``done`` or ``cancelled``."""

    run_uri: str
    run_id: str
    shard: str
    state: str
    #: the shard needs nothing more (advance) / the batch ended (poll)
    done: bool
    round: int | None
    attempt: int | None
    batch_id: str | None
    status: str | None
    requests: int
    request_counts: dict[str, int]
    #: when the current campaign's first batch was submitted (epoch s): deadlines anchor here
    submitted_at: float | None
    #: when the current round's batch was submitted (epoch s): a provider's completion window
    #: (24 h) runs from here, so a batch's own deadline anchors here
    round_submitted_at: float | None
    created: bool
    reattached: bool
    succeeded: int
    failed: int
    retry: int
    resubmit: bool
    #: response lines ``collect`` appended in this call (0 when it had already run)
    written: int
    pending: int | None
    #: seconds to wait before the next ``advance`` / ``poll`` (0 when it can go on at once)
    wait_seconds: float
    candidates: list[str]


class Statistics(TypedDict):
    token_usage: dict[str, Any]
    cost_info: dict[str, Any]
    request_stats: dict[str, Any]
    performance_stats: dict[str, Any]


class FinalizeResult(TypedDict):
    run_uri: str
    run_id: str
    #: where the dataset was published as Parquet (``None`` when not asked to publish)
    output_uri: str | None
    rows: int
    requests: int
    succeeded: int
    failed: int
    failed_requests_uri: str | None
    #: failed requests by reason (``http_500``, ``timeout``, ``parse_error``, ...)
    failures_by_reason: dict[str, int]
    statistics: Statistics
    #: the run's own output files (Arrow IPC), relative to the run URI
    outputs: list[str]
    #: the published asset (where its schema contract lives; ``output_uri`` less a partition)
    asset_uri: str | None
    #: the Hive partition published (``{"date": "2026-12-04"}``), if any
    partition: dict[str, str] | None
    #: rows published (``rows`` less the rows left out by the schema contract)
    published_rows: int | None
    #: rows left out of the publish because a value does not fit the schema contract, and the
    #: input rows (requests) they came from: count the latter against a failed-fraction gate
    invalid_rows: int
    invalid_requests: int
    invalid_rows_uri: str | None
    #: the asset's schema contract: ``uri``, ``generation``, ``fingerprint``, ``columns``
    schema: dict[str, Any] | None


class CancelResult(TypedDict):
    run_uri: str
    run_id: str
    cancelled_at: float
    batches: list[dict[str, Any]]
    errors: list[dict[str, Any]]


class EstimateResult(TypedDict):
    run_uri: str
    run_id: str
    model_name: str
    requests: int
    pending: int
    estimated_input_tokens: int
    estimated_output_tokens: int
    input_cost_per_million: float | None
    output_cost_per_million: float | None
    #: dollars spent by this run so far (every step, every shard)
    spent: float
    #: dollars held for work in flight (running steps' requests, batches not yet collected)
    reserved: float
    #: projected dollars for the pending requests
    projected_cost: float
    max_cost: float | None
    #: ``max_cost - spent - reserved - projected_cost`` (``None`` without a budget)
    headroom: float | None
    within_budget: bool


class StatusResult(TypedDict):
    run_uri: str
    run_id: str
    mode: str
    backend: str
    model_name: str
    finalized: bool
    cancelled: bool
    totals: dict[str, Any]
    shards: list[dict[str, Any]]


_DEFAULTS: dict[type, dict[str, Any]] = {
    PrepareResult: {"run_key": None, "reused_responses": 0, "pending": 0, "created": False},
    ShardResult: {
        "pending_before": 0,
        "sent": 0,
        "succeeded": 0,
        "failed": 0,
        "rate_limited": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": 0.0,
        "elapsed": 0.0,
        "max_in_flight": 0,
        "latency_total": 0.0,
        "limits": {},
        "details": {},
    },
    BatchShardState: {
        "done": False,
        "round": None,
        "attempt": None,
        "batch_id": None,
        "status": None,
        "requests": 0,
        "request_counts": {},
        "submitted_at": None,
        "round_submitted_at": None,
        "created": False,
        "reattached": False,
        "succeeded": 0,
        "failed": 0,
        "retry": 0,
        "resubmit": False,
        "written": 0,
        "pending": None,
        "wait_seconds": 0.0,
        "candidates": [],
    },
    FinalizeResult: {
        "output_uri": None,
        "failed_requests_uri": None,
        "failures_by_reason": {},
        "outputs": [],
        "asset_uri": None,
        "partition": None,
        "published_rows": None,
        "invalid_rows": 0,
        "invalid_requests": 0,
        "invalid_rows_uri": None,
        "schema": None,
    },
    CancelResult: {"batches": [], "errors": []},
    EstimateResult: {"max_cost": None, "headroom": None, "within_budget": True, "reserved": 0.0},
    StatusResult: {"cancelled": False, "finalized": False},
}

R = TypeVar("R")


def make(kind: type[R], **values: Any) -> R:
    """A ``kind`` result: its defaults overlaid with ``values``; every key of ``kind`` present,
    no other key allowed (raises ``KeyError`` naming strays or missing keys: a library bug)."""
    keys = set(kind.__annotations__)
    stray = set(values) - keys
    if stray:
        raise KeyError(f"{kind.__name__} has no key(s) {sorted(stray)}")
    out = {**_DEFAULTS.get(kind, {}), **values}
    missing = keys - set(out)
    if missing:
        raise KeyError(f"{kind.__name__} needs key(s) {sorted(missing)}")
    return {key: out[key] for key in kind.__annotations__}  # type: ignore[return-value]
