"""The automation a nightly deployment needs: a flow run whose process dies without a word (a
``kill -9``, an evicted pod, a lost machine) stays ``Running`` in Prefect until something marks
it ``Crashed``. Every flow run emits a ``prefect.flow-run.heartbeat`` event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (formerly ``PREFECT_RUNNER_HEARTBEAT_FREQUENCY``;
180 s by default in Prefect 3.7, at least 30); this proactive automation marks a flow run
``Crashed`` when neither another heartbeat nor a final state follows one within ``missed``
heartbeats (Prefect's zombie-flow recipe).

    python -m prefect_tasks.automations [--heartbeat-seconds 180] [--missed 3]

creates it on the server of ``PREFECT_API_URL`` (or updates the one of the same name).

Invariant: the automation only moves a run that has gone silent to ``Crashed``; the run
directory is untouched, so the next flow run of the same run (a retry of the crashed run keeps
its scheduled date, hence its ``{scheduled_date}`` run key) continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Any

from curator_flows.errors import ConfigError

#: the automation's name (``ensure_zombie_automation`` updates an automation of this name)
ZOMBIE_AUTOMATION = "curator-flows: crash zombie flow runs"
#: heartbeats a live flow run may miss before it is called a zombie
MISSED_HEARTBEATS = 3
#: the events that say a flow run is alive or has ended
_ALIVE_OR_ENDED = (
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
)


def heartbeat_frequency() -> int | None:
    """This process's ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (``None``: heartbeats are off)."""
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


def zombie_automation(
    heartbeat_seconds: int | None = None,
    missed: int = MISSED_HEARTBEATS,
    name: str = ZOMBIE_AUTOMATION,
) -> Any:
    """The automation (a ``prefect.automations.Automation``, not yet created) that marks a
    flow run ``Crashed`` after ``missed`` heartbeats of ``heartbeat_seconds`` (default: this
    process's setting; give the workers' value when it differs) went by without a heartbeat
    or a final state."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    seconds = heartbeat_seconds if heartbeat_seconds is not None else heartbeat_frequency()
    if not seconds or seconds < 30:
        raise ConfigError(
            "flow run heartbeats are off or under Prefect's 30 s minimum: set "
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY (e.g. 60) on the workers and pass it as "
            f"heartbeat_seconds; got {seconds!r}"
        )
    if not isinstance(missed, int) or missed < 1:
        raise ConfigError(f"missed must be a positive number of heartbeats, got {missed!r}")
    window = timedelta(seconds=seconds * missed)
    return Automation(
        name=name,
        description=(
            f"Marks a flow run Crashed when {missed} heartbeats ({seconds} s apart) go by "
            "without a heartbeat or a final state (its process died). A new flow run of the "
            "same run key continues the curator-flows run."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect=set(_ALIVE_OR_ENDED),
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {window.total_seconds():.0f} s: the flow run's "
                "process is gone",
            )
        ],
    )


def ensure_zombie_automation(
    heartbeat_seconds: int | None = None, missed: int = MISSED_HEARTBEATS
) -> Any:
    """Create :func:`zombie_automation` on the current Prefect server, or update the one of
    the same name; returns it (with its id)."""
    from prefect.automations import Automation

    wanted = zombie_automation(heartbeat_seconds, missed)
    try:
        existing = Automation.read(name=wanted.name)
    except ValueError:  # none of that name
        return wanted.create()
    wanted.id = existing.id
    wanted.update()
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--heartbeat-seconds",
        type=int,
        help="the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (default: this process's)",
    )
    parser.add_argument("--missed", type=int, default=MISSED_HEARTBEATS)
    args = parser.parse_args(argv)
    automation = ensure_zombie_automation(args.heartbeat_seconds, args.missed)
    print(f"automation {automation.name!r} ({automation.id}): within {automation.trigger.within}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
