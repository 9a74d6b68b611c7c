"""Running a DAG with ``dag.test()`` and reading what it left in the metadata database."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

_counter = itertools.count()


def load_dag(path: str | Path, dag_id: str):
    """The DAG ``dag_id`` of the file at ``path``, imported afresh (module constants that read
    the environment are read now)."""
    spec = importlib.util.spec_from_file_location(f"_dagfile_{next(_counter)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    for value in vars(module).values():
        if isinstance(value, DAG) and value.dag_id == dag_id:
            return value
    raise LookupError(f"no DAG {dag_id!r} bound to a name in {path}")


def run_dag(dag, **conf: Any):
    """One ``dag.test()`` run with ``conf`` as the run's params; returns the ``DagRun``."""
    return dag.test(run_conf=conf or None)


def task_instances(dag_run) -> dict[tuple[str, int], Any]:
    """``{(task_id, map_index): TaskInstance}`` of a finished run."""
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = dag_run.get_task_instances(session=session)
        for ti in tis:
            session.expunge(ti)
    return {(ti.task_id, ti.map_index): ti for ti in tis}


def states(dag_run) -> dict[tuple[str, int], str]:
    return {key: str(ti.state) for key, ti in task_instances(dag_run).items()}


def xcom(dag_run, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
    """The XCom value a task pushed in ``dag_run``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == key,
            )
        ).first()
        if row is None:
            raise LookupError(f"no XCom {key!r} of {task_id}[{map_index}]")
        return XComModel.deserialize_value(row)


def all_xcom_text(dag_run) -> str:
    """Every XCom value of the run, as stored (for secret scans)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id
            )
        ).all()
        return "\n".join(str(row.value) for row in rows)


def rendered_fields_text(dag_run) -> str:
    """Every task's rendered template fields, as stored."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(RTIF).where(RTIF.dag_id == dag_run.dag_id, RTIF.run_id == dag_run.run_id)
        ).all()
        return "\n".join(str(row.rendered_fields) for row in rows)


def asset_events(uri: str) -> list[dict[str, Any]]:
    """The ``extra`` of every event of the asset ``uri``, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        asset = session.scalars(select(AssetModel).where(AssetModel.uri == uri)).first()
        if asset is None:
            return []
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.asset_id == asset.id).order_by(AssetEvent.id)
        ).all()
        return [dict(event.extra or {}) for event in events]


def xcom_keys(dag_run, task_id: str, map_index: int = -1) -> list[str]:
    """The keys of every XCom row a task pushed in ``dag_run``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return sorted(
            session.scalars(
                select(XComModel.key).where(
                    XComModel.dag_id == dag_run.dag_id,
                    XComModel.run_id == dag_run.run_id,
                    XComModel.task_id == task_id,
                    XComModel.map_index == map_index,
                )
            ).all()
        )
