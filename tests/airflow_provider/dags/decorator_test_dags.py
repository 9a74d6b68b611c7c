"""DAGs of the ``@task.curator`` tests (the test session's DAGs folder links this file). Paths and
sizes come from the DAG params (``dag.test(run_conf=...)``); the ``curator_test`` connection
points at the test's simulator. Every call of a decorated function appends a JSON line to
``<working_dir>.calls``, so a test counts the calls across tries, deferrals and pokes."""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task
from airflow.sdk.bases.decorator import task_decorator_factory
from airflow_llms import FactWriter, Numbered

from airflow_provider.decorators.curator import _CuratorDecoratedOperator

START = pendulum.datetime(2025, 1, 1, tz="UTC")
CONN = "curator_test"
PARAMS = {
    "working_dir": "",
    "output_root": "",
    "rows": 10,
    "run_key": "night-1",
    "poll": 0.2,
    "marker": "",
}


def record_call(params: dict[str, Any], **values: Any) -> None:
    """One line in ``<working_dir>.calls``: the function ran (in which try, with ``values``)."""
    ti = get_current_context()["ti"]
    line = json.dumps({"task_id": ti.task_id, "try_number": ti.try_number, **values})
    path = Path(f"{params['working_dir'].rstrip('/')}.calls")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as calls:
        calls.write(line + "\n")


@dag(
    dag_id="curator_test_decorated_online",
    schedule=None,
    start_date=START,
    catchup=False,
    params=PARAMS,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=0)},
)
def decorated_online() -> None:
    @task.curator(
        llm=Numbered(
            "gpt-4o-mini",
            backend_params={"seconds_to_pause_on_rate_limit": 0.2, "max_retries": 0},
        ),
        working_dir="{{ params.working_dir }}",
        output_uri="{{ params.output_root }}/numbers",
        partition={"date": "{{ run_date }}"},
        run_key="{{ run_date }}",
        output_asset=Asset("curator://test/decorated-numbers"),
        conn_id=CONN,
    )
    def numbers(marker: str, run_date: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        record_call(params, marker=marker, run_date=run_date)
        return [{"n": i, "marker": marker} for i in range(int(params["rows"]))]

    # rendered once: the param, then braces as text (rendering them again would fail)
    numbers(marker="{{ params.marker }}{% raw %}{{ braces }}{% endraw %}")


decorated_online_dag = decorated_online()


class FailOnceAfterSubmit(_CuratorDecoratedOperator):
    """Fails right after its batches were created, on its first try only: a worker lost
    between the provider's create calls and the deferral."""

    def wait_for(self, run_uri: str, live: list[str]):
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("worker lost right after submitting its batches")
        return super().wait_for(run_uri, live)


fail_once_curator = functools.partial(
    task_decorator_factory, multiple_outputs=False, decorated_operator_class=FailOnceAfterSubmit
)


def batch_dag(dag_id: str, decorator: Any = None, retries: int = 0, **options: Any):
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
        curator = decorator or task.curator

        @curator(
            task_id="facts",
            llm=FactWriter("gpt-4o-mini", batch=True, backend_params={"batch_size": 4}),
            working_dir="{{ params.working_dir }}",
            output_uri="{{ params.output_root }}/facts",
            run_key="{{ params.run_key }}",
            poll_interval="{{ params.poll }}",
            output_asset=Asset("curator://test/decorated-facts"),
            conn_id=CONN,
            **options,
        )
        def facts(params: dict[str, Any]) -> list[dict[str, int]]:
            record_call(params)
            return [{"n": i} for i in range(int(params["rows"]))]

        facts()

    return batch()


decorated_batch = batch_dag("curator_test_decorated_batch")
decorated_batch_retry = batch_dag(
    "curator_test_decorated_batch_retry", decorator=fail_once_curator, retries=1
)
decorated_batch_reschedule = batch_dag("curator_test_decorated_batch_reschedule", deferrable=False)


@dag(
    dag_id="curator_test_decorated_chain",
    schedule=None,
    start_date=START,
    catchup=False,
    params=PARAMS,
)
def decorated_chain() -> None:
    """An upstream ``@task.curator``'s manifest, and its ``output_uri``, as datasets."""
    llm = Numbered("gpt-4o-mini")
    options = {"working_dir": "{{ params.working_dir }}", "conn_id": CONN}

    @task.curator(llm=llm, output_uri="{{ params.output_root }}/numbers", run_key="up", **options)
    def numbers(params: dict[str, Any]) -> list[dict[str, int]]:
        return [{"n": i} for i in range(int(params["rows"]))]

    @task.curator(llm=llm, run_key="from-manifest", **options)
    def from_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
        return manifest

    @task.curator(llm=llm, run_key="from-output-uri", **options)
    def from_output_uri(output_uri: str) -> str:
        return output_uri

    published = numbers()
    from_manifest(published)
    from_output_uri(published["output_uri"])


decorated_chain_dag = decorated_chain()
