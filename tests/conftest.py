"""Shared fixtures: a fresh simulator over real HTTP and a private working directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_working_dir(tmp_path, monkeypatch):
    """No test ever writes to the user's cache: the default working dir is per test."""
    monkeypatch.setenv("CURATOR_FLOWS_WORKING_DIR", str(tmp_path / "default-wd"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


@pytest.fixture
def sim():
    from curator_flows.testing.simulator import Simulator

    with Simulator() as simulator:
        yield simulator


@pytest.fixture
def wd(tmp_path) -> str:
    path = tmp_path / "wd"
    path.mkdir()
    return str(path)


def simulator_params(sim, **extra):
    """backend_params pointing at ``sim``, quiet and quick to retry."""
    params = {
        "base_url": sim.base_url,
        "api_key": "test-key-not-a-secret",
        "progress": "off",
        "seconds_to_pause_on_rate_limit": 0.2,
    }
    params.update(extra)
    return params


@pytest.fixture
def params(sim):
    """``params(**extra)``: backend_params for the ``sim`` fixture."""
    return lambda **extra: simulator_params(sim, **extra)
