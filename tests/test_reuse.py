"""Reusing sibling runs' responses: the id index of a run being prepared."""

from __future__ import annotations

from curator_flows.reuse import SpooledIds


def spool(tmp_path, shards: dict[str, list[str]]) -> list[dict]:
    described = []
    for name, ids in shards.items():
        lines = "".join(f'{{"id":"{i}","row":0,"messages":[],"input":{{}}}}\n' for i in ids)
        (tmp_path / f"{name}.jsonl").write_text(lines)
        described.append({"name": name, "requests": len(ids)})
    return described


def test_each_id_is_claimed_once_into_the_shard_that_holds_it(tmp_path):
    a, b = "1" * 16 + "0" * 16, "1" * 16 + "0" * 15 + "9"  # the same first half
    c, d = "f" * 31 + "e", "0" * 31 + "5"
    shards = spool(tmp_path, {"00000": [a, c], "00001": [b, d], "00002": [a]})
    ids = SpooledIds(str(tmp_path), shards)
    assert ids.remaining == 5
    assert ids.claim([b, "f" * 32, a, a, a, d]) == ["00001", None, "00000", "00002", None, "00001"]
    assert ids.claim([c]) == ["00000"]
    assert ids.remaining == 0
