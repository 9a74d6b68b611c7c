"""The step API: what ``LLM.__call__`` composes in-process and what Airflow operators and
Prefect tasks call one at a time, in separate processes, hours apart.

This module is a façade: every function is a call into the engine module that does the work,
and nothing inside the engine imports it back (see ``docs/architecture.md``).

Invariants:
- inputs and outputs of every step are small JSON-serialisable dicts of a fixed shape
  (:mod:`curator_flows.results`), never rows; a run is re-opened from its URI alone;
- every step is idempotent: running it again, or after a crash at any line, converges to the
  same run directory (pending work = requests without a successful response line);
- every step takes ``credentials`` (:class:`~curator_flows.credentials.Credentials`: API key,
  base URL, fsspec storage options), which are used and never stored;
- every error is a :class:`~curator_flows.errors.CuratorFlowsError` whose ``retryable`` flag
  tells an orchestrator whether to retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CuratorFlowsError, is_retryable

if TYPE_CHECKING:  # importing this façade stays light: DAG files import it at parse time
    from .credentials import Credentials
    from .llm import LLM
    from .results import (
        BatchShardState,
        CancelResult,
        EstimateResult,
        FinalizeResult,
        PrepareResult,
        ShardResult,
        StatusResult,
    )
    from .runs import RunRef
    from .types import CuratorResponse

    CredentialsLike = Credentials | dict[str, Any] | None

__all__ = [
    "Credentials",
    "CuratorFlowsError",
    "RunRef",
    "advance",
    "asset_uri",
    "build_llm",
    "cancel",
    "collect",
    "default_working_dir",
    "estimate",
    "finalize",
    "is_retryable",
    "load_response",
    "poll",
    "prepare",
    "preview",
    "run_offline",
    "run_online",
    "run_uri",
    "status",
    "submit",
]

_LAZY = {"Credentials": "curator_flows.credentials", "RunRef": "curator_flows.runs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_uri(run: RunRef) -> str:
    """The URI of ``run``: a URI, a ``CuratorResponse`` or any step result with ``run_uri``."""
    from .runs import run_uri as _run_uri

    return _run_uri(run)


def asset_uri(output_uri: str, partition: dict[str, Any] | None = None) -> str:
    """The asset ``finalize(output_uri=..., partition=...)`` publishes to (where its schema
    contract lives): ``output_uri`` with a partition, else ``output_uri`` less its trailing
    dated segments (``s3://b/recipes`` for ``s3://b/recipes/2026-12-04`` or
    ``s3://b/recipes/date=2026-12-04``)."""
    from .publish import asset_of

    return asset_of(output_uri, partition)[0]


def build_llm(
    llm: LLM | str,
    llm_kwargs: dict[str, Any] | None = None,
    *,
    backend_defaults: dict[str, Any] | None = None,
) -> LLM:
    """``llm`` as an LLM: an instance, or an import path built with ``llm_kwargs`` (never holding
    a key) over ``backend_defaults``; see :func:`curator_flows.llm.build_llm`."""
    from .llm import build_llm as _build_llm

    return _build_llm(llm, llm_kwargs, backend_defaults=backend_defaults)


def default_working_dir() -> str:
    """Where runs go without a ``working_dir``: ``CURATOR_FLOWS_WORKING_DIR``, else
    ``CURATOR_CACHE_DIR``, else ``~/.cache/curator-flows``."""
    from .store import default_working_dir as _default_working_dir

    return _default_working_dir()


def prepare(
    llm: LLM,
    dataset: Any = None,
    working_dir: str | None = None,
    *,
    run_key: str | None = None,
    credentials: CredentialsLike = None,
    rebuild_check: bool = True,
    max_shards: int | None = None,
) -> PrepareResult:
    """Render ``dataset`` into request shards and write the manifest (idempotent).

    ``run_key`` (e.g. a nightly build's date) joins the run's identity: the same key resumes,
    a new key makes a new run with fresh generations. ``rebuild_check``: fail here, before
    anything is sent, when a later step given only the run URI could not rebuild ``llm`` (set it
    to ``False`` when every step gets ``llm=``). ``max_shards``: at most this many shards (what
    the orchestrator can fan out to); shards grow past ``shard_size`` to fit, and the log says
    so."""
    from .prepare import prepare as _prepare

    result = _prepare(
        llm,
        dataset,
        working_dir,
        run_key=run_key,
        credentials=credentials,
        max_shards=max_shards,
    )
    if rebuild_check:
        from .rebuild import verify_rebuild

        verify_rebuild(llm, llm.spec())
    return result


def run_online(
    run: RunRef,
    shard: str | list[str] | None = None,
    *,
    llm: LLM | None = None,
    credentials: CredentialsLike = None,
    parallel_shards: int = 1,
) -> ShardResult:
    """Send the pending requests of ``shard`` (a name, a list, or ``None`` for all) and append
    their responses; return what this call did. ``parallel_shards``: how many shards run at
    the same time against the same provider; this step takes that share of every limit."""
    from .online import run_online as _run_online

    return _run_online(
        run, shard, llm=llm, credentials=credentials, parallel_shards=parallel_shards
    )


def run_offline(
    run: RunRef,
    shard: str | list[str] | None = None,
    *,
    llm: LLM | None = None,
    credentials: CredentialsLike = None,
) -> ShardResult:
    """Generate the pending requests of ``shard`` with vLLM on this worker (see
    :mod:`curator_flows.offline`)."""
    from .offline import run_offline as _run_offline

    return _run_offline(run, shard, llm=llm, credentials=credentials)


# ----------------------------------------------------------------------------- batch steps
# submit → poll (until done) → collect → (submit again while collect says "resubmit") → finalize,
# or advance() in a loop. See curator_flows/batch/ for the record format and the invariants.


def _batch(run: RunRef, llm: LLM | None, credentials: CredentialsLike):
    from .batch.context import open_context

    return open_context(run, llm, credentials)


def submit(
    run: RunRef,
    shard: str,
    *,
    llm: LLM | None = None,
    credentials: CredentialsLike = None,
    retry_failed: bool = False,
) -> BatchShardState:
    """Create the provider batch of ``shard``'s pending requests, unless one exists.

    Writes the intent record first; re-attaches to a batch an earlier crashed call created.
    ``retry_failed``: also start a new campaign for requests that failed finally (or were
    cancelled). ``state`` is ``submitted`` (poll it), ``ended`` (collect it), ``reconciling``
    (call again later), ``queued`` (the provider's batch queue has no room for it yet: call
    again after ``wait_seconds``), ``done`` or ``cancelled``. A shard without a batch record
    adopts the batch its run already made for it at the provider."""
    from .batch.steps import submit_shard

    return submit_shard(_batch(run, llm, credentials), shard, retry_failed=retry_failed)


def poll(run: RunRef, shard: str, *, credentials: CredentialsLike = None) -> BatchShardState:
    """One non-blocking status check of ``shard``'s current batch (a sensor's poke); ``done``
    means the batch ended and ``collect`` can run, or, for a ``queued`` shard (waiting for room
    in the provider's batch queue), that it may be submitted now. Needs no LLM class, only the
    run URI."""
    from .batch.steps import poll_shard

    return poll_shard(_batch(run, None, credentials), shard)


def collect(
    run: RunRef, shard: str, *, llm: LLM | None = None, credentials: CredentialsLike = None
) -> BatchShardState:
    """Stream the ended batch's results into the shard's responses (idempotent); ``resubmit``
    means requests are still owed and ``submit`` starts the next round."""
    from .batch.collect import collect_shard

    return collect_shard(_batch(run, llm, credentials), shard)


def advance(
    run: RunRef,
    shard: str,
    *,
    llm: LLM | None = None,
    credentials: CredentialsLike = None,
    retry_failed: bool = False,
) -> BatchShardState:
    """Move a batch shard as far as it goes without waiting: submit (or re-attach), poll,
    collect, resubmit what expired (and what a full batch queue refused: never an attempt).
    ``done`` when the shard needs nothing more, else call again after ``wait_seconds``."""
    from .batch.advance import advance as _advance

    return _advance(_batch(run, llm, credentials), shard, retry_failed=retry_failed)


def cancel(run: RunRef, *, credentials: CredentialsLike = None) -> CancelResult:
    """Cancel every live batch of the run and stop further rounds (a later ``submit(...,
    retry_failed=True)`` or a new ``LLM(...)(dataset)`` call resumes). Partial results are
    still collected."""
    from .batch.steps import cancel_run

    return cancel_run(_batch(run, None, credentials))


def status(
    run: RunRef,
    shard: str | list[str] | None = None,
    *,
    credentials: CredentialsLike = None,
) -> StatusResult:
    """Per-shard state, counts and cost so far of any run (online, batch, offline); reads only
    the run directory (only ``shard``'s files when given: cheap enough for a progress loop)."""
    from .batch.status import run_status
    from .credentials import Credentials
    from .runs import open_run, shard_names

    credentials = Credentials.coerce(credentials)
    store, manifest = open_run(run, credentials.storage_options)
    names = None if shard is None else shard_names(manifest, shard)
    return run_status(store, manifest, names)


def estimate(
    run: RunRef, *, llm: LLM | None = None, credentials: CredentialsLike = None
) -> EstimateResult:
    """What the run's pending requests are projected to cost (token estimates × prices), what
    it spent so far, and whether that stays within ``max_cost``. Sends nothing."""
    from .budget import estimate_run

    return estimate_run(run, llm=llm, credentials=credentials)


def finalize(
    run: RunRef,
    *,
    llm: LLM | None = None,
    credentials: CredentialsLike = None,
    output_uri: str | None = None,
    max_failed_fraction: float = 0.01,
    partition: dict[str, Any] | None = None,
    schema_evolution: str = "strict",
) -> FinalizeResult:
    """Parse the stored responses into the run's output and sum its statistics; with
    ``output_uri``, publish the dataset there as Parquet (atomically, ``_SUCCESS`` last).

    ``partition`` (e.g. ``{"date": "2026-12-04"}``): publish as that Hive partition of
    ``output_uri`` (``<output_uri>/date=2026-12-04/``), so every night reads as one table.
    Every publish conforms to the asset's schema contract (declared by the code, else inferred
    on the first publish): values are cast to it, a row with a value that does not fit is left
    out (``invalid_rows``); a column added, removed or (declared) retyped raises
    :class:`~curator_flows.errors.SchemaChangeError` unless ``schema_evolution`` is
    ``"add_columns"`` or ``"replace"``. A dataset card (``README.md``) is written beside the
    data (with partitions: at ``output_uri``).

    Never loads the whole dataset: returns a summary (use :func:`load_response` for the
    :class:`~curator_flows.types.CuratorResponse`; ``failures_by_reason`` counts the failed
    requests by reason, and a run with failures logs one WARNING line saying so). Raises
    :class:`~curator_flows.errors.IncompleteRunError` after writing everything when every
    request failed, or when ``require_all_responses`` is on and any failed; publishes only
    when at most ``max_failed_fraction`` of the requests failed, else raises
    :class:`~curator_flows.errors.TooManyFailuresError` and publishes nothing."""
    from .finalize import finalize as _finalize

    return _finalize(
        run,
        llm=llm,
        credentials=credentials,
        output_uri=output_uri,
        max_failed_fraction=max_failed_fraction,
        partition=partition,
        schema_evolution=schema_evolution,
    )


def preview(
    output: RunRef, rows: int = 20, *, credentials: CredentialsLike = None
) -> list[dict[str, Any]]:
    """The first ``rows`` rows of a published dataset (its ``output_uri``, or a
    ``FinalizeResult``, whose published output is read when it has one) or of a finalized run,
    as JSON values for people (texts cut at 500 characters); reads only those rows."""
    from .credentials import Credentials
    from .report.preview import preview_rows

    if isinstance(output, dict):
        uri = output.get("output_uri") or output["run_uri"]
    else:
        uri = run_uri(output)
    return preview_rows(uri, rows, Credentials.coerce(credentials).storage_options)


def load_response(
    run: RunRef, *, llm: LLM | None = None, credentials: CredentialsLike = None
) -> CuratorResponse:
    """The :class:`~curator_flows.types.CuratorResponse` of a finalized run, for in-process
    use (the dataset is memory-mapped for local runs)."""
    from .finalize import load_response as _load_response

    return _load_response(run, llm=llm, credentials=credentials)
