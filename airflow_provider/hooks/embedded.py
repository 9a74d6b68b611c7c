"""The embedded simulator: what a hook with ``simulator_fallback=True`` talks to when its
connection does not exist (the example DAGs, ``dag.test()`` on a laptop).

Invariants:
- one simulator per process, started on first use and stopped at exit; every task and trigger
  of a ``dag.test()`` run (one process) sees the same one, so a batch submitted by a task is
  found by the trigger that polls it;
- it is only a fallback: a deployment whose tasks and triggerer are separate processes needs a
  real connection (``make airflow-ui`` creates one to a simulator running on its own).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

#: the embedded simulator's behaviour: a provider with a 6,000 RPM limit and 50 ms latency
SIMULATOR_CONFIG: dict[str, Any] = {"rpm": 6000, "latency": 0.05}
API_KEY = "simulator"

_lock = threading.Lock()
_simulator: Any = None


def embedded_simulator() -> Any:
    """The process's :class:`~curator_flows.testing.simulator.Simulator`, started if needed."""
    global _simulator
    with _lock:
        if _simulator is None or not _simulator.running:
            from curator_flows.testing.simulator import Simulator

            _simulator = Simulator(**SIMULATOR_CONFIG).start()
            atexit.register(_simulator.stop)
        return _simulator
