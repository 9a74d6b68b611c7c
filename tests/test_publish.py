"""finalize(run, output_uri=...): Parquet parts, then the ``_SUCCESS`` marker; readers see the
old complete output or the new one, never a mix, also after a kill during publish (local disk
and S3 through moto's server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from curator_flows import Credentials, steps
from curator_flows.publish import MARKER, published_files, read_marker

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from publish_llms import Versioned  # noqa: E402


def read_published(output_uri: str, storage_options: dict) -> list[dict]:
    """What a downstream reader sees: exactly the files ``_SUCCESS`` lists."""
    rows = []
    for uri in published_files(output_uri, storage_options):
        with fsspec.open(uri, "rb", **storage_options) as handle:
            rows.extend(pq.read_table(handle).to_pylist())
    return rows


def listing(output_uri: str, storage_options: dict) -> list[str]:
    fs, root = fsspec.core.url_to_fs(output_uri, **storage_options)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))


@pytest.fixture(params=["local", "s3"])
def target(request, tmp_path):
    """``(working_dir, output_uri, storage_options)`` on local disk or on S3 (moto)."""
    if request.param == "local":
        return str(tmp_path / "wd"), str(tmp_path / "published" / "date=2024-05-01"), {}
    bucket = request.getfixturevalue("s3_bucket")
    options = {"endpoint_url": request.getfixturevalue("s3_endpoint")}
    return f"{bucket}/runs", f"{bucket}/published/date=2024-05-01", options


def test_publish_writes_parts_then_a_marker_with_rows_and_statistics(sim, params, target):
    working_dir, output_uri, options = target
    credentials = Credentials(storage_options=options)
    llm = Versioned("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(10)], working_dir, credentials=credentials)
    steps.run_online(run, llm=llm, credentials=credentials)
    result = steps.finalize(run, llm=llm, output_uri=output_uri, credentials=credentials)
    assert result["output_uri"] == output_uri.rstrip("/")
    marker = read_marker(output_uri, options)
    assert marker["rows"] == 10 and marker["run_id"] == run["run_id"]
    assert [entry["rows"] for entry in marker["files"]] == [4, 4, 2]
    assert marker["columns"] == {"n": "int64", "version": "int64"}
    assert marker["statistics"]["request_stats"]["succeeded"] == 10
    assert read_published(output_uri, options) == [{"n": i, "version": 1} for i in range(10)]
    assert MARKER in listing(output_uri, options)

    names = listing(output_uri, options)
    again = steps.finalize(run, llm=llm, output_uri=output_uri, credentials=credentials)
    assert again["rows"] == 10 and read_marker(output_uri, options) == marker  # rewrote nothing
    assert listing(output_uri, options) == names


def test_a_kill_during_publish_leaves_the_old_output_and_the_next_publish_completes(
    sim, params, target
):
    working_dir, output_uri, options = target
    credentials = Credentials(storage_options=options)
    llm = Versioned("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(10)], working_dir, credentials=credentials)
    steps.run_online(run, llm=llm, credentials=credentials)
    steps.finalize(run, llm=llm, output_uri=output_uri, credentials=credentials)
    old_marker = read_marker(output_uri, options)

    child = subprocess.Popen(
        [
            sys.executable,
            str(SUPPORT / "publish_llms.py"),
            run["run_uri"],
            output_uri,
            json.dumps(options),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SUPPORT)},
    )
    try:
        line = child.stdout.readline()  # the first new part is complete
        assert json.loads(line)["written"], line
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)

    assert len(listing(output_uri, options)) > len(old_marker["files"]) + 1  # a stray part
    assert read_marker(output_uri, options) == old_marker  # readers still see the old output
    assert read_published(output_uri, options) == [{"n": i, "version": 1} for i in range(10)]

    newer = Versioned("gpt-4o-mini", version=3, backend_params=params(shard_size=4))
    steps.finalize(run, llm=newer, output_uri=output_uri, credentials=credentials)
    marker = read_marker(output_uri, options)
    assert marker["publish_id"] != old_marker["publish_id"] and marker["rows"] == 10
    assert read_published(output_uri, options) == [{"n": i, "version": 3} for i in range(10)]
    names = listing(output_uri, options)
    assert not {entry["path"] for entry in old_marker["files"]} & set(names)  # old parts gone
    assert {entry["path"] for entry in marker["files"]} <= set(names)


def test_stray_parts_of_a_crashed_publish_are_removed_once_old_enough(tmp_path):
    from curator_flows.publish import _remove_superseded
    from curator_flows.store import RunStore

    target = RunStore(str(tmp_path / "out"))
    for name in ("part-00000000000000000001-aaaa-00000.parquet", "part-99999999999999999999-bb-0"):
        target.write_bytes(name if name.endswith(".parquet") else name + ".parquet", b"x")
    keep = {"files": [{"path": "part-00000000000000000002-cc-00000.parquet"}]}
    target.write_bytes(keep["files"][0]["path"], b"x")
    _remove_superseded(target, None, keep, cutoff=1.0)
    assert target.glob("part-*") == [
        "part-00000000000000000002-cc-00000.parquet",
        "part-99999999999999999999-bb-0.parquet",  # younger than the cutoff: maybe still running
    ]


def test_an_incomplete_run_is_not_published(sim, params, tmp_path):
    llm = Versioned("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(8)], str(tmp_path / "wd"))
    steps.run_online(run, "00000", llm=llm)
    output_uri = str(tmp_path / "out")
    with pytest.raises(Exception, match="00001"):
        steps.finalize(run, llm=llm, output_uri=output_uri)
    assert read_marker(output_uri) is None
