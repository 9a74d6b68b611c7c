"""Shared fixtures: a fresh simulator over real HTTP and a private working directory."""

from __future__ import annotations

import socket
import uuid

import pytest


@pytest.fixture(autouse=True)
def _private_working_dir(tmp_path, monkeypatch):
    """No test ever writes to the user's cache: the default working dir is per test."""
    monkeypatch.setenv("CURATOR_FLOWS_WORKING_DIR", str(tmp_path / "default-wd"))
    monkeypatch.delenv("CURATOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("CURATOR_DISABLE_CACHE", raising=False)
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


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server mode on a free loopback port (real HTTP), one per test session."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """``s3://<fresh bucket>``, reached through fsspec's config as users point s3:// elsewhere."""
    import fsspec
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"curator-runs-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(bucket)
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()
