"""Template fields in runs with and without a logical date: ``{{ run_date }}`` in both, and a
value the run does not have (``{{ ds }}`` in a run without a logical date) as a permanent error
that Airflow does not retry."""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk import DAG
from airflow_llms import Numbered
from airflow_runs import load_dag, task_instances

from airflow_provider import CuratorOperator, CuratorPermanentError
from airflow_provider.templating import RUN_DATE, run_date

DAG_FILE = Path(__file__).parent / "dags" / "provider_test_dags.py"
AFTER = datetime.datetime(2026, 3, 4, 1, 2, 3, tzinfo=datetime.UTC)


def context(logical_date=None, run_after=AFTER, **params) -> dict:
    return {
        "dag_run": SimpleNamespace(logical_date=logical_date, run_after=run_after),
        "params": params,
    }


def test_run_date_is_the_logical_date_else_the_run_after_date():
    assert run_date(context()) == "2026-03-04"
    assert run_date(context(logical_date=AFTER - datetime.timedelta(days=3))) == "2026-03-01"
    assert run_date({}) is None
    op = CuratorOperator(
        task_id="t",
        llm=Numbered("gpt-4o-mini"),
        output_uri="{{ params.root }}/x/{{ run_date }}",
        run_key=RUN_DATE,  # the expression other operators use
    )
    op.render_template_fields(context(root="/data"))
    assert (op.output_uri, op.run_key) == ("/data/x/2026-03-04", "2026-03-04")


def test_an_undefined_value_names_the_field_and_what_to_use():
    with DAG("templating", schedule=None):  # a DAG's templates: StrictUndefined
        op = CuratorOperator(task_id="t", llm=Numbered("gpt-4o-mini"), output_uri="/out/{{ ds }}")
        other = CuratorOperator(
            task_id="u", llm=Numbered("gpt-4o-mini"), run_key="{{ params.nope }}"
        )
    with pytest.raises(CuratorPermanentError) as caught:
        op.render_template_fields(context())
    message = str(caught.value)
    assert "output_uri" in message and "'/out/{{ ds }}'" in message
    assert "{{ run_date }}" in message and "will not retry" in message
    with pytest.raises(CuratorPermanentError, match="run_key"):
        other.render_template_fields(context())


def test_ds_in_a_run_without_a_logical_date_fails_once_without_retries(
    fsim, curator_conn, tmp_path
):
    dag = load_dag(DAG_FILE, "curator_test_logical_date_template")  # retries=2
    conf = {"working_dir": str(tmp_path), "rows": 3}
    scheduled = dag.test(run_conf=conf)  # a logical date: renders
    assert str(task_instances(scheduled)[("numbers", -1)].state) == "success"
    sent = fsim.stats()["requests"]
    triggered = dag.test(run_conf=conf, logical_date=None)  # `airflow dags trigger`, REST null
    assert triggered.logical_date is None
    ti = task_instances(triggered)[("numbers", -1)]
    assert str(ti.state) == "failed" and ti.try_number == 1  # not retried
    assert fsim.stats()["requests"] == sent  # nothing sent
