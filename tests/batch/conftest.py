"""Fixtures of the batch tests: a simulator whose batches end within a fraction of a second."""

from __future__ import annotations

import pytest
from batch_helpers import FAST


@pytest.fixture
def bsim():
    from curator_flows.testing.simulator import Simulator

    with Simulator(batch_timings=FAST) as simulator:
        yield simulator
