"""Prefect tasks, each a few lines around one call of :mod:`curator_flows.steps`.

Invariants:
- a task returns its step's small JSON result, persisted (the cached tasks) with Prefect's JSON
  serializer, never pickle; rows stay in the run directory;
- cache keys are the run id, the shard and the step (plus the batch cycle), never the flow-run
  id (:mod:`prefect_tasks.policy`): a new flow run after a crash gets what the crashed one
  finished and re-attaches to what it started; every step is idempotent besides, so a task
  that runs again (no shared result storage, ``refresh_cache``) converges to the same run;
- a task is retried (exponential backoff with jitter) only when the failure is transient;
- credentials are resolved per call and passed to the step: the key never reaches a result, a
  cache key, a log line, an artifact or the run directory.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from curator_flows import steps
from curator_flows.errors import BatchDeadlineError, BatchStepError, IncompleteRunError
from curator_flows.results import BatchShardState, FinalizeResult, PrepareResult, ShardResult

from .artifacts import PROGRESS_INTERVAL, BatchProgress, ShardProgress, asset_key
from .logs import forward_engine_logs
from .parameters import refuse_secrets
from .policy import cache_key_for, retry_options, retry_transient_finalize
from .resolve import CredentialsLike, load_block, resolve_credentials, resolve_llm

__all__ = [
    "collect_batch",
    "finalize",
    "finalize_task",
    "launch_offline_shard",
    "prepare",
    "run_offline_shard",
    "run_online_shard",
    "submit_batch",
    "wait_for_batch",
]

#: a batch not ended this long after it was submitted fails the wait: the provider expires a
#: batch by itself after its 24 h completion window (its partial results are then collected and
#: what is still owed goes out as a new batch, with a window of its own), so this only catches a
#: batch the provider forgot
BATCH_DEADLINE_SECONDS = 25 * 3600.0

_JSON = {"result_serializer": "json", "persist_result": True}
#: prepare and finalize always run (both are idempotent): their results are not persisted
#: (Prefect writes a result only under a cache key)
_UNCACHED = {"cache_policy": NO_CACHE, "result_serializer": "json", "persist_result": False}

forward_engine_logs()


def _llm(llm: Any) -> Any:
    return None if llm is None else resolve_llm(llm)


@contextlib.contextmanager
def _concurrency_slot(name: str | None):
    """Hold one slot of the Prefect global concurrency limit ``name`` (if any) meanwhile."""
    if not name:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=1, strict=True):
        yield


@task(name="prepare", **_UNCACHED, **retry_options())
def prepare(
    llm: Any,
    dataset: Any = None,
    working_dir: str | None = None,
    *,
    run_key: str | None = None,
    credentials: CredentialsLike = None,
    llm_kwargs: dict[str, Any] | None = None,
    rebuild_check: bool = True,
    max_shards: int | None = None,
) -> PrepareResult:
    """Render ``dataset`` into request shards (re-opens the run when it exists); at most
    ``max_shards`` of them (shards grow to fit)."""
    llm = resolve_llm(llm, llm_kwargs)
    block = load_block(credentials)
    if block is not None:
        block.check_backend(llm.backend)
    return steps.prepare(
        llm,
        dataset,
        working_dir,
        run_key=run_key,
        credentials=resolve_credentials(block or credentials),
        rebuild_check=rebuild_check,
        max_shards=max_shards,
    )


@task(
    name="run_online_shard",
    task_run_name="run_online_shard-{shard}",
    cache_key_fn=cache_key_for("run_online"),
    **_JSON,
    **retry_options(),
)
def run_online_shard(
    run: Any,
    shard: str,
    *,
    llm: Any = None,
    credentials: CredentialsLike = None,
    parallel_shards: int = 1,
    concurrency_limit: str | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
    progress_artifact: str | None = None,
) -> ShardResult:
    """Send ``shard``'s pending requests with ``1/parallel_shards`` of the provider's limits,
    holding a slot of the global concurrency limit ``concurrency_limit`` when given; the
    shard's progress goes to its row of the flow's progress artifact ``progress_artifact``."""
    creds = resolve_credentials(credentials)
    progress = ShardProgress(run, shard, creds, progress_interval, progress_artifact)
    with _concurrency_slot(concurrency_limit), progress:
        return steps.run_online(
            run, shard, llm=_llm(llm), credentials=creds, parallel_shards=parallel_shards
        )


@task(
    name="run_offline_shard",
    task_run_name="run_offline_shard-{shard}",
    tags=["gpu"],
    cache_key_fn=cache_key_for("run_offline"),
    **_JSON,
    **retry_options(),
)
def run_offline_shard(
    run: Any,
    shard: str,
    *,
    llm: Any = None,
    credentials: CredentialsLike = None,
    progress_interval: float = PROGRESS_INTERVAL,
    progress_artifact: str | None = None,
) -> ShardResult:
    """Generate ``shard``'s pending requests with vLLM on this worker (tag ``gpu``: route it
    with a tag concurrency limit or run it on a GPU work pool)."""
    creds = resolve_credentials(credentials)
    with ShardProgress(run, shard, creds, progress_interval, progress_artifact):
        return steps.run_offline(run, shard, llm=_llm(llm), credentials=creds)


@task(
    name="submit_batch",
    task_run_name="submit_batch-{shard}-c{cycle}",
    cache_key_fn=cache_key_for("submit"),
    **_JSON,
    **retry_options(),
)
def submit_batch(
    run: Any,
    shard: str,
    *,
    cycle: int = 0,
    llm: Any = None,
    credentials: CredentialsLike = None,
    retry_failed: bool = False,
    progress_artifact: str | None = None,
) -> BatchShardState:
    """Create ``shard``'s batch, or re-attach to the one an earlier (crashed) call created.
    ``cycle`` counts the flow's submit → wait → collect rounds (it is part of the cache key)."""
    creds = resolve_credentials(credentials)
    with ShardProgress(run, shard, creds, 0, progress_artifact, own_artifact=False):
        state = steps.submit(
            run, shard, llm=_llm(llm), credentials=creds, retry_failed=retry_failed
        )
    if state["state"] == "reconciling":
        raise BatchStepError(
            f"shard {shard}: cannot tell yet which of the provider's batches "
            f"{state['candidates']} an earlier submit created; retrying later re-attaches",
            retryable=True,
        )
    return state


@task(
    name="wait_for_batch",
    task_run_name="wait_for_batch-{shard}-c{cycle}",
    cache_key_fn=cache_key_for("wait"),
    **_JSON,
    **retry_options(),
)
def wait_for_batch(
    run: Any,
    shard: str,
    *,
    cycle: int = 0,
    poll_interval: float = 60.0,
    deadline_seconds: float = BATCH_DEADLINE_SECONDS,
    credentials: CredentialsLike = None,
    progress_artifact: str | None = None,
) -> BatchShardState:
    """Poll ``shard``'s batch every ``poll_interval`` seconds until it ends; fail with
    :class:`~curator_flows.errors.BatchDeadlineError` ``deadline_seconds`` after this batch was
    submitted (``round_submitted_at``, stored in the run: a re-attached flow run keeps the
    deadline, a resubmitted batch gets a deadline of its own)."""
    creds = resolve_credentials(credentials)
    progress = BatchProgress(run, shard, progress_artifact)
    started = time.time()
    while True:
        state = steps.poll(run, shard, credentials=creds)
        progress.update(state)
        if state["done"]:
            return state
        left = (state["round_submitted_at"] or started) + deadline_seconds - time.time()
        if left <= 0:
            raise BatchDeadlineError(
                f"shard {shard}: batch {state['batch_id']} ({state['status']}) has not ended "
                f"{deadline_seconds / 3600:.1f} h after it was submitted; check it with "
                f"`curator-flows status {steps.run_uri(run)}` or cancel it"
            )
        time.sleep(min(poll_interval, left))


@task(
    name="collect_batch",
    task_run_name="collect_batch-{shard}-c{cycle}",
    cache_key_fn=cache_key_for("collect"),
    **_JSON,
    **retry_options(),
)
def collect_batch(
    run: Any,
    shard: str,
    *,
    cycle: int = 0,
    llm: Any = None,
    credentials: CredentialsLike = None,
    progress_artifact: str | None = None,
) -> BatchShardState:
    """Store ``shard``'s ended batch's results; ``resubmit`` says requests are still owed."""
    creds = resolve_credentials(credentials)
    with ShardProgress(run, shard, creds, 0, progress_artifact, own_artifact=False):
        return steps.collect(run, shard, llm=_llm(llm), credentials=creds)


@task(
    name="launch_offline_shard",
    task_run_name="launch_offline_shard-{shard}",
    cache_key_fn=cache_key_for("run_offline_remote"),
    **_JSON,
    **retry_options(),
)
def launch_offline_shard(
    run: Any,
    shard: str,
    *,
    deployment: str,
    credentials: str | None = None,
    llm: str | None = None,
    llm_kwargs: dict[str, Any] | None = None,
    progress_artifact: str | None = None,
) -> dict[str, Any]:
    """Run ``shard`` as a flow run of ``deployment`` (a ``curate-offline-shard`` deployment on
    a GPU work pool) and wait for it; ``credentials`` is a saved block's name. The flow run's
    parameters are stored on the server as given, so ``llm_kwargs`` holding a secret (an
    ``api_key`` in ``backend_params``) are refused: keys go in the block. Meanwhile the
    shard's row of ``progress_artifact`` follows the run directory (the shard flow run keeps
    a progress artifact of its own)."""
    from prefect.deployments import run_deployment

    refuse_secrets(llm_kwargs, shard)
    watch = ShardProgress(
        run, shard, resolve_credentials(credentials) if progress_artifact else None,
        PROGRESS_INTERVAL, progress_artifact,
        own_artifact=False,
    )  # fmt: skip
    with watch:
        flow_run = run_deployment(
            deployment,
            parameters={
                "run": steps.run_uri(run), "shard": shard, "credentials": credentials,
                "llm": llm, "llm_kwargs": llm_kwargs,
            },
            timeout=None,
        )  # fmt: skip
    state = flow_run.state
    if state is None or not state.is_completed():
        name = state.name if state is not None else "unknown"
        raise IncompleteRunError(
            f"shard {shard}: flow run {flow_run.name} of {deployment} ended {name}; "
            f"its responses so far are stored, a retry resumes the shard",
            pending_shards=[shard],
            retryable=state is not None and state.is_crashed(),
        )
    return {"shard": shard, "flow_run_id": str(flow_run.id), "state": state.name}


def _finalize(
    run: Any,
    *,
    llm: Any = None,
    credentials: CredentialsLike = None,
    output_uri: str | None = None,
    max_failed_fraction: float = 0.01,
    partition: dict[str, Any] | None = None,
    schema_evolution: str = "strict",
) -> FinalizeResult:
    """Parse the stored responses and publish the dataset to ``output_uri`` (``partition``: as
    that Hive partition of it) only when at most ``max_failed_fraction`` of the requests
    failed."""
    summary = steps.finalize(
        run,
        llm=_llm(llm),
        credentials=resolve_credentials(credentials),
        output_uri=output_uri,
        max_failed_fraction=max_failed_fraction,
        partition=partition,
        schema_evolution=schema_evolution,
    )
    _describe_assets(summary)
    return summary


def _describe_assets(summary: FinalizeResult) -> None:
    """Attach the run's figures to the assets this task materializes (if any)."""
    from prefect.context import AssetContext

    context = AssetContext.get()
    if context is None:
        return
    for asset in context.downstream_assets:
        context.add_asset_metadata(
            asset.key,
            {
                "run_id": summary["run_id"],
                "output_uri": summary["output_uri"],
                "partition": summary["partition"],
                "rows": summary["rows"],
                "failed": summary["failed"],
                "invalid_rows": summary["invalid_rows"],
                "cost": summary["statistics"]["cost_info"].get("total_cost", 0.0),
                "schema": summary["schema"],
            },
        )


_FINALIZE_OPTIONS: dict[str, Any] = {
    "name": "finalize",
    **_UNCACHED,
    **retry_options(retry_transient_finalize),
}

finalize: Task[..., FinalizeResult] = task(_finalize, **_FINALIZE_OPTIONS)


def _is_location(text: str) -> bool:
    return "://" in text or os.path.exists(text)


def finalize_task(output_uri: str | None, upstream: str | None = None) -> Task[..., FinalizeResult]:
    """``finalize``, declaring the published dataset at ``output_uri`` as a Prefect asset
    (materialized by this task, depending on the asset ``upstream`` when it is a URI)."""
    key = asset_key(output_uri)
    if key is None:
        return finalize
    from prefect.assets import Asset, AssetProperties
    from prefect.tasks import MaterializingTask

    name = key.rstrip("/").rsplit("/", 1)[-1] or key
    asset = Asset(
        key=key,
        properties=AssetProperties(
            name=name, description="A curator-flows dataset (Parquet, `_SUCCESS` marker last)."
        ),
    )
    deps = [dep] if upstream and _is_location(upstream) and (dep := asset_key(upstream)) else None
    return MaterializingTask(
        fn=_finalize, assets=[asset], materialized_by="curator-flows", asset_deps=deps,
        **_FINALIZE_OPTIONS,
    )  # fmt: skip
