"""An ``s3://`` working_dir through s3fs against moto's S3 server mode (real HTTP)."""

from __future__ import annotations

from curator_flows import LLM


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
    assert first.cache_dir.startswith(f"{s3_bucket}/nightly/")
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


def test_storage_options_reach_every_step_without_global_fsspec_config(sim, s3_endpoint):
    """Credentials.storage_options alone (no fsspec.config, no AWS_* variables) carry a run on
    S3 through prepare, run_online, finalize and load_response."""
    import uuid

    import s3fs

    from curator_flows import Credentials, steps

    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    bucket = f"opts-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    creds = Credentials(api_key="k", storage_options=options)
    llm = Topic("gpt-4o-mini", backend_params={"base_url": sim.base_url, "progress": "off"})
    run = steps.prepare(llm, [{"t": i} for i in range(12)], f"s3://{bucket}/wd", credentials=creds)
    steps.run_online(run, credentials=creds)
    summary = steps.finalize(run, credentials=creds)
    assert summary["rows"] == 12
    assert steps.load_response(run, credentials=creds).dataset["t"] == list(range(12))
    assert steps.status(run, credentials=creds)["totals"]["succeeded"] == 12
