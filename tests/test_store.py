"""The run store: atomic whole files, append-only lines, torn tails."""

from __future__ import annotations

import os

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

    import pytest

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
