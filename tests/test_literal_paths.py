"""Run directories and published outputs are literal paths: glob characters (``[``, ``]``, ``*``,
``?``) and spaces in ``working_dir`` or ``output_uri`` name exactly that directory, locally and
on S3 (moto's server mode), through every step, the leases, reuse, publish and reading back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from curator_flows import Credentials, steps
from curator_flows.publish import read_marker
from curator_flows.store import RunStore

sys.path.insert(0, str(Path(__file__).parent / "support"))

from publish_llms import Versioned  # noqa: E402

ODD = "runs [x]*?"


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    """``(base URI, storage_options)`` on local disk or on S3 (moto)."""
    if request.param == "local":
        return str(tmp_path), {}
    bucket = request.getfixturevalue("s3_bucket")
    return bucket, {"endpoint_url": request.getfixturevalue("s3_endpoint")}


def test_every_step_finds_its_files_under_a_working_dir_and_output_uri_with_glob_characters(
    sim, params, place
):
    base, options = place
    credentials = Credentials(storage_options=options)
    working_dir, output_uri = f"{base}/{ODD}", f"{base}/out [2024]*?"
    # Siblings a glob of the odd names would match (``[x]`` matches "x"): never touched, read.
    decoy = RunStore(f"{base}/runs x", options)
    decoy.write_bytes("leases/00000/00000.json", b"{}")
    llm = Versioned("gpt-4o-mini", backend_params=params(shard_size=4))
    rows = [{"n": i} for i in range(10)]

    run = steps.prepare(llm, rows, working_dir, credentials=credentials)
    assert run["run_uri"].startswith(working_dir + "/")
    steps.run_online(run, llm=llm, credentials=credentials)
    steps.run_online(run, llm=llm, credentials=credentials)  # the leases were released
    assert sim.stats()["requests"] == 10
    assert steps.status(run, credentials=credentials)["totals"]["succeeded"] == 10
    result = steps.finalize(run, llm=llm, output_uri=output_uri, credentials=credentials)
    assert result["rows"] == 10
    first = read_marker(output_uri, options)
    assert first["rows"] == 10

    newer = Versioned("gpt-4o-mini", version=2, backend_params=params(shard_size=4))
    steps.finalize(run, llm=newer, output_uri=output_uri, credentials=credentials)
    target = RunStore(output_uri, options)
    parts = target.glob("part-*.parquet")
    assert parts == sorted(entry["path"] for entry in read_marker(output_uri, options)["files"])
    assert not {entry["path"] for entry in first["files"]} & set(parts)  # superseded, removed

    # A sibling run (2 rows edited) copies the 8 answers it shares from under the odd name.
    rows[3], rows[7] = {"n": 103}, {"n": 107}
    sibling = steps.prepare(llm, rows, working_dir, credentials=credentials)
    steps.run_online(sibling, llm=llm, credentials=credentials)
    assert sim.stats()["requests"] == 12

    # Reading back: the published output, the run directory and the step results. (A string
    # with a space is a prompt: spaced paths are read as a Path, or published again.)
    plain_output = output_uri.replace(" ", "")
    steps.finalize(run, llm=newer, output_uri=plain_output, credentials=credentials)
    sources = [plain_output, run, result]
    if not options:
        sources += [Path(output_uri), Path(run["run_uri"])]
    expected = [{"n": i, "version": 2} for i in range(10)]
    for source in sources:
        reader = Versioned("gpt-4o-mini", backend_params=params())
        prepared = steps.prepare(reader, source, f"{base}/readers", credentials=credentials)
        assert prepared["requests"] == 10, source
    assert (
        sorted(
            steps.load_response(run, llm=newer, credentials=credentials).dataset.to_list(),
            key=lambda r: r["n"],
        )
        == expected
    )
    assert decoy.glob("leases/*/*.json") == ["leases/00000/00000.json"]


def test_in_process_runs_resume_under_a_working_dir_with_glob_characters(sim, params, tmp_path):
    working_dir = str(tmp_path / ODD)
    rows = [{"n": i} for i in range(6)]
    first = Versioned("gpt-4o-mini", backend_params=params())(rows, working_dir=working_dir)
    again = Versioned("gpt-4o-mini", backend_params=params())(rows, working_dir=working_dir)
    assert sim.stats()["requests"] == 6
    assert again.dataset.to_list() == first.dataset.to_list()
    assert len(first.dataset) == 6


@pytest.mark.parametrize("where", ["local", "memory"])
def test_store_globs_and_removes_only_under_its_own_literal_root(tmp_path, where):
    base = str(tmp_path) if where == "local" else "memory://literal-test"
    store, twin = RunStore(f"{base}/r[ab] *"), RunStore(f"{base}/ra x")
    for each in (store, twin):
        each.write_bytes("responses/00000.jsonl", b'{"id": "a"}\n')
        each.write_bytes("responses/00001.jsonl", b'{"id": "b"}\n')
    assert store.glob("responses/*.jsonl") == ["responses/00000.jsonl", "responses/00001.jsonl"]
    assert store.glob("responses/00000.jsonl") == ["responses/00000.jsonl"]
    assert store.glob("responses/00002.jsonl") == []
    assert store.glob("nothing/*.json") == []
    store.remove("responses/00001.jsonl")
    store.remove("responses")
    assert store.glob("responses/*") == []
    assert twin.glob("responses/*.jsonl") == ["responses/00000.jsonl", "responses/00001.jsonl"]
