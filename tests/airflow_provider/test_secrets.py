"""The API key reaches the provider and nothing else: not XCom, not rendered template fields,
not the stored trigger, not task logs, not the run directory."""

from __future__ import annotations

from pathlib import Path

from airflow_env import HOME, TEST_KEY
from airflow_runs import all_xcom_text, load_dag, rendered_fields_text, run_dag, states

DAG_FILE = Path(__file__).parent / "dags" / "provider_test_dags.py"


def stored_triggers_text() -> str:
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        triggers = session.scalars(select(Trigger)).all()
        return "\n".join(f"{t.classpath} {t.kwargs}" for t in triggers)


def files_text(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_the_key_is_used_but_never_stored_or_logged(fsim, curator_conn, tmp_path, capfd):
    fsim.configure(require_api_key=TEST_KEY)  # the key really is what gets the work done
    runs = []
    for dag_id in ("curator_test_batch", "curator_test_online"):
        dag = load_dag(DAG_FILE, dag_id)
        dr = run_dag(dag, working_dir=str(tmp_path / dag_id), rows=6)
        assert set(states(dr).values()) == {"success"}
        runs.append(dr)
    assert fsim.stats()["batches_created"] == 2 and fsim.stats()["chat_completions"] == 6
    output = capfd.readouterr()
    assert "CuratorBatchTrigger" in stored_triggers_text()  # the deferral was stored
    for dr in runs:
        assert TEST_KEY not in all_xcom_text(dr)
        assert TEST_KEY not in rendered_fields_text(dr)
    assert TEST_KEY not in stored_triggers_text()
    assert TEST_KEY not in output.out + output.err  # task logs of dag.test go to the console
    assert TEST_KEY.encode() not in files_text(HOME / "logs")
    assert TEST_KEY.encode() not in files_text(tmp_path)  # run directories, outputs, ledgers
