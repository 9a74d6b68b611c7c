"""OpenAI-specific batch behaviour: sharding by count and bytes, metadata tags, file deletion."""

from __future__ import annotations

import pytest
from batch_helpers import FAST, credentials, make_llm, record, wait_done
from batch_llms import FactWriter, Numbered, Padded

from curator_flows import IncompleteRunError, steps
from curator_flows.batch import sizing
from curator_flows.batch.sizing import line_overhead
from curator_flows.runs import open_run


def test_120k_requests_become_three_batches_of_50k_50k_20k(bsim, wd):
    bsim.configure(batch_timings={**FAST, "validating": 60.0})  # no need to run them
    llm = make_llm(Numbered, "openai", bsim)
    run = steps.prepare(llm, ({"n": i} for i in range(120_000)), wd)
    assert run["shards"] == ["00000", "00001", "00002"]
    sizes = [steps.submit(run, shard, llm=llm)["requests"] for shard in run["shards"]]
    assert sizes == [50_000, 50_000, 20_000]
    batches = list(bsim.state.openai_batches.values())
    assert sorted(len(b.items) for b in batches) == [20_000, 50_000, 50_000]
    assert {b.metadata["curator_shard"] for b in batches} == set(run["shards"])
    assert {b.metadata["curator_run_id"] for b in batches} == {run["run_id"]}
    steps.cancel(run, credentials=credentials())


def test_large_prompts_are_split_by_bytes_into_full_files_under_the_limit(bsim, wd, monkeypatch):
    limit = 100_000
    monkeypatch.setitem(sizing.BATCH_LIMITS, "openai", (50_000, limit))
    llm = make_llm(Padded, "openai", bsim)
    rows = [{"n": i, "pad": 3000 + 37 * i} for i in range(120)]
    result = llm(rows, working_dir=wd)
    assert result.dataset["n"] == list(range(120))
    manifest = open_run(result.cache_dir)[1]
    assert len(manifest["shards"]) > 4
    for shard in manifest["shards"]:
        entry = record(result.cache_dir, shard["name"])["rounds"][0]
        # the estimate prepare sharded with is the exact size of the uploaded file
        assert entry["input_bytes"] == shard["bytes"] <= limit
        assert shard["bytes"] > limit - 8000 or shard is manifest["shards"][-1]
    sizes = sorted(len(f.data) for f in bsim.state.files.values() if f.purpose == "batch")
    assert sizes == sorted(s["bytes"] for s in manifest["shards"])


def test_line_size_estimate_is_exact_with_a_response_format(bsim, wd):
    llm = make_llm(FactWriter, "openai", bsim, max_tokens=100)
    run = steps.prepare(llm, [{"topic": "é" * i} for i in range(30)], wd)
    steps.submit(run, "00000", llm=llm)
    entry = record(run["run_uri"], "00000")["rounds"][0]
    (upload,) = [f for f in bsim.state.files.values() if f.purpose == "batch"]
    assert len(upload.data) == entry["input_bytes"]
    assert open_run(run)[1]["shards"][0]["bytes"] == len(upload.data)
    assert line_overhead(llm) > 0


def test_files_are_deleted_only_as_configured(bsim, wd):
    bsim.configure(batch_expire_fraction=0.5)
    llm = make_llm(Numbered, "openai", bsim, delete_successful_batch_files=True)
    run = steps.prepare(llm, [{"n": i} for i in range(20)], wd)
    steps.submit(run, "00000", llm=llm)
    wait_done(run, "00000")
    bsim.configure(batch_expire_fraction=None)
    steps.collect(run, "00000", llm=llm)
    expired = record(run["run_uri"], "00000")["rounds"][0]
    kept = {expired["input_file_id"], expired["output_file_id"], expired["error_file_id"]}
    assert kept <= set(bsim.state.files)  # an expired batch is not "successful"

    steps.submit(run, "00000", llm=llm)
    wait_done(run, "00000")
    assert steps.collect(run, "00000", llm=llm)["done"]
    completed = record(run["run_uri"], "00000")["rounds"][1]
    assert completed["files_deleted"]
    assert not {completed["input_file_id"], completed["output_file_id"]} & set(bsim.state.files)
    assert kept <= set(bsim.state.files)


def test_failed_batch_files_are_deleted_when_asked(bsim, wd):
    bsim.configure(batch_fail_validation=True)
    llm = make_llm(Numbered, "openai", bsim, max_retries=0, delete_failed_batch_files=True)
    with pytest.raises(IncompleteRunError) as err:
        llm([{"n": i} for i in range(4)], working_dir=wd)
    assert err.value.failed == 4
    entry = record(err.value.failed_requests_uri.rsplit("/", 1)[0], "00000")["rounds"][0]
    assert entry["status"] == "failed" and entry["files_deleted"]
    assert entry["input_file_id"] not in bsim.state.files


def test_poll_walks_through_every_status_and_is_done_only_at_the_end(bsim, wd):
    bsim.configure(
        batch_timings={  # long enough phases that polls see each one on a loaded machine
            "validating": 0.6,
            "in_progress": 0.6,
            "finalizing": 0.6,
            "cancelling": 0.6,
        }
    )
    llm = make_llm(Numbered, "openai", bsim, batch_size=3)
    run = steps.prepare(llm, [{"n": i} for i in range(6)], wd)
    seen: dict[str, list[tuple[str, bool]]] = {"00000": [], "00001": []}
    steps.submit(run, "00000", llm=llm)
    bsim.configure(batch_timings={**FAST, "in_progress": 30.0, "cancelling": 0.6})
    steps.submit(run, "00001", llm=llm)
    while not seen["00000"] or not seen["00000"][-1][1]:
        polled = steps.poll(run, "00000")
        seen["00000"].append((polled["status"], polled["done"]))
    steps.cancel(run)
    while not seen["00001"] or not seen["00001"][-1][1]:
        polled = steps.poll(run, "00001")
        seen["00001"].append((polled["status"], polled["done"]))
    first = [s for s, _ in seen["00000"]]
    assert {"validating", "in_progress", "finalizing", "completed"} <= set(first)
    assert [done for _, done in seen["00000"]].index(True) == first.index("completed")
    second = [s for s, _ in seen["00001"]]
    assert "cancelling" in second and second[-1] == "cancelled"
