"""What every Curator operator shares: the connection, the LLM, the run it works on, template
rendering, the outlet asset and lineage of a published dataset.

Invariants:
- an operator is a few lines around one step call; all state lives in the run directory, so
  running any operator again (an Airflow retry, a cleared task) resumes instead of redoing;
- credentials come from the ``curator`` connection at run time, are passed to the step and never
  kept on the operator, returned or logged;
- every library error goes through :func:`airflow_provider.exceptions.raise_for`;
- templates get ``{{ run_date }}`` (:mod:`airflow_provider.templating`), and a template naming
  a value the run does not have fails the task permanently;
- with the embedded simulator (a connection whose host is ``embedded-simulator``) runs go to
  ``<working_dir>/_simulated`` and datasets are published to a ``_simulated`` folder next to
  ``output_uri`` (:mod:`airflow_provider.hooks.embedded`): never where a real run writes or
  reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator

from ..assets import default_asset
from ..exceptions import is_permanent, raise_for

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Asset, Context

    from curator_flows.credentials import Credentials
    from curator_flows.llm import LLM

    from ..hooks.curator import CuratorHook

LLMLike = Any  # an LLM instance, or "package.module:Class" (built with llm_kwargs)
#: the XCom keys a publishing operator pushes besides its manifest (``return_value``): what
#: downstream tasks read (``op.output["output_uri"]``)
DOWNSTREAM_XCOM_KEYS = ("output_uri", "run_uri")


def run_uri_of(run: Any) -> str:
    """The run URI of ``run``: a URI, or a step result (``PrepareResult``, ...) holding one."""
    if isinstance(run, Mapping):
        return str(run["run_uri"])
    if not isinstance(run, str) or not run:
        raise ValueError(f"run must be a run URI or a step result with 'run_uri', got {run!r}")
    return run


def check_llm_argument(llm: LLMLike, llm_kwargs: dict[str, Any] | None) -> None:
    """Parse-time checks of ``llm`` / ``llm_kwargs`` (nothing imported, nothing sent)."""
    if isinstance(llm, str):
        module, _, qualname = llm.partition(":")
        if not module or not qualname:
            raise ValueError(f"llm={llm!r}: an import path must look like 'package.module:Class'")
    elif llm_kwargs:
        raise ValueError("llm_kwargs only goes with llm given as an import path ('pkg.mod:Class')")
    if llm_kwargs and "api_key" in (llm_kwargs.get("backend_params") or {}):
        raise ValueError(
            "llm_kwargs['backend_params'] must not hold an API key: put it in the connection's "
            "password"
        )


def build_llm(llm: LLMLike, llm_kwargs: dict[str, Any] | None, defaults: dict[str, Any]) -> Any:
    """``llm`` as an LLM (``None`` stays ``None``: the steps rebuild it from the run): an
    instance as is; an import path built with ``llm_kwargs``, whose ``backend_params`` go over
    the connection's ``defaults``."""
    if llm is None:
        return None
    from curator_flows import steps

    return steps.build_llm(llm, llm_kwargs, backend_defaults=defaults)


def call_with_context(function: Any, context: Mapping[str, Any]) -> Any:
    """Call ``function`` with the context values its parameters name (all of them for
    ``**kwargs``), as Airflow calls ``@task`` functions."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return function(**context)
    names = [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    return function(**{name: context[name] for name in names if name in context})


def split_dataset(dataset: Any) -> tuple[Any, Any]:
    """``(templated part, callable)`` of a ``dataset`` argument: a callable is kept out of the
    template fields (Airflow would call it with ``context`` and ``jinja_env``); inline rows are
    data, not templates (wrapped in ``literal``); a URI or an ``XComArg`` is rendered."""
    if callable(dataset) and not isinstance(dataset, type) and not hasattr(dataset, "__iter__"):
        return None, dataset
    if isinstance(dataset, list | tuple):
        from ..compat import literal

        return literal(list(dataset)), None
    return dataset, None


def resolve_dataset(dataset: Any, dataset_callable: Any, context: Mapping[str, Any]) -> Any:
    """The dataset a step gets: the callable's result (called with the context values it
    names), else the rendered value (rows, a URI, an upstream output URI, a
    ``CuratorResponse``) as is."""
    if dataset_callable is not None:
        return call_with_context(dataset_callable, context)
    from ..compat import literal

    # The wrapper's class is not public; its type is taken from the public ``literal()``.
    if isinstance(dataset, type(literal(None))):  # not rendered (execute called directly)
        return dataset.value
    return dataset


class CuratorBaseOperator(BaseOperator):
    """Base of the Curator operators.

    :param conn_id: the ``curator`` connection (API key, base URL, provider, backend params,
        storage options). A connection that does not exist fails the task permanently; the
        embedded simulator is a connection too (host ``embedded-simulator``, see
        :mod:`airflow_provider.hooks.embedded`).
    """

    ui_color = "#f3e9ff"

    def __init__(
        self,
        *,
        conn_id: str = "curator_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id

    def render_template_fields(
        self, context: Context, jinja_env: jinja2.Environment | None = None
    ) -> None:
        """Airflow's rendering, with ``run_date`` in the context, one field at a time: a
        template naming a value the run does not have raises
        :class:`~airflow_provider.exceptions.CuratorPermanentError` naming the field."""
        import jinja2

        from ..templating import add_run_date, undefined_message

        add_run_date(context)  # type: ignore[arg-type]
        jinja_env = jinja_env or self.get_template_env()
        seen: set[int] = set()
        for field in self.template_fields:
            template = getattr(self, field, None)
            try:
                self._do_render_template_fields(self, (field,), context, jinja_env, seen)
            except jinja2.UndefinedError as exc:
                from curator_flows.errors import ConfigError

                raise_for(ConfigError(undefined_message(self.task_id, field, template, exc)))

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Airflow's ``.partial()``, whose mapped tasks keep this operator's own defaults
        (``map_index_template``, a GPU ``queue``) on every supported Airflow
        (:func:`~airflow_provider.compat.partial_with_init_defaults`)."""
        from ..compat import partial_with_init_defaults

        return partial_with_init_defaults(cls, super().partial(**kwargs), kwargs)

    @property
    def hook(self) -> CuratorHook:
        """A hook on the connection as it is now (a new one per use: an operator object can
        outlive a connection change, e.g. across ``dag.test()`` runs in one process)."""
        from ..hooks.curator import CuratorHook

        return CuratorHook(self.conn_id)

    def credentials(self) -> Credentials:
        """The connection as ``Credentials`` (see :meth:`connection_error` for failures)."""
        try:
            return self.hook.credentials()
        except Exception as exc:  # noqa: BLE001 - classified
            self.connection_error(exc)

    def connection_error(self, exc: BaseException) -> NoReturn:
        """Raise a connection problem the Airflow way: a connection that does not exist, or
        whose extras cannot be used (a ``ConfigError``), is permanent; any other lookup error
        (a secrets backend, the Execution API) is raised as is, so Airflow retries the task.

        Airflow 3.3's secrets-backend chain reports an Execution API failure during the lookup
        as the same ``AirflowNotFoundException`` as a missing connection (its backend returns
        nothing on any error), so that case is permanent too; the message says so."""
        from ..compat import AirflowNotFoundException

        if isinstance(exc, AirflowNotFoundException):
            from curator_flows.errors import ConfigError

            error = ConfigError(
                f"{exc} (if it does exist, Airflow could not reach its API server to read it: "
                "clear the task once it is back)"
            )
            raise_for(error)
        raise_for(exc)

    def make_llm(self, llm: LLMLike, llm_kwargs: dict[str, Any] | None = None) -> LLM | None:
        """The LLM of this task (``None``: the steps rebuild it from the run manifest), checked
        against the connection's provider."""
        hook = self.hook
        try:
            defaults, provider = hook.backend_params(), hook.provider()
        except Exception as exc:  # noqa: BLE001 - classified
            self.connection_error(exc)
        try:
            built = build_llm(llm, llm_kwargs, defaults)
            if built is not None:
                from curator_flows.credentials import check_provider

                check_provider(
                    built.backend,
                    provider,
                    source=f"connection {self.conn_id!r}",
                    remedy=f"use a {built.backend} connection (conn_id=...)",
                )
        except Exception as exc:  # noqa: BLE001 - classified
            if not hasattr(exc, "retryable"):
                from curator_flows.errors import ConfigError

                exc = ConfigError(f"building llm={llm!r} failed: {type(exc).__name__}: {exc}")
            raise_for(exc)
        if built is not None and not isinstance(llm, str):
            ignored = sorted(set(defaults) - set(built.backend_params))
            if ignored:
                self.log.info(
                    "connection %r backend_params %s apply to LLMs given as an import path; "
                    "this LLM instance keeps its own",
                    self.conn_id,
                    ignored,
                )
        return built

    def step(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call one step with its errors mapped onto Airflow's retry rules (a batch the
        embedded simulator of this process does not know gets an explanation)."""
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified and re-raised
            from ..hooks.embedded import explain_lost_batch, is_embedded

            if is_permanent(exc) and is_embedded(kwargs.get("credentials")):
                exc = explain_lost_batch(exc)
            raise_for(exc)

    def working_dir_for(self, working_dir: str | None, credentials: Any) -> str | None:
        """Where this task's run goes: ``working_dir`` (``None``: the library's default), under
        the embedded simulator its ``_simulated`` subdirectory (a real run with the same inputs
        never re-opens a simulated run)."""
        from ..hooks.embedded import is_embedded, simulated_working_dir

        if not is_embedded(credentials):
            return working_dir or None
        from .run_pointer import working_dir_of

        return simulated_working_dir(working_dir_of(working_dir))


def finalize_manifest(result: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    """The small XCom manifest of a finalized run: where it is, counts, tokens, cost (and, from
    the operator, ``simulated``: the embedded simulator produced these rows and costs). It is
    the task's ``return_value``; :data:`DOWNSTREAM_XCOM_KEYS` are pushed on their own too."""
    statistics = result.get("statistics") or {}
    tokens = statistics.get("token_usage") or {}
    cost = statistics.get("cost_info") or {}
    return {
        "run_uri": result["run_uri"],
        "run_id": result["run_id"],
        "output_uri": result.get("output_uri"),
        "rows": result["rows"],
        "requests": result["requests"],
        "succeeded": result["succeeded"],
        "failed": result["failed"],
        "failed_requests_uri": result.get("failed_requests_uri"),
        "failures_by_reason": dict(result.get("failures_by_reason") or {}),
        "asset_uri": result.get("asset_uri"),
        "partition": result.get("partition"),
        "invalid_rows": int(result.get("invalid_rows") or 0),
        "schema": result.get("schema"),
        "input_tokens": int(tokens.get("input") or 0),
        "output_tokens": int(tokens.get("output") or 0),
        "cost": float(cost.get("total_cost") or 0.0),
        **(extra or {}),
    }


class PublishMixin:
    """Finalize, publish, outlet asset event and OpenLineage facets of an operator that ends a
    run.

    The operator sets ``output_uri`` and ``output_asset`` (see :func:`default_asset`, attached
    with :meth:`attach_asset`), optionally ``partition`` (a Hive partition of ``output_uri``,
    e.g. ``{"date": "{{ run_date }}"}``) and ``schema_evolution``, and calls
    :meth:`finalize_and_publish`."""

    output_uri: Any
    output_asset: Asset | None
    #: publish only when at most this share of the run's requests failed (``steps.finalize``)
    max_failed_fraction: float = 0.01
    partition: Any = None
    schema_evolution: str = "strict"
    _lineage: dict[str, Any] | None = None

    def attach_asset(self, output_uri: Any, explicit: Asset | str | None) -> None:
        """Add the outlet asset of ``output_uri`` to the operator's ``outlets`` (call it after
        ``BaseOperator.__init__``: the DAG's params are known then). An ``output_uri`` whose
        location is only known at run time gets the asset ``curator://<dag_id>/<task_id>``,
        and the DAG processor's log says why."""
        from airflow.sdk import Asset

        asset = default_asset(output_uri, explicit, self.params)  # type: ignore[attr-defined]
        if asset is None and isinstance(output_uri, str) and output_uri:
            asset = Asset(f"curator://{self.dag_id}/{self.task_id}")  # type: ignore[attr-defined]
            self.log.info(  # type: ignore[attr-defined]
                "task %s: output_uri=%r has no location known when the DAG is parsed (its "
                "first template is not a param with a default); its asset events go to %s "
                "(pass output_asset= to name another)",
                self.task_id,  # type: ignore[attr-defined]
                output_uri,
                asset.uri,
            )
        self.output_asset = asset
        if asset is not None and asset not in self.outlets:  # type: ignore[attr-defined]
            self.outlets = [*self.outlets, asset]  # type: ignore[attr-defined]

    def finalize_and_publish(
        self,
        context: Context,
        run_uri: str,
        *,
        llm: Any,
        credentials: Any,
        input_uri: Any = None,
        lineage_llm: Any = None,
    ) -> dict[str, Any]:
        """``steps.finalize`` (publishing to ``output_uri``), then the manifest for XCom, its
        figures on the outlet asset's event and what lineage reports. ``lineage_llm``: what
        lineage names as model and backend when ``llm`` is ``None``."""
        from curator_flows import steps

        from ..hooks.embedded import is_embedded, simulated_output_uri

        simulated = is_embedded(credentials)
        output_uri = self.output_uri or None
        if simulated and output_uri:
            output_uri = simulated_output_uri(output_uri)
            self.log.warning(  # type: ignore[attr-defined]
                "embedded simulator: publishing to %s, not to output_uri %s",
                output_uri,
                self.output_uri,
            )
        result = self.step(  # type: ignore[attr-defined]
            steps.finalize,
            run_uri,
            llm=llm,
            credentials=credentials,
            output_uri=output_uri,
            max_failed_fraction=self.max_failed_fraction,
            partition=self.partition or None,
            schema_evolution=self.schema_evolution,
        )
        manifest = finalize_manifest(result, {"simulated": simulated})
        ti = context.get("ti")
        if ti is not None and not getattr(self, "multiple_outputs", False):
            for key in DOWNSTREAM_XCOM_KEYS:
                ti.xcom_push(key=key, value=manifest[key])
        self.log.info(  # type: ignore[attr-defined]
            "finalized %s: %d rows, %d failed, %d+%d tokens, $%.4f%s",
            run_uri,
            manifest["rows"],
            manifest["failed"],
            manifest["input_tokens"],
            manifest["output_tokens"],
            manifest["cost"],
            f"; published to {manifest['output_uri']}" if manifest["output_uri"] else "",
        )
        self.record_publication(context, manifest, llm=llm or lineage_llm, input_uri=input_uri)
        return manifest

    def record_publication(
        self,
        context: Context,
        manifest: Mapping[str, Any],
        *,
        llm: Any = None,
        input_uri: Any = None,
    ) -> None:
        """Put rows, tokens, cost and the schema contract on the outlet asset's event; keep what
        lineage reports."""
        if self.output_asset is not None:
            extra = {
                key: manifest.get(key)
                for key in (
                    "output_uri",
                    "partition",
                    "run_uri",
                    "run_id",
                    "rows",
                    "failed",
                    "invalid_rows",
                    "schema",
                    "input_tokens",
                    "output_tokens",
                    "cost",
                    "simulated",
                )
            }
            context["outlet_events"][self.output_asset].extra.update(extra)
        self._lineage = {
            "manifest": dict(manifest),
            "input_uri": input_uri if isinstance(input_uri, str) else None,
            "model": getattr(llm, "model_name", None),
            "backend": getattr(llm, "backend", None),
            "mode": getattr(llm, "mode", None),
            "response_format": getattr(llm, "response_format", None),
        }

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input and output datasets, the output's schema (from ``response_format``) and a run
        facet with requests, tokens and cost (OpenLineage provider)."""
        if not self._lineage:
            return None
        from ..lineage import operator_lineage

        return operator_lineage(**self._lineage)
