"""Reading what a flow run left on the Prefect server: task runs, artifacts, logs, events."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID


def client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def flow_run_id(state: Any) -> UUID:
    return state.state_details.flow_run_id


def flow_run(run_id: UUID) -> Any:
    with client() as c:
        return c.read_flow_run(run_id)


def subflow_runs(parent: UUID) -> list[Any]:
    """The flow runs started as subflows of the flow run ``parent``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with client() as c:
        return c.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )


def _runs(run_ids: list[UUID]) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=list(run_ids)))


def task_runs(*run_ids: UUID, settle: float = 2.0, timeout: float = 30.0) -> list[Any]:
    """The task runs of the flow runs, once the server has recorded them: Prefect records task
    runs from the events a flow process sends, after the flow run itself may have ended, so
    this reads until every task run is in a final state and the reads of ``settle`` seconds
    agree (or ``timeout`` passes: then what the server has)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=5)
    deadline = time.monotonic() + timeout
    seen: list[tuple[str, str]] | None = None
    seen_since = time.monotonic()
    while True:
        with client() as c:
            runs = c.read_task_runs(flow_run_filter=_runs(list(run_ids)), limit=200)
        now = sorted((str(r.id), r.state.name if r.state else "") for r in runs)
        if now != seen:
            seen, seen_since = now, time.monotonic()
        final = all(r.state is not None and r.state.is_final() for r in runs)
        settled = final and time.monotonic() - seen_since >= settle
        if settled or time.monotonic() > deadline:
            return runs
        time.sleep(0.25)


def artifacts(*run_ids: UUID) -> list[Any]:
    with client() as c:
        return c.read_artifacts(flow_run_filter=_runs(list(run_ids)), limit=200)


def artifacts_by_key(key: str) -> list[Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with client() as c:
        return c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def logs(*run_ids: UUID) -> list[Any]:
    """Every log line of the flow runs (and their task runs), after the handler flushed."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    time.sleep(0.5)
    with client() as c:
        return c.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(run_ids))), limit=200
        )


def events(prefix: str, resource_id: str | None = None, timeout: float = 15.0) -> list[dict]:
    """Events whose name starts with ``prefix`` (polled: the server persists them async)."""
    deadline = time.monotonic() + timeout
    while True:
        with client() as c:
            body: dict[str, Any] = {"filter": {"event": {"prefix": [prefix]}}, "limit": 50}
            found = c.request("POST", "/events/filter", json=body).json().get("events", [])
        if resource_id is not None:
            found = [e for e in found if e["resource"]["prefect.resource.id"] == resource_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def task_runs_named(name: str, of_running_flow_runs: bool = False) -> list[Any]:
    """Task runs called ``name`` (only those of flow runs still running, if asked)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterName,
    )
    from prefect.client.schemas.objects import StateType

    runs = None
    if of_running_flow_runs:
        running = FlowRunFilterStateType(any_=[StateType.RUNNING])
        runs = FlowRunFilter(state=FlowRunFilterState(type=running))
    with client() as c:
        return c.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])),
            flow_run_filter=runs,
        )
