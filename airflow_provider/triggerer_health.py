"""Whether a triggerer is running, as a task can tell in Airflow 3: a task has no database
access, but the API server it talks to (``[core] execution_api_server_url``) also serves the
public, unauthenticated health check ``GET /api/v2/monitor/health``, whose ``triggerer`` entry
holds the latest triggerer job's status and heartbeat.

Invariant: reading it never fails a task and never waits long (one request, ``TIMEOUT``
seconds); what cannot be read is reported as unknown.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

TIMEOUT = 2.0
HEALTH_PATH = "/api/v2/monitor/health"


def health_url() -> str | None:
    """The health check's URL on the API server the task talks to (``None``: not HTTP)."""
    from .compat import conf

    execution = conf.get("core", "execution_api_server_url", fallback=None) or ""
    parts = urllib.parse.urlsplit(execution)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    path = parts.path.rstrip("/")
    if path.endswith("/execution"):
        path = path[: -len("/execution")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path + HEALTH_PATH, "", ""))


def triggerer_health(timeout: float = TIMEOUT) -> dict[str, Any] | None:
    """The health check's ``triggerer`` entry (``status``: ``healthy``, ``unhealthy`` or
    ``None`` when no triggerer ever ran; ``latest_triggerer_heartbeat``), or ``None`` when it
    cannot be read."""
    url = health_url()
    if url is None:
        return None
    from .hooks.curator import _opener

    try:
        with _opener(url).open(url, timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
    except Exception:  # noqa: BLE001 - unknown, never an error of the task
        return None
    entry = body.get("triggerer") if isinstance(body, dict) else None
    return entry if isinstance(entry, dict) else None


def deferral_note(health: dict[str, Any] | None) -> tuple[bool, str]:
    """``(warn, text)``: what a deferring task says about the triggerer it waits for."""
    if health is None:
        return False, (
            "a triggerer must be running for the task to resume (`airflow triggerer`; "
            "dag.test() runs triggers itself); the API server's health check could not be read"
        )
    status = health.get("status")
    if status == "healthy":
        return False, "a triggerer is running (the API server's health check says healthy)"
    beat = health.get("latest_triggerer_heartbeat")
    when = f"its last heartbeat was at {beat}" if beat else "no triggerer has ever run"
    return True, (
        f"NO TRIGGERER IS RUNNING ({when}, says the API server's health check): this task stays "
        "deferred until one runs: start `airflow triggerer` (`airflow standalone` does not "
        "restart a triggerer that died); dag.test() runs triggers itself"
    )
