"""The step API: what ``LLM.__call__`` composes in-process and what Airflow operators and
Prefect tasks call one at a time, in separate processes, hours apart.

Invariants:
- inputs and outputs of every step are small JSON-serialisable dicts (run URI, shard names,
  counts, statuses), never rows; a run is re-opened from its URI alone;
- every step is idempotent: running it again, or after a crash at any line, converges to the
  same run directory (pending work = requests without a successful response line);
- secrets are accepted as step arguments or read from the environment, never stored.
"""

from __future__ import annotations

import time
from typing import Any

from .config import BackendConfig
from .finalize import OUTPUT_STATS, IncompleteRunError, finalize_run, load_dataset
from .llm import LLM, llm_from_spec
from .prepare import prepare_run
from .store import MANIFEST, RunStore
from .types import CuratorResponse, RunStats

RunRef = str | dict[str, Any]
DEFAULT_CONCURRENCY = 256


def run_uri(run: RunRef) -> str:
    return run["run_uri"] if isinstance(run, dict) else str(run)


def open_run(run: RunRef) -> tuple[RunStore, dict[str, Any]]:
    """The store and manifest of a prepared run."""
    store = RunStore(run_uri(run))
    if not store.exists(MANIFEST):
        raise FileNotFoundError(f"no prepared run at {store.uri} (manifest.json missing)")
    return store, store.read_json(MANIFEST)


def _llm_for(manifest: dict[str, Any], llm: LLM | None) -> LLM:
    return llm if llm is not None else llm_from_spec(manifest["llm"])


def _summary(store: RunStore, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_uri": store.uri,
        "run_id": manifest["run_id"],
        "mode": manifest["mode"],
        "shards": [s["name"] for s in manifest["shards"]],
        "rows": manifest["rows"],
        "requests": manifest["requests"],
    }


def prepare(llm: LLM, dataset: Any = None, working_dir: str | None = None) -> dict[str, Any]:
    """Write the request shards and manifest (idempotent); return the run's summary."""
    store, manifest = prepare_run(llm, dataset, working_dir)
    return _summary(store, manifest)


def _shard_names(manifest: dict[str, Any], shard: str | list[str] | None) -> list[str]:
    names = [s["name"] for s in manifest["shards"]]
    if shard is None:
        return names
    wanted = [shard] if isinstance(shard, str) else list(shard)
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise ValueError(f"unknown shard(s) {unknown}; this run has {names}")
    return wanted


def build_online_backend(llm: LLM, config: BackendConfig, concurrency: int):
    schema = llm.schema()
    max_tokens = config.params.max_tokens
    common = dict(
        base_url=config.base_url, api_key=config.api_key(), request_timeout=config.request_timeout
    )
    if llm.backend == "openai":
        from .backends.openai import OpenAIChatBackend, request_template

        template = request_template(llm.model_name, llm.generation_params, schema, max_tokens)
        return OpenAIChatBackend(template, pool_size=concurrency, **common)
    if llm.backend == "anthropic":
        from .backends.anthropic import AnthropicMessagesBackend

        return AnthropicMessagesBackend(
            llm.model_name,
            llm.generation_params,
            schema,
            max_tokens,
            pool_size=concurrency,
            **common,
        )
    if llm.backend == "litellm":
        from .backends.litellm import LiteLLMBackend

        return LiteLLMBackend(llm.model_name, llm.generation_params, schema, max_tokens, **common)
    raise ValueError(f"backend {llm.backend!r} has no online mode")


def _output_estimate(llm: LLM) -> int:
    params = llm.generation_params
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(params.get(key), int):
            return params[key]
    if llm.config.params.max_tokens:
        return llm.config.params.max_tokens
    if llm.backend == "anthropic":  # always sent; Anthropic counts it against OTPM up front
        from .backends.anthropic import DEFAULT_MAX_TOKENS

        return DEFAULT_MAX_TOKENS
    return 256


def run_online(
    run: RunRef,
    shard: str | list[str] | None = None,
    *,
    llm: LLM | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Send the pending requests of ``shard`` (a name, a list, or ``None`` for all) and append
    their responses; return counts and timings."""
    from .cost import resolve_prices
    from .finalize import schema_problem
    from .online import OnlineRunner, count_pending, done_ids, pending_items, run_sync
    from .progress import Progress
    from .ratelimit import RateLimiter

    store, manifest = open_run(run)
    if manifest["mode"] != "online":
        raise ValueError(f"run {manifest['run_id']} is a {manifest['mode']} run, not online")
    llm = _llm_for(manifest, llm)
    config = llm.config
    if api_key is not None:
        config = BackendConfig.from_user(config.mode, {**llm.backend_params, "api_key": api_key})
    params = config.params
    names = _shard_names(manifest, shard)
    sizes = {s["name"]: s["requests"] for s in manifest["shards"]}
    done = done_ids(store, names)
    pending = count_pending(sizes, done)
    concurrency = params.max_concurrent_requests or DEFAULT_CONCURRENCY
    prices = resolve_prices(llm.model_name, params.in_mtok_cost, params.out_mtok_cost)
    result: dict[str, Any] = {"run_uri": store.uri, "shards": names, "pending_before": pending}
    if pending == 0:
        return {**result, "sent": 0, "succeeded": 0, "failed": 0, "elapsed": 0.0}
    runner = OnlineRunner(
        store,
        build_online_backend(llm, config, concurrency),
        RateLimiter(
            params.max_requests_per_minute,
            params.max_tokens_per_minute,
            params.max_input_tokens_per_minute,
            params.max_output_tokens_per_minute,
        ),
        concurrency=min(concurrency, pending),
        concurrency_is_explicit=params.max_concurrent_requests is not None,
        max_retries=params.max_retries,
        pause_on_rate_limit=params.seconds_to_pause_on_rate_limit,
        invalid_finish_reasons=tuple(params.invalid_finish_reasons),
        validate=schema_problem(llm),
        prices=prices,
        output_estimate=_output_estimate(llm),
        progress=Progress(f"{llm.model_name} {manifest['run_id']}", pending, params.progress),
    )
    summary = run_sync(runner, pending_items(store, names, done))
    return {**result, **summary.to_dict()}


def finalize(
    run: RunRef, *, llm: LLM | None = None, session: dict[str, Any] | None = None
) -> CuratorResponse:
    """Parse stored responses into the output dataset; return the :class:`CuratorResponse`.

    Raises :class:`IncompleteRunError` (after writing everything) when ``require_all_responses``
    is on and requests failed."""
    from .cost import resolve_prices

    store, manifest = open_run(run)
    llm = _llm_for(manifest, llm)
    session = dict(session or {})
    params = llm.config.params
    session.setdefault(
        "prices",
        resolve_prices(
            llm.model_name, params.in_mtok_cost, params.out_mtok_cost, manifest["mode"] == "batch"
        ),
    )
    stats = finalize_run(store, manifest, llm, session)
    output = store.read_json(OUTPUT_STATS)
    response = _response(store, manifest, llm, stats, output["outputs"], session.get("limits"))
    _check_complete(llm, store, stats)
    return response


def _check_complete(llm: LLM, store: RunStore, stats: RunStats) -> None:
    if llm.config.require_all_responses and stats.request_stats.failed:
        raise IncompleteRunError(
            f"{stats.request_stats.failed} of {stats.request_stats.total} requests failed "
            f"(require_all_responses=True); they are listed in {store.uri}/failed_requests.jsonl; "
            "every successful response is stored, so calling again sends only the failed ones"
        )


def _response(
    store: RunStore,
    manifest: dict[str, Any],
    llm: LLM,
    stats: RunStats,
    outputs: list[str],
    limits: dict[str, Any] | None = None,
) -> CuratorResponse:
    limits = limits or {}
    params = llm.config.params
    failed_path = f"{store.uri}/failed_requests.jsonl" if stats.request_stats.failed else None
    return CuratorResponse(
        dataset=load_dataset(store, outputs),
        model_name=llm.model_name,
        cache_dir=store.uri,
        failed_requests_path=failed_path,
        viewer_url=None,
        batch_mode=manifest["mode"] == "batch",
        max_requests_per_minute=getattr(params, "max_requests_per_minute", None)
        or limits.get("max_requests_per_minute"),
        max_tokens_per_minute=getattr(params, "max_tokens_per_minute", None)
        or limits.get("max_tokens_per_minute"),
        token_usage=stats.token_usage,
        cost_info=stats.cost_info,
        request_stats=stats.request_stats,
        performance_stats=stats.performance_stats,
        metadata={
            "run_id": manifest["run_id"],
            "run_uri": store.uri,
            "mode": manifest["mode"],
            "backend": manifest["backend"],
            "shards": len(manifest["shards"]),
        },
    )


def _finished_output(store: RunStore, llm: LLM) -> dict[str, Any] | None:
    """The stored output when it is complete and was parsed by the same ``parse()``."""
    if not store.exists(OUTPUT_STATS):
        return None
    output = store.read_json(OUTPUT_STATS)
    if output.get("parse_fingerprint") != llm.parse_fingerprint() or output.get("failed"):
        return None
    return output


def run_in_process(llm: LLM, dataset: Any, working_dir: str | None) -> CuratorResponse:
    """prepare → (run_online | batch steps | run_offline) → finalize, in this process."""
    started = time.monotonic()
    summary = prepare(llm, dataset, working_dir)
    store, manifest = open_run(summary)
    done = _finished_output(store, llm)
    if done is not None:
        stats = RunStats.from_dict(done)
        stats.request_stats.cached = stats.request_stats.succeeded
        stats.request_stats.attempts = 0
        return _response(store, manifest, llm, stats, done["outputs"])
    if manifest["requests"] == 0:
        return finalize(summary, llm=llm)
    if llm.mode == "online":
        session = run_online(summary, llm=llm)
    elif llm.mode == "batch":
        from .batch import run_batch_in_process

        session = run_batch_in_process(summary, llm)
    else:
        from .offline import run_offline

        session = run_offline(summary, llm=llm)
    session["elapsed"] = session.get("elapsed") or time.monotonic() - started
    session["cached"] = manifest["requests"] - session.get("pending_before", 0)
    return finalize(summary, llm=llm, session=session)


def run_offline(
    run: RunRef, shard: str | list[str] | None = None, *, llm: LLM | None = None
) -> dict[str, Any]:
    """Generate the pending requests of ``shard`` with vLLM on this worker (see
    :mod:`curator_flows.offline`)."""
    from .offline import run_offline as _run_offline

    return _run_offline(run, shard, llm=llm)


# ----------------------------------------------------------------------------- batch steps
# submit → poll (until done) → collect → (submit again while collect says "resubmit") → finalize.
# See curator_flows/batch/ for the record format, reconciliation and the invariants.


def _batch_context(run: RunRef, llm: LLM | None, api_key: str | None):
    from .batch.context import Context

    store, manifest = open_run(run)
    return Context(store, manifest, llm, api_key)


def submit(
    run: RunRef,
    shard: str,
    *,
    llm: LLM | None = None,
    api_key: str | None = None,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Create the provider batch of ``shard``'s pending requests, unless one exists.

    Writes the intent record first; re-attaches to a batch an earlier crashed call created.
    ``retry_failed``: also start a new campaign for requests that failed finally (or were
    cancelled). Returns ``{"run_uri", "run_id", "shard", "state", "round", "attempt",
    "batch_id", "status", "requests", "created", ...}`` where ``state`` is ``submitted`` (poll
    it), ``ended`` (collect it), ``reconciling`` (call again later), ``done`` or ``cancelled``."""
    from .batch.steps import submit_shard

    return submit_shard(_batch_context(run, llm, api_key), shard, retry_failed=retry_failed)


def poll(run: RunRef, shard: str, *, api_key: str | None = None) -> dict[str, Any]:
    """One non-blocking status check of ``shard``'s current batch (a sensor's poke).

    Returns ``{..., "done": bool, "status", "state", "batch_id", "request_counts"}``; ``done``
    means the batch ended and ``collect`` can run. Needs no LLM class, only the run URI."""
    from .batch.steps import poll_shard

    return poll_shard(_batch_context(run, None, api_key), shard)


def collect(
    run: RunRef, shard: str, *, llm: LLM | None = None, api_key: str | None = None
) -> dict[str, Any]:
    """Stream the ended batch's results into ``responses/<shard>.jsonl`` (idempotent).

    Returns ``{..., "succeeded", "failed", "retry", "resubmit": bool, "done": bool}``:
    ``resubmit`` means requests are still owed and ``submit`` starts the next round."""
    from .batch.collect import collect_shard

    return collect_shard(_batch_context(run, llm, api_key), shard)


def cancel(run: RunRef, *, api_key: str | None = None) -> dict[str, Any]:
    """Cancel every live batch of the run and stop further rounds (a later ``submit(...,
    retry_failed=True)`` or a new ``LLM(...)(dataset)`` call resumes). Partial results are
    still collected. Returns ``{"run_uri", "run_id", "cancelled_at", "batches", "errors"}``."""
    from .batch.steps import cancel_run

    return cancel_run(_batch_context(run, None, api_key))


def status(run: RunRef) -> dict[str, Any]:
    """Per-shard state, counts and cost so far of any run (online, batch, offline); reads only
    the run directory. Returns ``{"run_uri", "run_id", "mode", "finalized", "totals",
    "shards": [{"shard", "state", "requests", "succeeded", "failed", "pending", "cost", ...}]}``."""
    from .batch.status import run_status

    store, manifest = open_run(run)
    return run_status(store, manifest)
