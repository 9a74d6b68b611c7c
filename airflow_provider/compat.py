"""The Airflow names that moved between the releases the provider supports (Airflow 3.1.1 up to,
not including, 4), each imported from the newest place that has it, and the behaviour a newer
Airflow adds. Provider modules import a moved name from here, never from one release's place.

Invariants:
- a name is looked up newest place first, so the provider follows Airflow's current layout and
  falls back only where an older release lacks it (the same places Airflow's own
  ``apache-airflow-providers-common-compat`` maps);
- an older Airflow degrades only what it cannot do, and says so in one log line
  (:func:`cancel_on_kill_note`), never with an import error;
- importing this module imports no more of Airflow than the provider modules already do.

What moved:
- the task-SDK exceptions: ``airflow.sdk.exceptions`` from 3.2, ``airflow.exceptions`` in 3.1
  (the same classes the 3.1 task runner catches);
- the configuration: ``airflow.sdk.configuration.conf`` from 3.2, ``airflow.configuration.conf``
  in 3.1;
- ``literal`` (a value Airflow does not render): ``airflow.sdk`` from 3.1.8,
  ``airflow.sdk.definitions.template`` before;
- ``determine_kwargs`` (the arguments a callable takes from the context):
  ``airflow.sdk.bases.decorator`` from 3.2, ``airflow.utils.operator_helpers`` in 3.1.

What a newer Airflow does itself:
- from 3.3, ``.partial()`` gives a mapped task the operator's own ``__init__`` defaults of
  BaseOperator arguments (a ``map_index_template``, a GPU ``queue``); before 3.3 it gives
  Airflow's global ones, and :func:`partial_with_init_defaults` puts the operator's back.

What a newer Airflow adds:
- from 3.3, a triggerer calls a trigger's ``on_kill`` when a user action (marking the deferred
  task failed or succeeded, clearing it) cancels the trigger; before 3.3 nothing tells a
  trigger, so ``cancel_on_kill`` cannot cancel the batches of a deferred task that was killed
  (they run to their end, and ``curator-flows cancel`` cancels them by hand).
"""

from __future__ import annotations

import inspect
from typing import Any

try:  # Airflow >= 3.2
    from airflow.sdk.configuration import conf
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowRescheduleException,
        TaskDeferred,
    )
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf  # type: ignore[no-redef]
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowRescheduleException,
        TaskDeferred,
    )
try:  # Airflow >= 3.1.8
    from airflow.sdk import literal
except ImportError:  # Airflow < 3.1.8
    from airflow.sdk.definitions.template import literal  # type: ignore[no-redef]

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowRescheduleException",
    "TaskDeferred",
    "airflow_version",
    "cancel_on_kill_note",
    "conf",
    "determine_kwargs",
    "literal",
    "partial_with_init_defaults",
    "triggerer_calls_on_kill",
]


def determine_kwargs(func: Any, args: Any, kwargs: Any) -> Any:
    """Airflow's ``determine_kwargs``: the keyword arguments of ``kwargs`` that ``func`` takes
    (imported when called: the decorator's module is not needed to parse a DAG)."""
    try:  # Airflow >= 3.2
        from airflow.sdk.bases.decorator import determine_kwargs as determine
    except ImportError:  # Airflow 3.1
        from airflow.utils.operator_helpers import determine_kwargs as determine
    return determine(func, args, kwargs)


def airflow_version() -> str:
    """The installed Airflow's version (``"3.1.8"``)."""
    from airflow import __version__

    return __version__


def triggerer_calls_on_kill() -> bool:
    """Whether this Airflow's triggerer calls ``BaseTrigger.on_kill`` on a user action (3.3+:
    the base class defines the hook the triggerer calls)."""
    from airflow.triggers.base import BaseTrigger

    return callable(getattr(BaseTrigger, "on_kill", None))


def cancel_on_kill_note(run_uri: str) -> str | None:
    """The one log line a ``cancel_on_kill`` trigger writes when this Airflow cannot honour it
    (``None``: it can)."""
    if triggerer_calls_on_kill():
        return None
    return (
        f"cancel_on_kill needs Airflow 3.3 or later (this is Airflow {airflow_version()}, whose "
        "triggerer does not tell a trigger that its task was killed): if this task is marked "
        "failed or succeeded or cleared while it waits, the batches of "
        f"{run_uri} keep running; cancel them with `curator-flows cancel {run_uri}`"
    )


def init_defaults(operator_class: type) -> dict[str, Any]:
    """The defaults the ``__init__`` of ``operator_class`` and of its bases below
    ``BaseOperator`` give to BaseOperator arguments (``{"map_index_template": ...}``), the
    nearest class first."""
    from airflow.sdk import BaseOperator
    from airflow.sdk.bases.operator import OPERATOR_DEFAULTS

    defaults: dict[str, Any] = {}
    for owner in operator_class.mro():
        if owner is BaseOperator:
            break
        init = owner.__dict__.get("__init__")
        if init is None:
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            if name in OPERATOR_DEFAULTS and parameter.default is not inspect.Parameter.empty:
                defaults.setdefault(name, parameter.default)
    return defaults


def partial_with_init_defaults(operator_class: type, partial: Any, kwargs: dict[str, Any]) -> Any:
    """``partial`` (what ``operator_class.partial(**kwargs)`` returned) with every BaseOperator
    argument that neither ``kwargs``, the task's ``default_args`` nor its DAG's or task group's
    ``default_args`` set taken from the operator's own ``__init__`` default, as Airflow 3.3's
    ``.partial()`` does (a no-op there)."""
    given = set(kwargs) | set(kwargs.get("default_args") or {})
    for owner in (partial.kwargs.get("dag"), partial.kwargs.get("task_group")):
        given |= set(getattr(owner, "default_args", None) or {})
    for name, default in init_defaults(operator_class).items():
        if name not in given:
            partial.kwargs[name] = default
    return partial
