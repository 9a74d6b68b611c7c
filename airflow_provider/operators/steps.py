"""Granular operators for DAGs that show each step: prepare → one task per shard (mapped with
``.expand(shard=prepare.output)``) → finalize.

Each is one step call; each returns that step's small result (``PrepareResult``,
``ShardResult``, a finalize manifest) for XCom. A retry resumes from the run directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .base import (
    CuratorBaseOperator,
    PublishMixin,
    check_llm_argument,
    resolve_dataset,
    run_uri_of,
    split_dataset,
)

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context


#: the XCom key under which ``CuratorPrepareOperator`` pushes its ``PrepareResult``
RUN_XCOM_KEY = "run"


class CuratorPrepareOperator(CuratorBaseOperator):
    """Render the dataset into request shards. Returns the shard names (map over them:
    ``.expand(shard=prepare.output)``) and pushes the ``PrepareResult`` (``run_uri``, counts)
    under the XCom key ``"run"`` (``prepare.output["run"]``, for ``partial(run=...)``).

    ``llm``, ``dataset``, ``working_dir`` and ``run_key`` as in
    :class:`~airflow_provider.operators.curator.CuratorOperator`. ``rebuild_check``: fail now
    (permanently) when the later tasks, which get only the run URI, could not rebuild the LLM
    from the run manifest (turn it off when every task gets ``llm=``). The run gets at most
    ``[core] max_map_length`` shards (what a mapped task may expand to): shards grow to fit.
    """

    template_fields = ("dataset", "working_dir", "run_key")
    template_fields_renderers = {"dataset": "py"}
    ui_color = "#ebe0ff"

    def __init__(
        self,
        *,
        llm: Any,
        dataset: Any = None,
        working_dir: str | None = None,
        run_key: str | None = None,
        llm_kwargs: dict[str, Any] | None = None,
        rebuild_check: bool = True,
        **kwargs: Any,
    ) -> None:
        check_llm_argument(llm, llm_kwargs)
        super().__init__(**kwargs)
        self.llm = llm
        self.llm_kwargs = llm_kwargs
        self.dataset, self.dataset_callable = split_dataset(dataset)
        self.working_dir = working_dir
        self.run_key = run_key
        self.rebuild_check = rebuild_check

    def execute(self, context: Context) -> list[str]:
        from curator_flows import steps

        from ..compat import conf

        credentials = self.credentials()
        run = self.step(
            steps.prepare,
            self.make_llm(self.llm, self.llm_kwargs),
            resolve_dataset(self.dataset, self.dataset_callable, context),
            self.working_dir_for(self.working_dir, credentials),
            run_key=self.run_key or None,
            credentials=credentials,
            rebuild_check=self.rebuild_check,
            max_shards=conf.getint("core", "max_map_length", fallback=1024),
        )
        self.log.info(
            "run %s: %d requests in shards %s (%d pending, %d reused)",
            run["run_uri"],
            run["requests"],
            run["shards"],
            run["pending"],
            run["reused_responses"],
        )
        context["ti"].xcom_push(key=RUN_XCOM_KEY, value=dict(run))
        return list(run["shards"])


def parallelism(run_uri: str, cap: int | None, explicit: Any, credentials: Any = None) -> int:
    """How many shard tasks run at once: ``explicit``, else the shard count of the prepared run
    at ``run_uri`` (``steps.status``: read from the run directory, whatever the task was given)
    capped by the task's ``max_active_tis_per_dag``."""
    if explicit not in (None, ""):
        return max(1, int(explicit))
    from curator_flows import steps

    shards = len(steps.status(run_uri, credentials=credentials)["shards"])
    return max(1, min(shards, cap) if cap else shards)


class CuratorOnlineShardOperator(CuratorBaseOperator):
    """Send one shard's pending requests; returns its ``ShardResult``.

    :param run: the ``PrepareResult`` (``prepare.output["run"]``) or its ``run_uri``.
    :param shard: the shard (``.expand(shard=prepare.output)``).
    :param parallel_shards: how many shard tasks run at once; each takes that share of the
        provider's RPM/TPM and concurrency, so together they hold the account's limit. Default:
        the prepared run's shard count (read from its run directory), capped by
        ``max_active_tis_per_dag``.
    :param llm: the run's LLM, or ``None`` to rebuild it from the run manifest.
    """

    template_fields = ("run", "shard", "parallel_shards")
    ui_color = "#dccbff"

    def __init__(
        self,
        *,
        run: Any,
        shard: str,
        parallel_shards: int | str | None = None,
        llm: Any = None,
        llm_kwargs: dict[str, Any] | None = None,
        map_index_template: str | None = "{{ task.shard }}",
        **kwargs: Any,
    ) -> None:
        check_llm_argument(llm, llm_kwargs)
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.run = run
        self.shard = shard
        self.parallel_shards = parallel_shards
        self.llm = llm
        self.llm_kwargs = llm_kwargs

    def execute(self, context: Context) -> dict[str, Any]:
        from curator_flows import steps

        run_uri, credentials = run_uri_of(self.run), self.credentials()
        share = self.step(
            parallelism,
            run_uri,
            self.max_active_tis_per_dag,
            self.parallel_shards,
            credentials,
        )
        result = self.step(
            steps.run_online,
            run_uri,
            self.shard,
            llm=self.make_llm(self.llm, self.llm_kwargs),
            credentials=credentials,
            parallel_shards=share,
        )
        self.log.info(
            "shard %s (1/%d of the limits): sent %d, %d succeeded, %d failed, %d rate limited, "
            "$%.4f",
            self.shard,
            share,
            result["sent"],
            result["succeeded"],
            result["failed"],
            result["rate_limited"],
            result["cost"],
        )
        return dict(result)


class CuratorFinalizeOperator(PublishMixin, CuratorBaseOperator):
    """Parse the stored responses into the run's dataset and publish it to ``output_uri``
    (Parquet, ``_SUCCESS`` last); returns the finalize manifest (rows, counts, tokens, cost),
    with ``output_uri`` and ``run_uri`` also XComs of their own (``op.output["output_uri"]``).
    The outlet asset's event ``extra`` carries the same figures.

    :param run: the ``PrepareResult`` or its ``run_uri``.
    :param output_uri: where to publish (templated, e.g. ``".../recipes/{{ run_date }}"``).
    :param max_failed_fraction: publish only when at most this share of the requests failed
        (default 0.01); past it the task fails with ``TooManyFailuresError`` and nothing is
        published.
    :param partition: publish as this Hive partition of ``output_uri`` (templated, e.g.
        ``{"date": "{{ run_date }}"}``: ``<output_uri>/date=2026-12-04/``, every night one table).
    :param schema_evolution: ``"strict"`` (default: a column added, removed or retyped is
        refused), ``"add_columns"`` or ``"replace"`` (see ``steps.finalize``).
    :param output_asset: the outlet asset (default: from ``output_uri``).
    :param llm: the run's LLM, or ``None`` to rebuild it from the run manifest.
    """

    template_fields = ("run", "output_uri", "partition")
    ui_color = "#b197fc"

    def __init__(
        self,
        *,
        run: Any,
        output_uri: str | None = None,
        max_failed_fraction: float = 0.01,
        partition: dict[str, Any] | None = None,
        schema_evolution: str = "strict",
        output_asset: Asset | str | None = None,
        llm: Any = None,
        llm_kwargs: dict[str, Any] | None = None,
        input_uri: str | None = None,
        multiple_outputs: bool = False,
        **kwargs: Any,
    ) -> None:
        check_llm_argument(llm, llm_kwargs)
        super().__init__(multiple_outputs=multiple_outputs, **kwargs)
        self.attach_asset(output_uri, output_asset)
        self.run = run
        self.output_uri = output_uri
        self.max_failed_fraction = max_failed_fraction
        self.partition = partition
        self.schema_evolution = schema_evolution
        self.llm = llm
        self.llm_kwargs = llm_kwargs
        self.input_uri = input_uri

    def execute(self, context: Context) -> dict[str, Any]:
        return self.finalize_and_publish(
            context,
            run_uri_of(self.run),
            llm=self.make_llm(self.llm, self.llm_kwargs),
            credentials=self.credentials(),
            input_uri=self.input_uri,
            lineage_llm=_RunSummary(self.run),
        )


class _RunSummary:
    """What lineage needs of an LLM the task did not build (model, backend and mode from a
    ``PrepareResult``)."""

    def __init__(self, run: Any) -> None:
        run = run if isinstance(run, Mapping) else {}
        self.model_name = run.get("model_name")
        self.backend = run.get("backend")
        self.mode = run.get("mode")
        self.response_format = None
