"""``@task.curator`` through real ``dag.test()`` runs against the simulator: it behaves as
``CuratorOperator`` (online, deferred batch, reschedule-mode pokes, resume on retry, manifest
XCom, asset event), and its function runs once per try: never again when the task resumes from
the trigger or pokes again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from airflow_llms import FactWriter, Numbered
from airflow_runs import asset_events, load_dag, run_dag, states, task_instances, xcom, xcom_keys

DAG_FILE = Path(__file__).parents[1] / "dags" / "decorator_test_dags.py"


def calls(working_dir: Path) -> list[dict]:
    """The calls of the decorated functions of a test (see ``record_call``)."""
    path = Path(f"{working_dir}.calls")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def conf(tmp_path: Path, **extra) -> dict:
    return {"working_dir": str(tmp_path / "wd"), "output_root": str(tmp_path / "out"), **extra}


def run_dirs(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "wd").iterdir() if p.is_dir() and p.name != "_airflow"]


def task_events(dag_run, task_id: str) -> list[str]:
    """The state changes of a task in Airflow's audit log, in order."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(Log.event)
                .where(Log.dag_id == dag_run.dag_id, Log.run_id == dag_run.run_id)
                .where(Log.task_id == task_id)
                .order_by(Log.id)
            ).all()
        )


def trigger_classpath(ti) -> str:
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.get(Trigger, ti.trigger_id).classpath


def when(sim, predicate, **changes) -> threading.Thread:
    """Reconfigure ``sim`` as soon as ``predicate(stats)`` holds (a background watcher)."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if predicate(sim.stats()):
                sim.configure(**changes)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_online_run_is_a_curator_operator_run(fsim, curator_conn, tmp_path):
    dag = load_dag(DAG_FILE, "curator_test_decorated_online")
    before = len(asset_events("curator://test/decorated-numbers"))
    dr = run_dag(dag, **conf(tmp_path, rows=5, marker="-m"))
    assert states(dr) == {("numbers", -1): "success"}
    night = dr.logical_date.strftime("%Y-%m-%d")
    # the function ran once, with its argument rendered once and run_date filled in
    (call,) = calls(tmp_path / "wd")
    assert call == {
        "task_id": "numbers",
        "try_number": 1,
        "marker": "-m{{ braces }}",
        "run_date": night,
    }
    # its rows are the dataset, as returned (never rendered)
    assert sorted(fsim.stats()["by_prompt"]) == [f"number {n}-m{{{{ braces }}}}" for n in range(5)]
    # the manifest and the keys downstream tasks read, as CuratorOperator pushes them
    assert xcom_keys(dr, "numbers") == ["output_uri", "return_value", "run_uri"]
    manifest = xcom(dr, "numbers")
    assert manifest["rows"] == 5 and manifest["failed"] == 0 and manifest["cost"] > 0
    assert manifest["simulated"] is False
    assert xcom(dr, "numbers", key="run_uri") == manifest["run_uri"]
    assert xcom(dr, "numbers", key="output_uri") == manifest["output_uri"]
    assert manifest["output_uri"] == str(tmp_path / "out" / "numbers" / f"date={night}")
    assert (Path(manifest["output_uri"]) / "_SUCCESS").exists()
    run = json.loads(Path(manifest["run_uri"], "manifest.json").read_text())
    assert run["run_key"] == night  # run_key="{{ run_date }}" rendered as on the operator
    # the outlet asset's event
    events = asset_events("curator://test/decorated-numbers")
    assert len(events) == before + 1
    extra = events[-1]
    assert extra["rows"] == 5 and extra["run_uri"] == manifest["run_uri"]
    assert extra["partition"] == {"date": night} and extra["cost"] == manifest["cost"]


def test_deferred_batch_calls_the_function_once(fsim, curator_conn, tmp_path):
    dag = load_dag(DAG_FILE, "curator_test_decorated_batch")
    before = len(asset_events("curator://test/decorated-facts"))
    dr = run_dag(dag, **conf(tmp_path, rows=10))
    ti = task_instances(dr)[("facts", -1)]
    assert str(ti.state) == "success" and ti.try_number == 1
    # it deferred to the batch trigger and resumed from its event...
    from airflow_moved import airflow_at_least

    if airflow_at_least("3.2"):  # Airflow 3.1's dag.test() writes no audit log
        events = task_events(dr, "facts")
        assert events.count("deferred") == 1 and events[-1] == "success"
    assert trigger_classpath(ti) == "airflow_provider.triggers.batch.CuratorBatchTrigger"
    # ...without calling the function again
    assert calls(tmp_path / "wd") == [{"task_id": "facts", "try_number": 1}]
    stats = fsim.stats()
    assert stats["batches_created"] == 3  # 10 requests in batches of 4
    assert sorted(stats["batches_by_run_shard"].values()) == [1, 1, 1]
    assert sorted(stats["batch_items_by_prompt"].values()) == [1] * 10
    manifest = xcom(dr, "facts")
    assert manifest["rows"] == 10 and manifest["failed"] == 0 and manifest["cost"] > 0
    assert xcom_keys(dr, "facts") == ["output_uri", "return_value", "run_uri"]
    events = asset_events("curator://test/decorated-facts")
    assert len(events) == before + 1 and events[-1]["rows"] == 10


def test_a_retry_right_after_submit_reattaches(fsim, curator_conn, tmp_path):
    dag = load_dag(DAG_FILE, "curator_test_decorated_batch_retry")
    dr = run_dag(dag, **conf(tmp_path, rows=10))
    ti = task_instances(dr)[("facts", -1)]
    assert str(ti.state) == "success" and ti.try_number == 2  # failed once, retried
    # each try calls the function once; the retry's dataset resumes the same run
    assert [c["try_number"] for c in calls(tmp_path / "wd")] == [1, 2]
    assert len(run_dirs(tmp_path)) == 1
    stats = fsim.stats()
    assert stats["batches_created"] == 3
    assert sorted(stats["batches_by_run_shard"].values()) == [1, 1, 1]  # one batch per shard
    assert sum(stats["batch_items_by_prompt"].values()) == 10  # no request sent twice
    assert xcom(dr, "facts")["rows"] == 10


def test_an_online_retry_sends_only_what_failed(fsim, curator_conn, tmp_path):
    rows = 20
    fsim.configure(faults={"500": 0.5})  # about half of the first try's requests fail
    # the provider recovers once the first try had an answer to each request
    watcher = when(fsim, lambda s: sum(s["status_counts"].values()) >= rows, faults=None)
    dag = load_dag(DAG_FILE, "curator_test_decorated_online")
    dr = run_dag(dag, **conf(tmp_path, rows=rows))
    watcher.join(timeout=1)
    ti = task_instances(dr)[("numbers", -1)]
    assert str(ti.state) == "success" and ti.try_number == 2  # too many failures, then a retry
    failed = fsim.stats()["status_counts"]["500"]
    sent = fsim.stats()["by_prompt"]
    assert len(sent) == rows and sum(sent.values()) == rows + failed  # the failed ones, once more
    assert sorted(sent.values()) == [1] * (rows - failed) + [2] * failed
    assert [c["try_number"] for c in calls(tmp_path / "wd")] == [1, 2]
    assert len(run_dirs(tmp_path)) == 1
    manifest = xcom(dr, "numbers")
    assert manifest["rows"] == rows and manifest["failures_by_reason"] == {}


def test_reschedule_mode_pokes_never_call_the_function_again(fsim, curator_conn, tmp_path):
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    dag = load_dag(DAG_FILE, "curator_test_decorated_batch_reschedule")
    dr = run_dag(dag, **conf(tmp_path, rows=6))
    ti = task_instances(dr)[("facts", -1)]
    assert str(ti.state) == "success" and ti.try_number == 1
    with create_session() as session:
        reschedules = session.scalar(
            select(func.count(TaskReschedule.id)).where(TaskReschedule.ti_id == ti.id)
        )
    assert reschedules >= 1
    assert calls(tmp_path / "wd") == [{"task_id": "facts", "try_number": 1}]  # the first poke
    assert fsim.stats()["batches_created"] == 2
    assert xcom(dr, "facts")["rows"] == 6
    assert not list((tmp_path / "wd").glob("_airflow/**/*.json"))  # the try's pointer is gone


def test_a_run_without_a_logical_date(fsim, curator_conn, tmp_path):
    """What `airflow dags trigger` and the REST API with "logical_date": null create."""
    dag = load_dag(DAG_FILE, "curator_test_decorated_online")
    dr = dag.test(run_conf=conf(tmp_path, rows=3), logical_date=None)
    assert dr.logical_date is None
    assert states(dr) == {("numbers", -1): "success"}
    night = dr.run_after.strftime("%Y-%m-%d")
    (call,) = calls(tmp_path / "wd")
    assert call["run_date"] == night
    manifest = xcom(dr, "numbers")
    assert manifest["rows"] == 3 and manifest["output_uri"].endswith(f"/numbers/date={night}")
    run = json.loads(Path(manifest["run_uri"], "manifest.json").read_text())
    assert run["run_key"] == night


def test_an_upstream_manifest_or_output_uri_is_the_dataset(fsim, curator_conn, tmp_path):
    dag = load_dag(DAG_FILE, "curator_test_decorated_chain")
    dr = run_dag(dag, **conf(tmp_path, rows=4))
    assert set(states(dr).values()) == {"success"}
    upstream = xcom(dr, "numbers")
    assert upstream["rows"] == 4
    for task_id in ("from_manifest", "from_output_uri"):
        manifest = xcom(dr, task_id)
        assert manifest["rows"] == 4 and manifest["failed"] == 0, task_id
        assert manifest["run_uri"] != upstream["run_uri"]
    # each stage prompted with the upstream's rows (each row's n), once per stage
    assert sorted(fsim.stats()["by_prompt"].values()) == [3] * 4


def test_the_function_is_not_called_on_resume_and_lineage_keeps_its_uri(
    fsim, curator_conn, tmp_path
):
    """A deferral ends the worker's process: the resumed task (a new operator object) gets the
    trigger's event and the deferral's kwargs, and never calls the function."""
    from airflow_provider.compat import TaskDeferred
    from airflow_provider.decorators.curator import _CuratorDecoratedOperator

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(4)))
    called = []

    def rows() -> str:
        called.append(1)
        return str(source)

    def operator() -> _CuratorDecoratedOperator:
        return _CuratorDecoratedOperator(
            task_id="facts",
            python_callable=rows,
            llm=FactWriter("gpt-4o-mini", batch=True, backend_params={"batch_size": 4}),
            working_dir=str(tmp_path / "wd"),
            run_key="night-1",
            conn_id=curator_conn,
            poll_interval=0.05,
            deferrable=True,
        )

    with pytest.raises(TaskDeferred) as caught:
        operator().execute({})
    deferred = caught.value
    assert deferred.method_name == "execute_complete"
    assert deferred.kwargs == {"input_uri": str(source)}
    assert called == [1]

    import asyncio

    async def first_event():
        return await anext(deferred.trigger.run())

    event = asyncio.run(first_event()).payload
    assert event["kind"] == "ended"
    resumed = operator()
    manifest = resumed.execute_complete({}, event=event, **deferred.kwargs)
    assert manifest["rows"] == 4 and called == [1]  # not called again
    lineage = resumed.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(source))]


def test_later_pokes_keep_the_uri_from_the_try_pointer(fsim, curator_conn, tmp_path):
    """Reschedule mode: every poke is a new operator object; only the first calls the function,
    the later ones find the run (and the dataset's URI, for lineage) in the try's pointer."""
    from types import SimpleNamespace

    from airflow_provider.compat import AirflowRescheduleException
    from airflow_provider.decorators.curator import _CuratorDecoratedOperator

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(3)))
    called = []

    def rows() -> str:
        called.append(1)
        return str(source)

    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="facts", map_index=-1, try_number=1)
    ti.xcom_push = lambda **_: None  # the manifest's keys go nowhere here
    pokes = 0
    deadline = time.monotonic() + 120
    while True:
        op = _CuratorDecoratedOperator(
            task_id="facts",
            python_callable=rows,
            llm=FactWriter("gpt-4o-mini", batch=True, backend_params={"batch_size": 4}),
            working_dir=str(tmp_path / "wd"),
            run_key="night-1",
            conn_id=curator_conn,
            poll_interval=0.05,
            deferrable=False,
        )
        pokes += 1
        try:
            manifest = op.execute({"ti": ti})
            break
        except AirflowRescheduleException:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert pokes >= 2 and called == [1] and manifest["rows"] == 3
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(source))]


def test_the_key_is_used_but_never_stored_or_logged(fsim, curator_conn, tmp_path, capfd):
    from airflow_env import HOME, TEST_KEY
    from airflow_runs import all_xcom_text, rendered_fields_text

    fsim.configure(require_api_key=TEST_KEY)  # the key really is what gets the work done
    runs = []
    for dag_id in ("curator_test_decorated_batch", "curator_test_decorated_online"):
        dag = load_dag(DAG_FILE, dag_id)
        dr = run_dag(dag, **conf(tmp_path / dag_id, rows=4))
        assert set(states(dr).values()) == {"success"}
        runs.append(dr)
    assert fsim.stats()["batches_created"] == 1 and fsim.stats()["chat_completions"] == 4
    output = capfd.readouterr()
    for dr in runs:
        assert TEST_KEY not in all_xcom_text(dr)
        assert TEST_KEY not in rendered_fields_text(dr)  # the function's arguments among them
    assert TEST_KEY not in output.out + output.err  # task logs of dag.test go to the console
    logs = b"\n".join(p.read_bytes() for p in (HOME / "logs").rglob("*") if p.is_file())
    assert TEST_KEY.encode() not in logs
    for path in tmp_path.rglob("*"):  # run directories, outputs, the calls files
        assert not path.is_file() or TEST_KEY.encode() not in path.read_bytes(), path


def test_a_function_that_returns_none_fails_permanently(fsim, curator_conn, tmp_path):
    from airflow_provider import CuratorPermanentError
    from airflow_provider.decorators.curator import _CuratorDecoratedOperator

    def forgot_to_return() -> None:
        pass

    op = _CuratorDecoratedOperator(
        task_id="numbers",
        python_callable=forgot_to_return,
        llm=Numbered("gpt-4o-mini"),
        working_dir=str(tmp_path / "wd"),
        conn_id=curator_conn,
    )
    with pytest.raises(CuratorPermanentError, match="forgot_to_return.*returned None"):
        op.execute({})
    assert fsim.stats()["chat_completions"] == 0


def test_dataset_is_not_an_argument_of_the_decorator():
    import pendulum
    from airflow.sdk import DAG, task

    with DAG("refused", schedule=None, start_date=pendulum.datetime(2025, 1, 1)):

        @task.curator(llm=Numbered("gpt-4o-mini"), dataset=[{"n": 1}])
        def numbers() -> list:
            return []

        with pytest.raises(TypeError, match="no dataset=: the decorated function returns"):
            numbers()


def test_multiple_outputs_is_not_inferred_from_the_functions_annotation():
    """The XCom is the manifest, whatever the function's return type says."""
    import pendulum
    from airflow.sdk import DAG, task

    with DAG("annotated", schedule=None, start_date=pendulum.datetime(2025, 1, 1)):

        @task.curator(llm=Numbered("gpt-4o-mini"))
        def numbers() -> dict[str, list]:
            return {"n": [1]}

        assert numbers().operator.multiple_outputs is False


def test_registered_as_task_curator_in_a_real_airflow_process():
    from airflow_provider.get_provider_info import get_provider_info

    assert get_provider_info()["task-decorators"] == [
        {"name": "curator", "class-name": "airflow_provider.decorators.curator.curator_task"}
    ]
    code = (
        "import json, sys\n"
        "import airflow_provider.get_provider_info\n"
        "info_imports_airflow = 'airflow' in sys.modules\n"
        "from airflow.sdk import task\n"
        "from airflow_provider.decorators.curator import curator_task\n"
        "from airflow.providers_manager import ProvidersManager\n"
        "provider = ProvidersManager().providers['curator-flows']\n"
        "print(json.dumps({'resolves': task.curator is curator_task,\n"
        "    'info_imports_airflow': info_imports_airflow,\n"
        "    'listed': provider.data.get('task-decorators')}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {
        "resolves": True,
        "info_imports_airflow": False,
        "listed": [
            {"name": "curator", "class-name": "airflow_provider.decorators.curator.curator_task"}
        ],
    }
