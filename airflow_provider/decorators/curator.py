"""``@task.curator``: a TaskFlow function that returns the dataset, run as a
:class:`~airflow_provider.operators.curator.CuratorOperator`.

::

    @task.curator(llm=RecipeGenerator("gpt-4o-mini"), output_uri="s3://b/recipes",
                  partition={"date": "{{ run_date }}"}, run_key="{{ run_date }}")
    def recipes(cuisines):
        return cuisines  # rows, a URI, or an upstream task's manifest / output_uri

The decorator takes exactly ``CuratorOperator``'s arguments except ``dataset`` (the function
returns it) and behaves as that operator: the same run identity, resume, deferrable or
reschedule-mode batch wait, manifest XCom (plus ``output_uri`` and ``run_uri``), outlet asset
and its event, lineage.

Invariants:
- the function runs at most once per try, where the operator resolves its ``dataset``: right
  before ``prepare``. Resuming from the trigger (``execute_complete``) and the later
  reschedule-mode pokes of a try never call it (they work on the run the try prepared); a
  retry calls it again, and the same dataset resumes the same run;
- the function's arguments are templated (``{{ run_date }}`` too) and rendered once per task
  start, with the other template fields; an upstream task's output passed as an argument is
  pulled from XCom then. Its return value is used as is, never rendered;
- a parameter named ``run_date`` that the call does not pass gets ``{{ run_date }}`` (the
  logical date, else the date of the run's ``run_after``), like the context values a TaskFlow
  function names;
- the task's XCom is the operator's manifest, never the function's return value (so
  ``multiple_outputs`` is not inferred from the function's return annotation).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory

from ..compat import determine_kwargs
from ..operators.curator import CuratorOperator

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator

#: the template a ``run_date`` parameter gets when the call does not pass one
RUN_DATE_ARGUMENT = "{{ run_date }}"


def with_run_date(
    function: Callable[..., Any], op_args: Collection[Any], op_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """``op_kwargs`` with ``run_date`` set to :data:`RUN_DATE_ARGUMENT` when ``function`` has
    a ``run_date`` parameter that neither ``op_args`` nor ``op_kwargs`` fills."""
    op_kwargs = dict(op_kwargs)
    parameters = list(inspect.signature(function).parameters.values())
    names = [p.name for p in parameters]
    if "run_date" not in names or "run_date" in op_kwargs:
        return op_kwargs
    parameter = parameters[names.index("run_date")]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if parameter.kind in positional and names.index("run_date") < len(op_args):
        return op_kwargs
    if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
        return op_kwargs  # cannot be passed by name; the function's own default applies
    op_kwargs["run_date"] = RUN_DATE_ARGUMENT
    return op_kwargs


class _CuratorDecoratedOperator(DecoratedOperator, CuratorOperator):
    """``CuratorOperator`` whose dataset is what ``python_callable`` returns (see the module
    docstring). ``op_args`` and ``op_kwargs`` are the function's arguments (templated)."""

    template_fields: Sequence[str] = (
        *DecoratedOperator.template_fields,
        *(name for name in CuratorOperator.template_fields if name != "dataset"),
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **{k: v for k, v in CuratorOperator.template_fields_renderers.items() if k != "dataset"},
    }
    custom_operator_name: str = "@task.curator"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "dataset" in kwargs:
            raise TypeError(
                "@task.curator takes no dataset=: the decorated function returns the dataset "
                "(rows, a URI, or an upstream task's output passed to it as an argument)"
            )
        op_args = list(op_args or [])
        op_kwargs = with_run_date(python_callable, op_args, op_kwargs or {})
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs
        )

    def input_dataset(self, context: Context) -> Any:
        """Call the function with its rendered arguments and the context values it names; what
        it returns is the dataset (kept as the run's input for lineage when it is a URI)."""
        kwargs = determine_kwargs(self.python_callable, self.op_args, {**context, **self.op_kwargs})
        dataset = self.python_callable(*self.op_args, **kwargs)
        if dataset is None:
            from curator_flows.errors import ConfigError

            from ..exceptions import raise_for

            raise_for(
                ConfigError(
                    f"@task.curator function {self.python_callable.__name__!r} (task "
                    f"{self.task_id!r}) returned None: return the dataset (rows, a URI, or an "
                    "upstream task's output); for one request without input rows return [{}]"
                )
            )
        self.dataset = dataset if isinstance(dataset, str) else None
        return dataset

    # The dataset's URI (lineage's input) is kept where the try goes on without calling the
    # function again: the resume kwargs of a deferral, the pointer of reschedule-mode pokes.
    def defer(
        self,
        *,
        trigger: Any,
        method_name: str,
        kwargs: dict[str, Any] | None = None,
        timeout: Any = None,
    ) -> NoReturn:
        kwargs = {**(kwargs or {}), "input_uri": self.dataset}
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def execute_complete(
        self, context: Context, event: dict[str, Any], input_uri: str | None = None
    ) -> Any:
        """Resume after the trigger's event, as ``CuratorOperator`` does (the function does not
        run again)."""
        self.dataset = input_uri
        return super().execute_complete(context, event)

    def keep_run_pointer(self, context: Context, run: Any, credentials: Any) -> None:
        from ..operators.run_pointer import write_pointer

        pointer = {
            "run_uri": run["run_uri"],
            "shards": list(run["shards"]),
            "mode": run["mode"],
            "input_uri": self.dataset,
        }
        self.step(write_pointer, self.pointer_uri(context), credentials.storage_options, pointer)

    def run_pointer(self, llm: Any, context: Context, credentials: Any) -> dict[str, Any] | None:
        pointer = super().run_pointer(llm, context, credentials)
        if pointer is not None:
            self.dataset = pointer.get("input_uri")
        return pointer


def curator_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """``@task.curator(llm=..., working_dir=..., output_uri=..., run_key=..., ...)``: wrap a
    function that returns the dataset into a ``CuratorOperator`` task.

    :param python_callable: the function (given when the decorator is used bare).
    :param multiple_outputs: push each manifest key as an XCom of its own (default ``False``:
        the manifest is one XCom, ``output_uri`` and ``run_uri`` are pushed on their own too).
    :param kwargs: ``CuratorOperator``'s arguments (``llm``, ``working_dir``, ``output_uri``,
        ``partition``, ``run_key``, ``conn_id``, ``max_failed_fraction``, ``deferrable``,
        ``poll_interval``, ``batch_timeout``, ...) and ``BaseOperator``'s.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=bool(multiple_outputs),
        decorated_operator_class=_CuratorDecoratedOperator,
        **kwargs,
    )
