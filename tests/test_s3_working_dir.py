"""An ``s3://`` working_dir through s3fs against moto's S3 server mode (real HTTP)."""

from __future__ import annotations

import socket

import pytest

from curator_flows import LLM


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    import fsspec
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # fsspec's config is how users point s3:// at a custom endpoint (FSSPEC_S3_* env vars too).
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir("curator-runs")
    yield "s3://curator-runs"
    s3fs.S3FileSystem.clear_instance_cache()


class Topic(LLM):
    def prompt(self, input):
        return f"s3 topic {input['t']}"

    def parse(self, input, response):
        return {"t": input["t"], "response": response}


def test_s3_working_dir_round_trip_and_resume(sim, params, s3_bucket):
    import s3fs

    working_dir = f"{s3_bucket}/nightly"
    rows = [{"t": i} for i in range(30)]
    first = Topic("gpt-4o-mini", backend_params=params())(rows, working_dir=working_dir)
    assert first.cache_dir.startswith("s3://curator-runs/nightly/")
    assert [r["t"] for r in first.dataset] == list(range(30))

    fs = s3fs.S3FileSystem()
    run_key = first.cache_dir.removeprefix("s3://")
    names = {p.removeprefix(run_key + "/") for p in fs.find(run_key)}
    assert "manifest.json" in names and "output/stats.json" in names
    assert any(n.startswith("responses/00000.part-") for n in names)

    # A cache hit from the object store sends nothing.
    second = Topic("gpt-4o-mini", backend_params=params())(rows, working_dir=working_dir)
    assert sim.stats()["requests"] == 30
    assert second.dataset.to_list() == first.dataset.to_list()

    # Responses found by content: a new run with 2 edited rows sends 2 requests.
    rows[4], rows[9] = {"t": 104}, {"t": 109}
    third = Topic("gpt-4o-mini", backend_params=params())(rows, working_dir=working_dir)
    assert sim.stats()["requests"] == 32
    assert [r["t"] for r in third.dataset][4] == 104
