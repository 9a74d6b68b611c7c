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
    shards = spool(tmp_path, {"00000": [a, c], "00001": [b], "00002": [d]})
    ids = SpooledIds(str(tmp_path), shards)
    assert ids.remaining == 4 and ids.shared_halves
    assert ids.claim([b, "f" * 32, a, a, d]) == ["00001", None, "00000", None, "00002"]
    assert ids.claim([c]) == ["00000"]
    assert ids.remaining == 0


def test_lookups_in_chunks_skip_ids_that_are_not_ours_or_not_ids(tmp_path):
    ours = [f"{n * 7919:016x}{n:016x}" for n in range(1, 3001)]
    shards = spool(tmp_path, {"00000": ours[:1000], "00001": ours[1000:2500], "00002": ours[2500:]})
    ids = SpooledIds(str(tmp_path), shards)
    assert not ids.shared_halves
    wanted = ["z" * 32, ours[2999], f"{10**6:032x}", ours[0], ours[1500], ours[0]]
    wanted.append(ours[0][:16] + "f" * 16)  # our first half, not our id
    assert ids.claim(wanted) == [None, "00002", None, "00000", "00001", None, None]
    assert ids.remaining == 2997
    assert ids.claim(ours).count(None) == 3  # the three claimed before
    assert ids.remaining == 0 and ids.claim([ours[5]]) == [None]
