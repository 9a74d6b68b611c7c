"""The run store: atomic whole files, append-only lines, torn tails, and no leftovers of
interrupted writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curator_flows import steps
from curator_flows.store import RunStore


def test_torn_last_line_is_ignored_and_isolated(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    with store.appender("responses/00000") as out:
        out.append({"id": "a"})
    path = tmp_path / "run" / "responses" / "00000.jsonl"
    with open(path, "ab") as handle:
        handle.write(b'{"id": "torn", "cont')  # a crash mid-line
    assert [r["id"] for r in store.iter_records("responses/00000.*jsonl")] == ["a"]
    with store.appender("responses/00000") as out:
        out.append({"id": "b"})
    assert [r["id"] for r in store.iter_records("responses/00000.*jsonl")] == ["a", "b"]


def test_whole_files_never_appear_half_written(tmp_path):
    store = RunStore(str(tmp_path / "run"))

    def rows():
        yield {"n": 1}
        raise RuntimeError("crash while writing")

    try:
        store.write_lines("requests/00000.jsonl", rows())
    except RuntimeError:
        pass
    assert not store.exists("requests/00000.jsonl")
    assert os.listdir(tmp_path / "run" / "requests") == []


def test_part_appender_on_memory_fs():
    store = RunStore("memory://store-test/run")
    appender = store.appender("responses/00001", flush_lines=2)
    for i in range(5):
        appender.append({"i": i})
    appender.close()
    parts = store.glob("responses/00001.*jsonl")
    assert len(parts) == 3
    assert [r["i"] for r in store.iter_records("responses/00001.*jsonl")] == list(range(5))


def test_an_object_store_file_appears_whole_from_a_local_spool(s3_bucket, tmp_path, monkeypatch):
    import tempfile

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    store = RunStore(f"{s3_bucket}/run")
    with store.atomic_writer("output/big.bin") as handle:
        for _ in range(8):
            handle.write(b"x" * (1 << 20))
        assert not store.exists("output/big.bin")  # nothing visible mid-write
        assert len(os.listdir(spool)) == 1  # the bytes are on local disk, not in memory
    assert store.fs.size(store.path("output/big.bin")) == 8 << 20
    with pytest.raises(RuntimeError), store.atomic_writer("output/never.bin") as handle:
        handle.write(b"partial")
        raise RuntimeError("crash while writing")
    assert not store.exists("output/never.bin") and not os.listdir(spool)


def test_arrow_files_are_read_a_batch_at_a_time_from_an_object_store(s3_bucket):
    import pyarrow as pa

    store = RunStore(f"{s3_bucket}/run")
    table = pa.table({"n": list(range(10))})
    with store.atomic_writer("output/data.arrow") as handle:
        with pa.ipc.new_stream(handle, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=3):
                writer.write_batch(batch)
    with store.arrow_stream("output/data.arrow") as reader:
        assert [batch.num_rows for batch in reader] == [3, 3, 3, 1]


# ----------------------------------------------------------------------------- leftovers
SUPPORT = Path(__file__).parent / "support"


def _temps(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp-*"))


def test_a_finalize_killed_mid_write_leaves_nothing_after_the_next_one(sim, wd):
    """kill -9 during finalize leaves ``failed_requests.jsonl.tmp-*`` (and output temp files);
    the next successful finalize removes them."""
    sys.path.insert(0, str(SUPPORT))
    from slow_llms import SlowParsing

    params = {"base_url": sim.base_url, "api_key": "k", "progress": "off", "max_retries": 0}
    llm = SlowParsing("gpt-4o-mini", backend_params=params)
    rows = [{"n": i} for i in range(39)] + [{"n": "39 [[sim:500]]"}]  # one failure line
    run = steps.prepare(llm, rows, wd)
    steps.run_online(run, llm=llm)
    run_dir = Path(run["run_uri"])
    code = f"from curator_flows import steps\nsteps.finalize({run['run_uri']!r})\n"
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SUPPORT), "OPENAI_API_KEY": "k"},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(t.startswith("failed_requests.jsonl.tmp-") for t in _temps(run_dir)):
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()
            time.sleep(0.02)
        time.sleep(0.3)  # mid-parse
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert any(t.startswith("failed_requests.jsonl.tmp-") for t in _temps(run_dir))
    assert steps.finalize(run, llm=llm)["failed"] == 1
    assert _temps(run_dir) == []
    assert (run_dir / "failed_requests.jsonl").exists()


def test_a_concurrent_writers_temp_file_is_never_removed(tmp_path):
    from curator_flows import liveness

    store = RunStore(str(tmp_path / "run"))
    store.write_json("manifest.json", {"v": 1})
    here = liveness.current()
    other = subprocess.Popen(["sleep", "30"])
    try:
        live = [
            "manifest.json.tmp-unknown-1234abcd",  # an unknown writer, recently active
            "manifest.json.tmp-elsewhere-1-1-1234abcd",  # another host or container
        ]
        if here is not None:
            started = liveness._stat(other.pid)[1]
            live.append(f"manifest.json.tmp-{here.scope}-{other.pid}-{started}-1234abcd")
        dead = ["manifest.json.tmp-0badc0de"]  # an old name format, untouched for two days
        if here is not None:
            dead.append(f"manifest.json.tmp-{here.scope}-{other.pid}-{started + 1}-1234abcd")
        for name in live + dead:
            (tmp_path / "run" / name).write_bytes(b"partial")
        old = time.time() - 2 * 86400
        os.utime(tmp_path / "run" / dead[0], (old, old))
        store.write_json("manifest.json", {"v": 2})
    finally:
        other.kill()
        other.wait()
    assert sorted(p.name for p in (tmp_path / "run").glob("*.tmp-*")) == sorted(live)
    assert store.read_json("manifest.json") == {"v": 2}
