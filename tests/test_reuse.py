"""Reusing sibling runs' responses: the id index of a run being prepared, and what is copied
(over real HTTP against the simulator)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from curator_flows import steps
from curator_flows.reuse import SpooledIds
from curator_flows.store import MANIFEST, RunStore

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from dish_llms import REFUSED, DishWriter, StrictDishWriter  # noqa: E402


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


# ----------------------------------------------------------------------------- end to end
def test_answers_a_sibling_took_back_are_not_copied(sim, params, wd):
    rows = [{"n": i} for i in range(6)]
    first = DishWriter("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    REFUSED.clear()
    REFUSED.update(first.dataset["name"][:3])
    strict = StrictDishWriter("gpt-4o-mini", backend_params=params())
    again = strict(rows, working_dir=wd)  # takes back 3 answers and sends them again
    assert again.cache_dir == first.cache_dir and again.request_stats.failed == 0
    sent = sim.stats()["chat_completions"]
    assert sent >= 9

    grown = strict([*rows, {"n": 6}], working_dir=wd)  # a new run of the same family
    assert grown.cache_dir != first.cache_dir
    assert sim.stats()["chat_completions"] == sent + 1  # only the new row: no stale copy
    assert grown.request_stats.cached == 6 and grown.request_stats.failed == 0
    assert grown.dataset["name"][:6] == again.dataset["name"]


def test_a_prepare_that_crashed_before_its_manifest_copies_each_answer_once(
    sim, params, wd, monkeypatch
):
    rows = [{"n": i} for i in range(5)]
    DishWriter("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    llm = DishWriter("gpt-4o-mini", backend_params=params())
    real_write_json = RunStore.write_json

    def crash_at_the_manifest(store, rel, obj):
        if rel == MANIFEST:
            raise OSError("killed before the manifest")
        return real_write_json(store, rel, obj)

    monkeypatch.setattr(RunStore, "write_json", crash_at_the_manifest)
    with pytest.raises(OSError, match="killed"):
        steps.prepare(llm, [*rows, {"n": 5}], wd, rebuild_check=False)
    monkeypatch.setattr(RunStore, "write_json", real_write_json)
    run = steps.prepare(llm, [*rows, {"n": 5}], wd, rebuild_check=False)
    assert run["reused_responses"] == 5 and run["pending"] == 1
    lines = list(RunStore(run["run_uri"]).iter_records("responses/*.jsonl"))
    assert len(lines) == 5 == len({line["id"] for line in lines})
    steps.run_online(run, llm=llm)
    result = steps.finalize(run, llm=llm)
    assert result["statistics"]["request_stats"]["cached"] == 5
    assert sim.stats()["chat_completions"] == 6
