"""``CuratorOperator``: one whole job in one task: prepare → generate (online, offline or
batch) → finalize (and publish to ``output_uri``), returning a small manifest.

Invariants:
- the same ``run_key`` (e.g. ``"{{ run_date }}"``) and inputs resume the same run: an Airflow
  retry or a cleared task sends only what is not stored yet and never creates a second batch;
- batch mode waits deferred when ``deferrable`` (default: Airflow's ``[operators]
  default_deferrable``), the worker slot free while the provider works; else in reschedule mode;
- XCom gets only the manifest (run URI, counts, tokens, cost) and, on their own, the keys
  downstream tasks read (``output_uri``, ``run_uri``); the dataset stays in storage.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..compat import conf
from .base import (
    CuratorBaseOperator,
    PublishMixin,
    check_llm_argument,
    resolve_dataset,
    split_dataset,
)
from .batch import BatchOptionsMixin, BatchWaitMixin

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context


class CuratorOperator(PublishMixin, BatchOptionsMixin, BatchWaitMixin, CuratorBaseOperator):
    """Run an ``LLM`` over a dataset as one task and return a small manifest (run URI, output
    URI, rows, counts, tokens, cost). ``output_uri`` and ``run_uri`` are also XComs of their
    own: ``op.output["output_uri"]`` is what a downstream task reads.

    :param llm: an ``LLM`` instance built in the DAG file (construction sends nothing), or an
        import path ``"package.module:Class"`` built on the worker with ``llm_kwargs`` (whose
        ``backend_params`` go over the connection's).
    :param dataset: rows (a list of dicts), an fsspec URI (Parquet, JSONL, Arrow, a saved HF
        dataset), the output URI of an upstream run (e.g. ``upstream.output["output_uri"]``),
        or a callable returning any of these (called with the context values it names).
        Templated (inline rows are not).
    :param working_dir: where the run directory goes (any fsspec URI). Templated.
    :param output_uri: where to publish the dataset as Parquet (``_SUCCESS`` last). Templated.
    :param max_failed_fraction: publish only when at most this share of the requests failed
        (default 0.01); past it the task fails with ``TooManyFailuresError`` (retried when
        sending again can help) and nothing is published.
    :param partition: publish as this Hive partition of ``output_uri``, e.g.
        ``{"date": "{{ run_date }}"}`` (every night one table with a ``date`` column). Templated.
    :param schema_evolution: ``"strict"`` (default), ``"add_columns"`` or ``"replace"``: what a
        publish may change in the asset's schema contract (see ``steps.finalize``).
    :param run_key: joins the run's identity, e.g. ``"{{ run_date }}"`` (the logical date, else
        the date of the run's ``run_after``: every run has it): each night is a new run, a
        retry of the same night resumes it. Templated.
    :param output_asset: the outlet asset (default: from ``output_uri``, see
        :func:`~airflow_provider.operators.base.default_asset`); its event ``extra`` carries
        rows, tokens and cost.
    :param deferrable: batch mode: wait in the triggerer, or in reschedule mode (the try's
        first poke prepares the run and records where it is; the later pokes only poll it, see
        :mod:`~airflow_provider.operators.run_pointer`). Default: ``[operators]
        default_deferrable`` (``False`` unless set), as Airflow's own operators.
    :param poll_interval: seconds between status checks (default: the LLM's
        ``batch_check_interval``). Templated.
    :param batch_timeout: seconds (or a ``timedelta``) after the campaign's first submit before
        giving up with :class:`~airflow_provider.exceptions.CuratorBatchTimeout`. Templated.
    :param cancel_on_kill: cancel live batches when the task is killed or marked failed.
    :param cancel_on_timeout: cancel live batches when ``batch_timeout`` passes.
    :param retry_failed: give requests that failed finally (or were cancelled) a new campaign.
    """

    template_fields = (
        "dataset",
        "working_dir",
        "output_uri",
        "partition",
        "run_key",
        "poll_interval",
        "batch_timeout",
    )
    template_fields_renderers = {"dataset": "py"}
    ui_color = "#cdb4ff"

    def __init__(
        self,
        *,
        llm: Any,
        dataset: Any = None,
        working_dir: str | None = None,
        output_uri: str | None = None,
        max_failed_fraction: float = 0.01,
        run_key: str | None = None,
        partition: dict[str, Any] | None = None,
        schema_evolution: str = "strict",
        llm_kwargs: dict[str, Any] | None = None,
        output_asset: Asset | str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float | str | None = None,
        batch_timeout: float | timedelta | str | None = None,
        max_poll_errors: int = 3,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = True,
        retry_failed: bool = False,
        multiple_outputs: bool = False,
        **kwargs: Any,
    ) -> None:
        check_llm_argument(llm, llm_kwargs)
        super().__init__(multiple_outputs=multiple_outputs, **kwargs)
        self.attach_asset(output_uri, output_asset)
        self.llm = llm
        self.llm_kwargs = llm_kwargs
        self.dataset, self.dataset_callable = split_dataset(dataset)
        self.working_dir = working_dir
        self.output_uri = output_uri
        self.max_failed_fraction = max_failed_fraction
        self.partition = partition
        self.schema_evolution = schema_evolution
        self.run_key = run_key
        self.set_batch_options(
            deferrable=deferrable,
            poll_interval=poll_interval,
            batch_timeout=batch_timeout,
            max_poll_errors=max_poll_errors,
            cancel_on_kill=cancel_on_kill,
            cancel_on_timeout=cancel_on_timeout,
            retry_failed=retry_failed,
        )

    def batch_llm(self) -> Any:
        return self.make_llm(self.llm, self.llm_kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from curator_flows import steps

        llm = self.batch_llm()
        credentials = self.credentials()
        pointer = self.run_pointer(llm, context, credentials)
        if pointer is not None:  # a later reschedule-mode poke of this try
            self.log.info("run %s (from this try's first poke)", pointer["run_uri"])
            return self.run_batches(
                context, pointer["run_uri"], pointer["shards"], llm, credentials
            )
        dataset = self.input_dataset(context)
        run = self.step(
            steps.prepare,
            llm,
            dataset,
            self.working_dir_for(self.working_dir, credentials),
            run_key=self.run_key or None,
            credentials=credentials,
            rebuild_check=False,  # every step of this task gets llm=
        )
        self.log.info(
            "run %s (%s, %s): %d requests in %d shard(s), %d pending, %d reused",
            run["run_uri"],
            run["mode"],
            run["model_name"],
            run["requests"],
            len(run["shards"]),
            run["pending"],
            run["reused_responses"],
        )
        if run["mode"] == "batch":
            if not self.deferrable:
                self.keep_run_pointer(context, run, credentials)
            return self.run_batches(context, run["run_uri"], run["shards"], llm, credentials)
        generate = steps.run_online if run["mode"] == "online" else steps.run_offline
        result = self.step(generate, run["run_uri"], None, llm=llm, credentials=credentials)
        self.log.info(
            "sent %d, %d succeeded, %d failed, %d rate limited, $%.4f",
            result["sent"],
            result["succeeded"],
            result["failed"],
            result["rate_limited"],
            result["cost"],
        )
        return self.batches_done(context, run["run_uri"], llm, credentials)

    def input_dataset(self, context: Context) -> Any:
        """The dataset this try prepares its run from: called once per try, before ``prepare``;
        never by a later reschedule-mode poke that finds the try's run, nor on resuming from a
        deferral (``@task.curator`` calls its function here)."""
        return resolve_dataset(self.dataset, self.dataset_callable, context)

    def batches_done(
        self, context: Context, run_uri: str, llm: Any, credentials: Any
    ) -> dict[str, Any]:
        """Finalize (and publish); the manifest goes to XCom and the asset event."""
        manifest = self.finalize_and_publish(
            context, run_uri, llm=llm, credentials=credentials, input_uri=self.dataset
        )
        if self.pokes(llm):
            from .run_pointer import remove_pointer

            remove_pointer(self.pointer_uri(context), credentials.storage_options)
        return manifest

    # ------------------------------------------------------------ reschedule-mode pokes
    def pokes(self, llm: Any) -> bool:
        """Whether this task waits for batches in reschedule-mode pokes (only a batch LLM
        without ``deferrable``: online and offline runs never read or write a pointer)."""
        return not self.deferrable and getattr(llm, "mode", None) == "batch"

    def pointer_uri(self, context: Context) -> str:
        from .run_pointer import pointer_uri

        return pointer_uri(self.working_dir or None, context["ti"])

    def run_pointer(self, llm: Any, context: Context, credentials: Any) -> dict[str, Any] | None:
        """The run this try's first reschedule-mode poke prepared (``None``: prepare it)."""
        if not self.pokes(llm):
            return None
        from .run_pointer import read_pointer

        return read_pointer(self.pointer_uri(context), credentials.storage_options)

    def keep_run_pointer(self, context: Context, run: Any, credentials: Any) -> None:
        """Record the prepared run for this try's later pokes (see
        :mod:`airflow_provider.operators.run_pointer`)."""
        from .run_pointer import write_pointer

        pointer = {"run_uri": run["run_uri"], "shards": list(run["shards"]), "mode": run["mode"]}
        self.step(write_pointer, self.pointer_uri(context), credentials.storage_options, pointer)
