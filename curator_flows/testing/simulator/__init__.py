"""An OpenAI- and Anthropic-compatible HTTP server for tests, benchmarks and offline runs.

    from curator_flows.testing.simulator import Simulator

    with Simulator(rpm=3000, latency=0.05) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-sim")
        ...
        assert sim.stats()["by_prompt"]["my prompt"] == 1

Faults are injected by rate (``faults={"500": 0.1}``) or by markers in the prompt
(``[[sim:500x2]]``, see `faults`). Command line: ``python -m curator_flows.testing.simulator``.
"""

from .cli import main, run_in_subprocess
from .config import FAULT_KINDS, SimulatorConfig
from .runner import Simulator

__all__ = ["FAULT_KINDS", "Simulator", "SimulatorConfig", "main", "run_in_subprocess"]
