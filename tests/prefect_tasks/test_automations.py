"""The zombie-run automation a nightly deployment needs: built, validated and created by the
Prefect server (the harness's), updated in place when created again, and from the CLI."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import prefect_api as api
import pytest

from curator_flows.errors import ConfigError


def test_the_zombie_automation_is_created_and_updated_on_the_server(prefect_server):
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType

    from prefect_tasks.automations import ZOMBIE_AUTOMATION, ensure_zombie_automation

    created = ensure_zombie_automation(heartbeat_seconds=60, missed=3)
    stored = Automation.read(name=ZOMBIE_AUTOMATION)
    assert stored.id == created.id and stored.enabled
    trigger = stored.trigger
    assert trigger.posture == "Proactive" and trigger.within == timedelta(seconds=180)
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"} <= trigger.expect
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Cancelled"} <= trigger.expect
    assert "prefect.flow-run.Crashed" in trigger.expect
    assert trigger.for_each == {"prefect.resource.id"}
    (action,) = stored.actions
    assert action.type == "change-flow-run-state" and action.state == StateType.CRASHED

    again = ensure_zombie_automation(heartbeat_seconds=30, missed=4)  # updated, not doubled
    with api.client() as client:
        (only,) = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    assert only.id == again.id == created.id and only.trigger.within == timedelta(seconds=120)


def test_the_automation_is_created_from_the_command_line(prefect_env):
    done = subprocess.run(
        [sys.executable, "-m", "prefect_tasks.automations", "--heartbeat-seconds", "45"],
        env=prefect_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "within 0:02:15" in done.stdout


@pytest.mark.parametrize("seconds", [None, 0, 10])
def test_heartbeats_off_or_under_prefects_minimum_are_refused(seconds, monkeypatch):
    from prefect_tasks import automations

    monkeypatch.setattr(automations, "heartbeat_frequency", lambda: None)
    with pytest.raises(ConfigError, match="PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        automations.zombie_automation(heartbeat_seconds=seconds)
