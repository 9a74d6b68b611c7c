"""What a deferring task says about the triggerer it waits for, read from a real API server's
health check (the session's ``airflow api-server`` on the test's metadata database)."""

from __future__ import annotations

import pytest

from airflow_provider.triggerer_health import deferral_note, health_url, triggerer_health


@pytest.fixture
def triggerer_job():
    """``triggerer_job()``: a triggerer job row heartbeating now (what a running triggerer
    keeps in the metadata database), removed afterwards."""
    from airflow.jobs.job import Job, JobState
    from airflow.sdk import timezone
    from airflow.utils.session import create_session

    made = []

    def add() -> None:
        with create_session() as session:
            job = Job()
            job.job_type = "TriggererJob"
            job.state = JobState.RUNNING
            job.latest_heartbeat = timezone.utcnow()
            session.add(job)
            session.flush()
            made.append(job.id)

    yield add
    with create_session() as session:
        session.query(Job).filter(Job.id.in_(made)).delete()


def test_health_url_of_the_execution_api(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://h:8080/execution/")
    assert health_url() == "http://h:8080/api/v2/monitor/health"
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "https://h/af/execution")
    assert health_url() == "https://h/af/api/v2/monitor/health"


def test_a_deferral_says_whether_a_triggerer_runs(api_server, monkeypatch, triggerer_job):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"{api_server}/execution/")
    health = triggerer_health()
    assert health is not None and health["status"] != "healthy"  # no triggerer in the tests
    warn, note = deferral_note(health)
    assert warn and "NO TRIGGERER IS RUNNING" in note and "airflow triggerer" in note
    triggerer_job()
    warn, note = deferral_note(triggerer_health())
    assert not warn and "a triggerer is running" in note
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://127.0.0.1:9/execution/")
    assert triggerer_health() is None  # unreachable: unknown, said as such
    warn, note = deferral_note(None)
    assert not warn and "a triggerer must be running" in note
