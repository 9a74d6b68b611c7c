"""Rendering the template fields of the Curator operators: the ``run_date`` context value, and a
value a run does not have as a permanent error.

``{{ run_date }}`` is the run's logical date as ``YYYY-MM-DD`` or, for a run without one
(``airflow dags trigger``, the REST API with ``"logical_date": null``, an asset-triggered run),
the date of its ``run_after``. Every run has it, and it stays the same across the run's retries
and clears, so ``run_key="{{ run_date }}"`` makes a retry resume its night. Other operators can
use the same expression, :data:`RUN_DATE`.

Invariant: a template that names a value the run does not have (``{{ ds }}`` in a run without a
logical date, a misspelt param) fails the task at once with
:class:`~airflow_provider.exceptions.CuratorPermanentError` naming the field and its template:
rendering it again gives the same error, so Airflow must not retry it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

#: ``{{ run_date }}`` for any operator (the Curator operators add ``run_date`` to the context)
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
#: the context keys a run without a logical date does not have
LOGICAL_DATE_KEYS = (
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "ts_nodash_with_tz",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
)


def run_date(context: Mapping[str, Any]) -> str | None:
    """The run's logical date, else the date of its ``run_after`` (``YYYY-MM-DD``); ``None``
    without a ``dag_run`` in the context."""
    dag_run = context.get("dag_run")
    when = getattr(dag_run, "logical_date", None) or getattr(dag_run, "run_after", None)
    return when.strftime("%Y-%m-%d") if when is not None else None


def add_run_date(context: MutableMapping[str, Any]) -> None:
    """Put ``run_date`` into the task's context (for its templates and the callables it
    calls with context values)."""
    if "run_date" not in context:
        value = run_date(context)
        if value is not None:
            context["run_date"] = value


def undefined_message(task_id: str, field: str, template: Any, exc: BaseException) -> str:
    """What to say about ``field`` of ``task_id`` whose ``template`` names an undefined
    value."""
    text = str(template)
    if len(text) > 300:
        text = text[:300] + "..."
    hint = ""
    if any(key in str(exc) or key in text for key in LOGICAL_DATE_KEYS):
        hint = (
            " A run without a logical date (`airflow dags trigger`, the REST API with "
            '"logical_date": null, an asset-triggered run) has no ds, ts, logical_date or '
            "data_interval_*: use {{ run_date }} (the logical date, else the date of the run's "
            f"run_after, the same across retries), or {RUN_DATE} in other operators."
        )
    return (
        f"task {task_id!r}: the template of {field} ({text!r}) uses a value this run does not "
        f"have: {exc}.{hint} Permanent: Airflow will not retry this task"
    )
