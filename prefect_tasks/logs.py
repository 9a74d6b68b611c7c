"""The engine's log lines (progress every few seconds, retries, re-attached batches) in the
Prefect run's logs.

Invariant: a record of a ``curator_flows`` logger emitted inside a flow or task run is sent to
the Prefect API under that run (the UI shows it with the run's logs), once; outside a run it is
left to the process's own handlers (no warning). Engine messages never contain API keys (see
``curator_flows.errors``).
"""

from __future__ import annotations

import logging

ENGINE_LOGGER = "curator_flows"
_BRIDGE_NAME = "prefect_tasks.run_log_bridge"


def _bridge_class() -> type[logging.Handler]:
    from prefect.context import get_run_context
    from prefect.exceptions import MissingContextError
    from prefect.logging.handlers import APILogHandler

    class RunLogBridge(APILogHandler):
        """Prefect's API log handler, for the records emitted inside a run only."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                get_run_context()
            except MissingContextError:
                return  # a plain script, or a thread without the run's context
            super().emit(record)

    return RunLogBridge


def forward_engine_logs(level: int = logging.INFO) -> None:
    """Install the bridge once (not when ``PREFECT_LOGGING_EXTRA_LOGGERS`` already lists the
    engine: Prefect forwards it then); the engine logger gets ``level`` if it has none."""
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

    engine = logging.getLogger(ENGINE_LOGGER)
    if ENGINE_LOGGER in (PREFECT_LOGGING_EXTRA_LOGGERS.value() or []):
        return
    if any(getattr(h, "name", None) == _BRIDGE_NAME for h in engine.handlers):
        return
    bridge = _bridge_class()()
    bridge.name = _BRIDGE_NAME
    engine.addHandler(bridge)
    if engine.level == logging.NOTSET:
        engine.setLevel(level)
