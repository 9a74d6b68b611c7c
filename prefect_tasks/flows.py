"""Prefect flows over the step tasks: ``curate`` (online), ``curate_batch`` (provider batch
APIs), ``curate_offline`` (vLLM on GPU workers) and ``curate_offline_shard`` (one GPU shard as a
flow run of its own, for a GPU work pool).

Every flow takes ``llm`` (an ``LLM`` instance, or an import path with ``llm_kwargs``),
``dataset`` (rows, an fsspec URI, an upstream run's output URI or result), ``working_dir``,
``output_uri``, ``run_key`` (a nightly deployment passes ``"{scheduled_date}"``, which becomes
the flow run's scheduled date, also in ``output_uri``, a ``dataset`` URI and ``partition``),
``partition`` (publish as that Hive partition of ``output_uri``, e.g.
``{"date": "{scheduled_date}"}``), ``schema_evolution`` (see ``steps.finalize``) and
``credentials`` (a ``CuratorCredentials`` block or a saved block's name), and returns the
:class:`~curator_flows.results.FinalizeResult` summary. ``max_failed_fraction`` (default 0.01):
the output is published only when at most this share of the requests failed, else the flow
run fails with ``TooManyFailuresError`` and nothing is published (a flow run with
``retry_failed=True`` sends the failed requests again).

Invariants:
- a flow holds no state: it re-derives everything from ``prepare``'s result and the tasks'
  results, so a new flow run with the same arguments re-opens the run and continues it;
- online shards are mapped one task per shard (never one per prompt) on a bounded task runner,
  and each takes ``1/N`` of the provider's limits, ``N`` = the shards that can run at once
  (``parallel_shards``, else the slots of a Prefect global concurrency limit shared across
  workers and flow runs, else the workers of ``curate``'s own task runner, else the number of
  shards), so N shards together never exceed the provider's aggregate limit;
- a run this flow run created refreshes the tasks' caches (a stale cache of a deleted run
  directory never answers for a new one); ``retry_failed=True`` does too, and retries the
  requests that failed finally;
- a flow creates task runs per shard, so a run is prepared in at most ``max_shards`` shards (a
  flow parameter, :data:`MAX_SHARDS` by default): shards grow to fit;
- a batch shard ``queued`` for room in the provider's batch queue waits (``wait_for_batch``
  polls it until it may be submitted) and is submitted again; waiting never counts against
  :data:`MAX_BATCH_CYCLES`;
- when ``finalize`` finds shards that still owe answers (``IncompleteRunError.pending_shards``:
  stored answers a tightened ``response_format`` refuses are taken back, or requests were
  never answered), the flow sends exactly those shards again with their caches refreshed and
  finalizes once more; so a new flow run over a run whose shard results are cached still
  re-sends what was taken back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from curator_flows.errors import BatchStepError, ConfigError, IncompleteRunError
from curator_flows.llm import LLM
from curator_flows.results import FinalizeResult, PrepareResult, ShardResult

from . import tasks
from .artifacts import PROGRESS_INTERVAL, RunProgress, preview, report, summary_key
from .parameters import curator_flow, refuse_secrets
from .policy import RETRIES, StepOptions, run_id_of
from .resolve import load_block, resolve_credentials, resolve_llm

#: shards one flow run sends at once (the default task runner's threads)
ONLINE_WORKERS = 4
#: ``curate``'s own task runner: with it each shard takes ``1/ONLINE_WORKERS`` of the limits;
#: with another one (``with_options(task_runner=...)``) pass ``parallel_shards``
ONLINE_TASK_RUNNER = ThreadPoolTaskRunner(max_workers=ONLINE_WORKERS)
#: batch shards one flow run submits, polls and collects at once
BATCH_WORKERS = 8
#: a guard on submit → wait → collect cycles (the engine stops resubmitting after max_retries)
MAX_BATCH_CYCLES = 50
#: the most shards a flow prepares a run into by default (each shard makes task runs)
MAX_SHARDS = 1000


#: in ``run_key``, ``output_uri`` and a ``dataset`` URI this placeholder becomes the flow run's
#: scheduled date (YYYY-MM-DD): what a nightly deployment passes, so the same night resumes
#: and the next night is a new run published next to the last one
SCHEDULED_DATE = "{scheduled_date}"


def _dated(value: Any) -> Any:
    """``value`` with :data:`SCHEDULED_DATE` replaced by the flow run's scheduled date."""
    if not isinstance(value, str) or SCHEDULED_DATE not in value:
        return value
    from prefect.runtime import flow_run

    return value.replace(SCHEDULED_DATE, flow_run.scheduled_start_time.strftime("%Y-%m-%d"))


def _llm_name(llm: Any) -> str:
    """An LLM's class name (of an instance, or the last part of an import path)."""
    if isinstance(llm, str):
        return llm.replace(":", ".").rsplit(".", 1)[-1] or llm
    return type(llm).__name__ if llm is not None else "curate"


def _parameters() -> dict[str, Any]:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return dict(context.parameters or {}) if context is not None else {}


def dataset_run_name() -> str:
    """A flow run's name: its dataset (``artifact_key``, else the LLM's class) and its night
    (``run_key``, the scheduled date put in): ``nightly-recipes-2026-11-27``, so the flow runs
    list reads like the build's history (Prefect calls this inside the new flow run)."""
    parameters = _parameters()
    name = parameters.get("artifact_key") or _llm_name(parameters.get("llm"))
    run_key = _dated(parameters.get("run_key"))
    return f"{name}-{run_key}" if run_key else str(name)


def shard_run_name() -> str:
    """A shard flow run's name: ``<run id>-<shard>``."""
    parameters = _parameters()
    run, shard = parameters.get("run"), parameters.get("shard")
    return f"{run_id_of(run)}-{shard}" if run else f"shard-{shard}"


def _credentials(value: Any) -> Any:
    """A saved block's name becomes the block (one API call per flow run, not per task)."""
    return load_block(value) or resolve_credentials(value)


def _parallelism(explicit: int | None, shards: int, concurrency_limit: str | None) -> int:
    """How many shards send at once, i.e. how many parts the provider's limits split into."""
    if explicit is not None:
        if not isinstance(explicit, int) or explicit < 1:
            raise ConfigError(f"parallel_shards must be a positive integer, got {explicit!r}")
        return explicit
    if concurrency_limit:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return max(
                1, int(client.read_global_concurrency_limit_by_name(concurrency_limit).limit)
            )
    from prefect import get_run_logger
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None and context.flow is not None:
        if context.flow.task_runner is ONLINE_TASK_RUNNER:  # ours: its width is known
            return max(1, min(shards, ONLINE_WORKERS))
    get_run_logger().warning(
        "this flow runs on a task runner of its own, whose width it cannot read: each shard "
        "takes 1/%d of the provider's limits, one part per shard (safe, maybe slower); pass "
        "parallel_shards=<shards that run at once> to use the whole limit",
        max(1, shards),
    )
    return max(1, shards)


#: the flow that runs each LLM mode, and what it runs (for a mode mismatch's message)
_FLOW_OF_MODE = {"online": "curate", "batch": "curate_batch", "offline": "curate_offline"}
_LLMS_OF_MODE = {
    "online": "online LLMs",
    "batch": "batch LLMs (batch=True)",
    "offline": "vLLM LLMs (backend='vllm')",
}


@dataclass(frozen=True)
class _Opened:
    """What every flow starts from: its arguments resolved, the run prepared, the key of its
    artifacts and this flow run's progress artifact (held here: it lives while the flow runs)."""

    llm: LLM
    dataset: Any
    output_uri: str | None
    credentials: Any
    run: PrepareResult
    options: StepOptions
    artifact_key: str
    progress: RunProgress | None
    #: the Hive partition of ``output_uri`` to publish, and what a publish may change in the
    #: asset's schema contract (see ``steps.finalize``)
    partition: dict[str, Any] | None = None
    schema_evolution: str = "strict"

    @property
    def progress_id(self) -> str | None:
        return self.progress.id if self.progress is not None else None

    def step(self, task: Any, refresh: bool = False) -> Any:
        """``task`` with the flow's retries, its cache refreshed when ``refresh``."""
        return self.options.apply(task, refresh)


def _open(
    mode: str,
    llm: Any,
    llm_kwargs: dict[str, Any] | None,
    dataset: Any,
    working_dir: str | None,
    output_uri: str | None,
    run_key: str | None,
    credentials: Any,
    *,
    options: StepOptions,
    artifact_key: str | None = None,
    rebuild_check: bool = False,
    partition: dict[str, Any] | None = None,
    schema_evolution: str = "strict",
    max_shards: int | None = MAX_SHARDS,
) -> _Opened:
    """The opening every flow shares: the scheduled date put into ``dataset``, ``output_uri``,
    ``run_key`` and ``partition``'s values, the ``LLM`` built and checked against the flow's
    ``mode``, a block name loaded once, ``prepare`` (which re-opens the run when it exists: the
    log says which run it continues) and this flow run's progress artifact."""
    dataset, output_uri, run_key = _dated(dataset), _dated(output_uri), _dated(run_key)
    partition = {key: _dated(value) for key, value in (partition or {}).items()} or None
    built = resolve_llm(llm, llm_kwargs)
    if built.mode != mode:
        raise ConfigError(
            f"{_FLOW_OF_MODE[mode]} runs {_LLMS_OF_MODE[mode]}; this one is {built.mode}: use "
            f"{_FLOW_OF_MODE.get(built.mode, 'another flow')}"
        )
    creds = _credentials(credentials)
    run = options.apply(tasks.prepare)(
        built, dataset, working_dir, run_key=run_key, credentials=creds,
        rebuild_check=rebuild_check, max_shards=max_shards,
    )  # fmt: skip
    _say_which_run(run)
    key = artifact_key or summary_key(type(built).__name__)
    progress = RunProgress.start(run, key, resolve_credentials(creds))
    return _Opened(
        built, dataset, output_uri, creds, run, options, key, progress, partition,
        schema_evolution,
    )  # fmt: skip


def _say_which_run(run: PrepareResult) -> None:
    from prefect import get_run_logger

    key = f"run key {run['run_key']!r}" if run["run_key"] else "no run key"
    if run["created"]:
        get_run_logger().info(
            "new run %s (%s): %d request(s) at %s", run["run_id"], key, run["requests"],
            run["run_uri"],
        )  # fmt: skip
    else:
        get_run_logger().info(
            "continues run %s (%s) at %s: %d of %d requests still owe an answer%s",
            run["run_id"], key, run["run_uri"], run["pending"], run["requests"],
            "" if run["pending"] else " (nothing to send; a new run_key generates afresh)",
        )  # fmt: skip


def _pending_shards(state: Any) -> list[str]:
    """The shards a failed ``finalize`` says still owe answers (stored answers the current
    ``response_format`` refused were taken back, or requests were never answered)."""
    if not state.is_failed():
        return []
    failure = state.result(raise_on_failure=False)
    return list(failure.pending_shards) if isinstance(failure, IncompleteRunError) else []


def _finish(
    opened: _Opened, resend: Callable[[list[str]], None], max_failed_fraction: float = 0.01
) -> FinalizeResult:
    """``finalize`` (publishing only when at most ``max_failed_fraction`` of the requests
    failed); when it finds shards that still owe answers, ``resend`` them (their tasks'
    caches refreshed: a cached result of an earlier pass would answer for them) and finalize
    once more. Then the table artifacts (statistics, a preview of the published rows)."""
    dataset, output_uri = opened.dataset, opened.output_uri
    upstream = dataset if isinstance(dataset, str) else None
    if isinstance(dataset, dict):  # an upstream step's result: its published output
        upstream = dataset.get("output_uri")
    if isinstance(upstream, str) and "=" in upstream.rstrip("/").rsplit("/", 1)[-1]:
        from curator_flows import steps

        upstream = steps.asset_uri(upstream)  # a Hive partition's asset is its table
    finalize = opened.step(tasks.finalize_task(output_uri, upstream))
    arguments = {
        "llm": opened.llm,
        "credentials": opened.credentials,
        "output_uri": output_uri,
        "max_failed_fraction": max_failed_fraction,
    }
    if opened.partition or opened.schema_evolution != "strict":
        arguments.update(partition=opened.partition, schema_evolution=opened.schema_evolution)
    state = finalize(opened.run, **arguments, return_state=True)
    pending = _pending_shards(state)
    if pending:
        from prefect import get_run_logger

        get_run_logger().warning(
            "finalize found requests without an accepted answer in shards %s (answers the "
            "current response_format refuses are taken back): sending those shards again, "
            "then finalizing once more",
            pending,
        )
        resend(pending)
        state = finalize(opened.run, **arguments, return_state=True)
    summary = state.result()
    if opened.progress is not None:
        opened.progress.finish(f"Finalized: {summary['rows']} rows.")
    report(summary, opened.artifact_key)
    preview(summary, opened.artifact_key, opened.credentials)
    return summary


@curator_flow(
    name="curate",
    flow_run_name=dataset_run_name,
    task_runner=ONLINE_TASK_RUNNER,
    result_serializer="json",
    persist_result=True,
)
def curate(
    llm: Any,
    dataset: Any = None,
    working_dir: str | None = None,
    output_uri: str | None = None,
    run_key: str | None = None,
    credentials: Any = None,
    partition: dict[str, Any] | None = None,
    schema_evolution: str = "strict",
    llm_kwargs: dict[str, Any] | None = None,
    max_failed_fraction: float = 0.01,
    parallel_shards: int | None = None,
    concurrency_limit: str | None = None,
    retry_failed: bool = False,
    artifact_key: str | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
    retries: int = RETRIES,
    retry_delay_seconds: float | list[float] | None = None,
    refresh_cache: bool = False,
    max_shards: int | None = MAX_SHARDS,
) -> FinalizeResult:
    """Build a dataset with the provider's online API: prepare, one task per shard, finalize.

    ``parallel_shards``: how many shards share the provider's limits (default: the 4 workers
    of this flow's own task runner; with a task runner of your own, pass it, else each shard
    takes ``1/<shards>`` and a warning says so). ``concurrency_limit``: the name of a Prefect
    global concurrency limit; each shard holds one slot while it sends and takes ``1/slots`` of
    the limits, so every flow run on every worker using that limit together stays within the
    provider's limits. ``max_shards``: the run is prepared in at most this many shards."""
    opened = _open(
        "online", llm, llm_kwargs, dataset, working_dir, output_uri, run_key, credentials,
        options=StepOptions(retries, retry_delay_seconds, refresh_cache), artifact_key=artifact_key,
        partition=partition, schema_evolution=schema_evolution, max_shards=max_shards,
    )  # fmt: skip
    llm, creds, run = opened.llm, opened.credentials, opened.run
    parts = _parallelism(parallel_shards, len(run["shards"]), concurrency_limit)

    def send(shards: list[str], refresh: bool) -> None:
        if shards:
            opened.step(tasks.run_online_shard, refresh).map(
                unmapped(run),
                shards,
                llm=unmapped(llm),
                credentials=unmapped(creds),
                parallel_shards=unmapped(parts),
                concurrency_limit=unmapped(concurrency_limit),
                progress_interval=unmapped(progress_interval),
                progress_artifact=unmapped(opened.progress_id),
            ).result()

    send(run["shards"], run["created"] or retry_failed)
    return _finish(opened, lambda shards: send(shards, True), max_failed_fraction)


@curator_flow(
    name="curate-batch",
    flow_run_name=dataset_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS),
    result_serializer="json",
    persist_result=True,
)
def curate_batch(
    llm: Any,
    dataset: Any = None,
    working_dir: str | None = None,
    output_uri: str | None = None,
    run_key: str | None = None,
    credentials: Any = None,
    partition: dict[str, Any] | None = None,
    schema_evolution: str = "strict",
    llm_kwargs: dict[str, Any] | None = None,
    max_failed_fraction: float = 0.01,
    poll_interval: float | None = None,
    deadline_hours: float = tasks.BATCH_DEADLINE_SECONDS / 3600,
    retry_failed: bool = False,
    artifact_key: str | None = None,
    retries: int = RETRIES,
    retry_delay_seconds: float | list[float] | None = None,
    refresh_cache: bool = False,
    max_shards: int | None = MAX_SHARDS,
) -> FinalizeResult:
    """Build a dataset through the provider's batch API: prepare → submit every shard → wait
    → collect → resubmit what expired or errored → finalize. A shard waits for room in the
    provider's batch queue when it is full (``max_enqueued_tokens`` / ``max_enqueued_requests``,
    or a refusal), and is submitted once there is.

    ``poll_interval``: seconds between status checks (default: the LLM's
    ``batch_check_interval``); ``deadline_hours``: a batch still running this long after it
    was submitted fails the flow run (each resubmitted batch counts from its own submit; the
    time is stored in the run, so it survives re-runs); ``max_shards``: the run is prepared in
    at most this many shards."""
    opened = _open(
        "batch", llm, llm_kwargs, dataset, working_dir, output_uri, run_key, credentials,
        options=StepOptions(retries, retry_delay_seconds, refresh_cache), artifact_key=artifact_key,
        partition=partition, schema_evolution=schema_evolution, max_shards=max_shards,
    )  # fmt: skip
    board = opened.progress_id
    llm, creds, run = opened.llm, opened.credentials, opened.run
    interval = float(poll_interval or llm.config.params.batch_check_interval)
    next_cycle = 0

    def cycles(pending: list[str], refresh: bool) -> None:
        """Submit → wait → collect ``pending`` until no shard owes requests (the cycles
        numbered on from the last one, so each cycle has cache keys of its own)."""
        nonlocal next_cycle
        submit = opened.step(tasks.submit_batch, refresh)
        wait = opened.step(tasks.wait_for_batch, refresh)
        collect = opened.step(tasks.collect_batch, refresh)
        resubmits = 0
        while pending and resubmits < MAX_BATCH_CYCLES:
            cycle, next_cycle = next_cycle, next_cycle + 1
            submitted = {
                shard: submit.submit(
                    run,
                    shard,
                    cycle=cycle,
                    llm=llm,
                    credentials=creds,
                    retry_failed=retry_failed and cycle == 0,
                    progress_artifact=board,
                )
                for shard in pending
            }
            states = {s: f.result()["state"] for s, f in submitted.items()}
            live = [s for s, state in states.items() if state in ("submitted", "ended")]
            queued = [s for s, state in states.items() if state == "queued"]
            waited = {
                shard: wait.submit(
                    run,
                    shard,
                    cycle=cycle,
                    poll_interval=interval,
                    deadline_seconds=deadline_hours * 3600,
                    credentials=creds,
                    progress_artifact=board,
                )
                for shard in live + queued  # a queued shard's wait ends when it may submit
            }
            collected = {
                shard: collect.submit(
                    run,
                    shard,
                    cycle=cycle,
                    llm=llm,
                    credentials=creds,
                    progress_artifact=board,
                    wait_for=[waited[shard]],
                )
                for shard in live
            }
            resubmit = [s for s, f in collected.items() if f.result()["resubmit"]]
            for shard in queued:
                waited[shard].result()
            resubmits += bool(resubmit)  # waiting for the queue is not a resubmit cycle
            pending = queued + resubmit
        if pending:
            raise BatchStepError(
                f"shards {pending} still owe requests after {MAX_BATCH_CYCLES} submit cycles; "
                f"check `curator-flows status {run['run_uri']}`"
            )

    cycles(list(run["shards"]), run["created"] or retry_failed)
    return _finish(opened, lambda shards: cycles(shards, True), max_failed_fraction)


@curator_flow(
    name="curate-offline",
    flow_run_name=dataset_run_name,
    # local shards are called one after the other (one vLLM engine per process); the workers
    # launch and await remote shard flow runs
    task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS),
    result_serializer="json",
    persist_result=True,
)
def curate_offline(
    llm: Any,
    dataset: Any = None,
    working_dir: str | None = None,
    output_uri: str | None = None,
    run_key: str | None = None,
    credentials: Any = None,
    partition: dict[str, Any] | None = None,
    schema_evolution: str = "strict",
    llm_kwargs: dict[str, Any] | None = None,
    max_failed_fraction: float = 0.01,
    shard_deployment: str | None = None,
    retry_failed: bool = False,
    artifact_key: str | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
    retries: int = RETRIES,
    retry_delay_seconds: float | list[float] | None = None,
    refresh_cache: bool = False,
    max_shards: int | None = MAX_SHARDS,
) -> FinalizeResult:
    """Build a dataset with vLLM: prepare, generate every shard, finalize (in at most
    ``max_shards`` shards).

    Without ``shard_deployment`` the shards run here, one at a time, as ``run_offline_shard``
    tasks tagged ``gpu`` (run this flow on a GPU work pool, or cap GPU tasks with a ``gpu`` tag
    concurrency limit). With ``shard_deployment`` (``"curate-offline-shard/<deployment>"``, a
    deployment of :data:`curate_offline_shard` on a GPU work pool) each shard runs as a flow
    run of its own there, all at once, and this flow waits for them; then ``working_dir`` must
    be storage both pools see, ``credentials`` a saved block's name and ``llm_kwargs`` (sent to
    those flow runs as parameters) free of keys."""
    if shard_deployment and isinstance(llm, str):  # llm_kwargs travel to the shard flow runs
        refuse_secrets(llm_kwargs)
    remote, llm_path = bool(shard_deployment), isinstance(llm, str)
    opened = _open(
        "offline", llm, llm_kwargs, dataset, working_dir, output_uri, run_key, credentials,
        options=StepOptions(retries, retry_delay_seconds, refresh_cache), artifact_key=artifact_key,
        rebuild_check=remote and not llm_path,  # the shard flow runs rebuild it from the run
        partition=partition, schema_evolution=schema_evolution, max_shards=max_shards,
    )  # fmt: skip
    llm_arg, llm, creds, run = llm, opened.llm, opened.credentials, opened.run
    block_name = _block_name(credentials) if remote else None

    def generate(shards: list[str], refresh: bool) -> None:
        if remote:
            opened.step(tasks.launch_offline_shard, refresh).map(
                unmapped(run),
                shards,
                deployment=unmapped(shard_deployment),
                credentials=unmapped(block_name),
                llm=unmapped(llm_arg if llm_path else None),
                llm_kwargs=unmapped(llm_kwargs if llm_path else None),
                progress_artifact=unmapped(opened.progress_id),
            ).result()
            return
        shard_task = opened.step(tasks.run_offline_shard, refresh)
        for shard in shards:  # in this thread, one after the other: one vLLM engine at a time
            shard_task(
                run, shard, llm=llm, credentials=creds, progress_interval=progress_interval,
                progress_artifact=opened.progress_id,
            )  # fmt: skip

    generate(run["shards"], run["created"] or retry_failed)
    return _finish(opened, lambda shards: generate(shards, True), max_failed_fraction)


def _block_name(credentials: Any) -> str | None:
    if credentials is None or isinstance(credentials, str):
        return credentials
    name = getattr(credentials, "_block_document_name", None)
    if not name:
        raise ConfigError(
            "shard flow runs on another work pool get credentials by name: pass the name of a "
            "saved CuratorCredentials block"
        )
    return name


@curator_flow(
    name="curate-offline-shard",
    flow_run_name=shard_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=1),
    result_serializer="json",
    persist_result=True,
)
def curate_offline_shard(
    run: str,
    shard: str,
    credentials: str | None = None,
    llm: str | None = None,
    llm_kwargs: dict[str, Any] | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
    retries: int = RETRIES,
    retry_delay_seconds: float | list[float] | None = None,
    refresh_cache: bool = False,
) -> ShardResult:
    """One vLLM shard of a prepared run, as a flow run of its own: deploy this flow to a GPU
    work pool (``job_variables`` ask for the GPUs) and pass its deployment to
    ``curate_offline(shard_deployment=...)``. The ``LLM`` is rebuilt from the run's manifest
    unless ``llm`` (an import path) and ``llm_kwargs`` are given."""
    options = StepOptions(retries, retry_delay_seconds, refresh_cache)
    return options.apply(tasks.run_offline_shard)(
        run,
        shard,
        llm=resolve_llm(llm, llm_kwargs) if llm else None,
        credentials=_credentials(credentials),
        progress_interval=progress_interval,
    )
