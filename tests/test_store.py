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
