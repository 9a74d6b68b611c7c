"""DAGs of the Airflow provider tests (the test session's DAGs folder links this file). Every
path and size comes from the DAG params, so a test runs them with ``dag.test(run_conf=...)``;
the ``curator_test`` connection points at the test's simulator."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, dag, get_current_context
from airflow_llms import FactWriter, Numbered

from airflow_provider import (
    CuratorBatchSensor,
    CuratorCollectOperator,
    CuratorFinalizeOperator,
    CuratorOnlineShardOperator,
    CuratorOperator,
    CuratorPrepareOperator,
    CuratorSubmitBatchOperator,
)

START = pendulum.datetime(2025, 1, 1, tz="UTC")
PARAMS = {"working_dir": "", "rows": 10, "run_key": "night-1", "poll": 0.2}
CONN = "curator_test"


def numbered_rows(params: dict[str, Any]) -> list[dict[str, int]]:
    """The rows; each call (a ``prepare`` reading its input) adds a line to
    ``<working_dir>.reads``."""
    if params["working_dir"]:
        with open(f"{params['working_dir'].rstrip('/')}.reads", "a") as reads:
            reads.write("read\n")
    return [{"n": i} for i in range(int(params["rows"]))]


class FailOnceAfterSubmit(CuratorOperator):
    """Fails right after its batches were created, on its first try only: a worker lost
    between the provider's create calls and the deferral."""

    def wait_for(self, run_uri: str, live: list[str]):
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("worker lost right after submitting its batches")
        return super().wait_for(run_uri, live)


def batch_dag(dag_id: str, operator: type = CuratorOperator, retries: int = 0, **options: Any):
    options.setdefault("deferrable", True)

    @dag(
        dag_id=dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        params=PARAMS,
        default_args={"retries": retries, "retry_delay": timedelta(seconds=0)},
    )
    def batch() -> None:
        operator(
            task_id="facts",
            llm=FactWriter("gpt-4o-mini", batch=True, backend_params={"batch_size": 4}),
            dataset=numbered_rows,
            working_dir="{{ params.working_dir }}",
            run_key="{{ params.run_key }}",
            poll_interval="{{ params.poll }}",
            conn_id=CONN,
            **options,
        )

    return batch()


batch = batch_dag("curator_test_batch")
batch_retry = batch_dag("curator_test_batch_retry", operator=FailOnceAfterSubmit, retries=1)
batch_reschedule = batch_dag("curator_test_batch_reschedule", deferrable=False)
batch_reschedule_deadline = batch_dag(
    "curator_test_batch_reschedule_deadline", retries=1, deferrable=False, batch_timeout=1.0
)


@dag(
    dag_id="curator_test_online",
    schedule=None,
    start_date=START,
    catchup=False,
    params=PARAMS,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=0)},
)
def online() -> None:
    CuratorOperator(
        task_id="numbers",
        llm=Numbered("gpt-4o-mini", backend_params={"seconds_to_pause_on_rate_limit": 0.2}),
        dataset=numbered_rows,
        working_dir="{{ params.working_dir }}",
        run_key="{{ params.run_key }}",
        output_asset=Asset("curator://test/numbers"),
        conn_id=CONN,
    )


online_dag = online()


@dag(
    dag_id="curator_test_logical_date_template",
    schedule=None,
    start_date=START,
    catchup=False,
    params=PARAMS,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=0)},
)
def logical_date_template() -> None:
    """``{{ ds }}``, which a run without a logical date does not have."""
    CuratorOperator(
        task_id="numbers",
        llm=Numbered("gpt-4o-mini"),
        dataset=numbered_rows,
        working_dir="{{ params.working_dir }}",
        output_uri="{{ params.working_dir }}/out/{{ ds }}",
        run_key="{{ ds }}",
        conn_id=CONN,
    )


logical_date_template_dag = logical_date_template()


@dag(
    dag_id="curator_test_online_shards",
    schedule=None,
    start_date=START,
    catchup=False,
    params={**PARAMS, "rows": 240},
)
def online_shards() -> None:
    llm = Numbered("gpt-4o-mini", backend_params={"shard_size": 60, "progress": "log"})
    prepare = CuratorPrepareOperator(
        task_id="prepare",
        llm=llm,
        dataset=numbered_rows,
        working_dir="{{ params.working_dir }}",
        run_key="{{ params.run_key }}",
        conn_id=CONN,
    )
    shards = CuratorOnlineShardOperator.partial(
        task_id="shard", run=prepare.output["run"], max_active_tis_per_dag=4, conn_id=CONN
    ).expand(shard=prepare.output)
    shards >> CuratorFinalizeOperator(task_id="finalize", run=prepare.output["run"], conn_id=CONN)


online_shards_dag = online_shards()


@dag(
    dag_id="curator_test_batch_steps",
    schedule=None,
    start_date=START,
    catchup=False,
    params={**PARAMS, "rows": 7},
)
def batch_steps() -> None:
    llm = FactWriter("gpt-4o-mini", batch=True, backend_params={"batch_size": 4})
    prepare = CuratorPrepareOperator(
        task_id="prepare",
        llm=llm,
        dataset=numbered_rows,
        working_dir="{{ params.working_dir }}",
        run_key="{{ params.run_key }}",
        conn_id=CONN,
    )
    run = prepare.output["run"]
    submit = CuratorSubmitBatchOperator.partial(task_id="submit", run=run, conn_id=CONN)
    wait = CuratorBatchSensor.partial(
        task_id="wait", run=run, deferrable=True, poke_interval=0.2, conn_id=CONN
    )
    collect = CuratorCollectOperator.partial(
        task_id="collect", run=run, deferrable=True, poll_interval=0.2, conn_id=CONN
    )
    (
        submit.expand(shard=prepare.output)
        >> wait.expand(shard=prepare.output)
        >> collect.expand(shard=prepare.output)
        >> CuratorFinalizeOperator(task_id="finalize", run=run, llm=llm, conn_id=CONN)
    )


batch_steps_dag = batch_steps()


@dag(
    dag_id="curator_test_trigger_kill",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"run_uri": ""},
)
def trigger_kill() -> None:
    """``probe`` runs ``CuratorBatchTrigger.on_kill`` for the task ``watched`` (its real task
    instance, its state read through Airflow's task-states API) while ``watched`` is deferred
    (a trigger moved to another triggerer), then failed (a user marked it failed); it returns
    whether the run was cancelled after each."""
    import asyncio

    from airflow.sdk import task

    @task
    def probe(params: dict[str, Any], run_id: str) -> list[bool]:
        from airflow.models import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        from airflow_provider import CuratorBatchTrigger
        from curator_flows import steps

        def set_watched(state: TaskInstanceState | None) -> TaskInstance:
            with create_session() as session:
                ti = session.scalars(
                    select(TaskInstance).where(
                        TaskInstance.dag_id == "curator_test_trigger_kill",
                        TaskInstance.run_id == run_id,
                        TaskInstance.task_id == "watched",
                    )
                ).one()
                ti.state = state
                session.flush()
                session.expunge(ti)
                return ti

        cancelled = []
        for state in (TaskInstanceState.DEFERRED, TaskInstanceState.FAILED):
            trigger = CuratorBatchTrigger(params["run_uri"], ["00000"], conn_id=CONN)
            trigger.task_instance = set_watched(state)
            asyncio.run(trigger.on_kill())
            cancelled.append(bool(steps.status(params["run_uri"])["cancelled"]))
        set_watched(None)
        return cancelled

    @task
    def watched() -> None:
        pass

    probe() >> watched()


trigger_kill_dag = trigger_kill()


@dag(
    dag_id="curator_test_poke_kill",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"run_uri": ""},
)
def poke_kill() -> None:
    """A poke-mode sensor that Airflow kills (``execution_timeout``: the task runner calls
    ``on_kill``) while its batch still runs."""
    CuratorBatchSensor(
        task_id="wait",
        run="{{ params.run_uri }}",
        shard="00000",
        mode="poke",
        poke_interval=0.2,
        execution_timeout=timedelta(seconds=2),
        conn_id=CONN,
    )


poke_kill_dag = poke_kill()


@dag(
    dag_id="curator_test_publish_gate",
    schedule=None,
    start_date=START,
    catchup=False,
    params={**PARAMS, "output_uri": ""},
    default_args={"retries": 0},
)
def publish_gate() -> None:
    """Publishes to ``params.output_uri`` only when at most 1% of the requests failed."""
    CuratorOperator(
        task_id="numbers",
        llm=Numbered("gpt-4o-mini", backend_params={"max_retries": 0}),
        dataset=numbered_rows,
        working_dir="{{ params.working_dir }}",
        run_key="{{ params.run_key }}",
        output_uri="{{ params.output_uri }}",
        max_failed_fraction=0.01,
        conn_id=CONN,
    )


publish_gate_dag = publish_gate()
