"""The flows end to end on a temporary Prefect server against the simulator over real HTTP:
online, batch (with expiry and resubmission) and offline-shaped (a stand-in generator), rows
checked; shards sharing the provider's limit; the statistics in the artifacts; re-running a
flow re-uses what the first one finished."""

from __future__ import annotations

import json
import time
from pathlib import Path

import prefect_api as api
import pytest
from flow_llms import Numbered, OfflineNumbers, StandInGenerator

from curator_flows import steps
from curator_flows.testing.simulator import Simulator

FAST_BATCHES = {"validating": 0.05, "in_progress": 0.2, "finalizing": 0.05, "cancelling": 0.05}


def online_llm(sim, **extra):
    params = {"base_url": sim.base_url, "progress": "off", "shard_size": 25, **extra}
    return Numbered("gpt-4o-mini", backend_params=params)


def batch_llm(sim, **extra):
    params = {
        "base_url": sim.base_url,
        "progress": "off",
        "batch_size": 10,
        "batch_check_interval": 0.05,
        **extra,
    }
    return Numbered("gpt-4o-mini", batch=True, backend_params=params)


def shard_rows(description: str) -> dict[str, list[str]]:
    """The rows of a progress artifact's shard table: shard → its other cells."""
    rows = {}
    for line in description.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].isdigit():
            rows[cells[0]] = cells[1:]
    return rows


def rows_of(summary) -> list[dict]:
    return list(steps.load_response(summary["run_uri"]).dataset)


def states_by_task(flow_run_id) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for task_run in api.task_runs(flow_run_id):
        out.setdefault(task_run.name, []).append(task_run.state.name)
    return out


def test_curate_online_end_to_end_with_artifacts(prefect_server, sim, wd):
    from prefect_tasks import curate

    state = curate(
        online_llm(sim), [{"n": i} for i in range(100)], wd,
        credentials={"api_key": "sk-test"}, artifact_key="numbers-online", return_state=True,
    )  # fmt: skip
    summary = state.result()
    assert summary["rows"] == 100 and summary["failed"] == 0
    rows = rows_of(summary)
    assert sorted(r["n"] for r in rows) == list(range(100))
    assert all(r["response"] for r in rows)
    assert set(sim.stats()["by_prompt"].values()) == {1} and len(sim.stats()["by_prompt"]) == 100

    flow_run = api.flow_run_id(state)
    runs = states_by_task(flow_run)
    assert sorted(name for name in runs if name.startswith("run_online_shard")) == [
        f"run_online_shard-0000{i}" for i in range(4)
    ]  # one task per shard, never one per prompt
    artifacts = {a.key: a for a in api.artifacts(flow_run)}
    table = {row["metric"]: row["value"] for row in json.loads(artifacts["numbers-online"].data)}
    stats = summary["statistics"]
    assert table["rows"] == 100 and table["failed"] == 0
    assert table["input tokens"] == stats["token_usage"]["input"] > 0
    assert table["output tokens"] == stats["token_usage"]["output"] > 0
    assert table["cost ($)"] == pytest.approx(stats["cost_info"]["total_cost"], abs=1e-6)
    assert table["throughput (requests/min)"] > 0 and table["run"] == summary["run_uri"]
    progress = [a for a in artifacts.values() if a.type == "progress"]
    assert [a.key for a in progress] == ["numbers-online-progress"]  # one per flow run
    assert float(progress[0].data) == 100.0
    rows = shard_rows(progress[0].description)
    assert sorted(rows) == [f"0000{i}" for i in range(4)]
    assert all(row[:3] == ["done", "25/25", "0"] for row in rows.values()), rows
    note = artifacts["numbers-online-output"]  # no output_uri: where the run's files are
    assert note.type == "markdown" and f"{summary['run_uri']}/output/" in note.data


def test_a_second_flow_run_reuses_the_first_runs_results(prefect_server, sim, wd):
    from prefect_tasks import curate

    llm, rows = online_llm(sim), [{"n": i} for i in range(50)]
    first = curate(llm, rows, wd, run_key="2026-11-27")
    sent = sim.stats()["requests"]
    state = curate(llm, rows, wd, run_key="2026-11-27", return_state=True)
    assert state.result()["rows"] == first["rows"] == 50
    assert sim.stats()["requests"] == sent  # nothing sent again
    shards = {k: v for k, v in states_by_task(api.flow_run_id(state)).items() if "shard" in k}
    assert shards and all(v == ["Cached"] for v in shards.values())
    fresh = curate(llm, rows, wd, run_key="2026-11-28")  # a new key: a new run, new generations
    assert fresh["run_id"] != first["run_id"] and sim.stats()["requests"] == sent + 50


def test_four_shards_at_once_hold_a_3000_rpm_limit(prefect_server, wd):
    """The mapped shards split the limit by the task runner's 4 workers: together they stay
    within the provider's 3,000 RPM (learned from its headers), every row once."""
    from prefect_tasks import curate

    with Simulator(rpm=3000) as sim:
        llm = online_llm(sim, shard_size=100)
        started = time.monotonic()
        state = curate(llm, [{"n": i} for i in range(400)], wd, return_state=True)
        elapsed = time.monotonic() - started
        stats = sim.stats()
    assert state.result()["rows"] == 400
    assert stats["status_counts"]["200"] == 400
    assert stats["rate_limited"] <= 12  # no 429 storm: a handful at most while learning
    assert elapsed >= 5.0  # 400 requests at 50/s with a 2 s burst (100) take ~6 s at least
    shard_runs = [t for t in api.task_runs(api.flow_run_id(state)) if "shard" in t.name]
    results = [t.state.result() for t in shard_runs]
    assert len(results) == 4
    assert all(r["limits"]["max_requests_per_minute"] == 750 for r in results)


def sending_intervals(summary) -> dict[str, tuple[float, float]]:
    """Each shard's sending time from its own response lines: from the earliest request's
    start (``ts - latency``) to the latest answer (``ts``)."""
    out = {}
    for path in sorted((Path(summary["run_uri"]) / "responses").glob("*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.stem] = (min(r["ts"] - r["latency"] for r in lines), max(r["ts"] for r in lines))
    return out


def most_at_once(intervals) -> int:
    """The most intervals that overlap at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    at_once = most = 0
    for _, step in edges:  # at a tie an end (-1) sorts before a start (+1)
        at_once += step
        most = max(most, at_once)
    return most


@pytest.mark.parametrize("slots", [None, 2], ids=["no-limit", "limit-2"])
def test_a_global_concurrency_limit_lets_only_its_slots_send_at_once(prefect_server, wd, slots):
    """Four shards on four workers: with a limit of 2 slots, at most two send at any instant
    (measured from the shards' own response times) and each takes half the provider's limits;
    without one, all four send together (what the limit prevents)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from prefect_tasks import curate

    name = None
    if slots:
        name = "curator-openai"
        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots)
            )
    with Simulator(rpm=6000, latency=0.2) as sim:
        llm = online_llm(sim, shard_size=20, max_concurrent_requests=4)
        state = curate(
            llm, [{"n": i} for i in range(80)], wd, concurrency_limit=name, return_state=True
        )
    summary = state.result()
    assert summary["rows"] == 80
    intervals = sending_intervals(summary)
    assert len(intervals) == 4
    if slots:
        assert most_at_once(intervals.values()) <= slots
        results = [
            t.state.result() for t in api.task_runs(api.flow_run_id(state)) if "shard" in t.name
        ]
        assert len(results) == 4
        assert all(r["limits"]["max_requests_per_minute"] == 6000 // slots for r in results)
    else:
        assert most_at_once(intervals.values()) > 2


def test_curate_batch_resubmits_what_expired_until_max_retries(prefect_server, wd):
    """Every batch expires with half its items done (floor): per 10-request shard the cycles
    carry 10, 5, 3, 2 requests (5 + 2 + 1 + 1 done), then the last one fails finally."""
    from prefect_tasks import curate_batch

    with Simulator(batch_timings=FAST_BATCHES, batch_expire_fraction=0.5) as sim:
        state = curate_batch(
            batch_llm(sim, max_retries=3), [{"n": i} for i in range(30)], wd, return_state=True
        )
        stats = sim.stats()
    summary = state.result()
    assert (summary["rows"], summary["failed"]) == (27, 3)
    assert len({r["n"] for r in rows_of(summary)}) == 27
    assert stats["batches_created"] == 3 * 4
    assert stats["batch_items"] == 3 * (10 + 5 + 3 + 2)  # only what expired went again
    runs = states_by_task(api.flow_run_id(state))
    assert sorted(n for n in runs if n.startswith("submit_batch-00000")) == [
        f"submit_batch-00000-c{c}" for c in range(4)
    ]
    (progress,) = [a for a in api.artifacts(api.flow_run_id(state)) if a.type == "progress"]
    assert "| batch |" in progress.description
    rows = shard_rows(progress.description)
    assert sorted(rows) == ["00000", "00001", "00002"]
    assert all(row[0] == "done_with_failures" and row[1] == "10/10" for row in rows.values())


def test_curate_offline_shaped_runs_gpu_tagged_shards(prefect_server, wd, monkeypatch):
    from curator_flows import offline
    from prefect_tasks import curate_offline

    generator = StandInGenerator()
    monkeypatch.setattr(offline, "build_generator", lambda llm: generator)
    llm = OfflineNumbers(
        "some/model", backend="vllm", backend_params={"progress": "off", "shard_size": 10}
    )
    state = curate_offline(llm, [{"n": i} for i in range(25)], wd, return_state=True)
    summary = state.result()
    assert summary["rows"] == 25 and summary["failed"] == 0
    assert sorted((r["n"], r["echo"]) for r in rows_of(summary)) == [(i, i) for i in range(25)]
    assert len(generator.seen) == len(set(generator.seen)) == 25
    shard_runs = [t for t in api.task_runs(api.flow_run_id(state)) if "shard" in t.name]
    assert len(shard_runs) == 3 and all("gpu" in t.tags for t in shard_runs)


def test_a_flow_refuses_an_llm_of_another_mode(prefect_server, sim, wd):
    from curator_flows.errors import ConfigError
    from prefect_tasks import curate, curate_batch

    with pytest.raises(ConfigError, match="curate_batch"):
        curate(batch_llm(sim), [{"n": 1}], wd)
    with pytest.raises(ConfigError, match="batch=True"):
        curate_batch(online_llm(sim), [{"n": 1}], wd)


def test_the_progress_artifact_moves_while_a_shard_runs(prefect_server, wd):
    """Read the flow run's progress artifact from outside while the flow runs: it shows values
    strictly between 0 and 100, the shard's row "running", before it ends at 100."""
    import contextvars
    import threading

    from prefect_tasks import curate
    from prefect_tasks.artifacts import progress_key

    seen: list[float] = []
    with Simulator(latency=0.05) as sim:
        llm = online_llm(sim, shard_size=200, max_concurrent_requests=4)
        rows = [{"n": i} for i in range(120)]
        key = progress_key("numbers-moving")
        context = contextvars.copy_context()
        flow = threading.Thread(
            target=context.run,
            args=(
                lambda: seen.append(
                    curate(llm, rows, wd, progress_interval=0.3, artifact_key="numbers-moving")[
                        "rows"
                    ]
                ),
            ),
        )
        flow.start()
        values: list[float] = []
        states: set[str] = set()
        while flow.is_alive():
            for artifact in api.artifacts_by_key(key):
                values.append(float(artifact.data))
                states |= {row[0] for row in shard_rows(artifact.description).values()}
            time.sleep(0.2)
        flow.join()
    assert seen == [120]
    assert any(0 < v < 100 for v in values), values
    assert "running" in states, states
    (final,) = api.artifacts_by_key(key)
    assert float(final.data) == 100.0 and shard_rows(final.description)["00000"][:2] == [
        "done",
        "120/120",
    ]


def test_progress_is_one_artifact_per_flow_run_under_the_datasets_key(prefect_server, sim, wd):
    """Two nights of a 4-shard build: two versions of one progress key (one card on the
    Artifacts page, the nights as its history), never a key per run or per shard."""
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from prefect_tasks import curate
    from prefect_tasks.artifacts import progress_key

    llm, rows = online_llm(sim), [{"n": i} for i in range(100)]
    states = [
        curate(llm, rows, wd, run_key=night, artifact_key="numbers-nightly", return_state=True)
        for night in ("2026-11-27", "2026-11-28")
    ]
    flow_runs = [api.flow_run_id(state) for state in states]
    keyed = [a for a in api.artifacts(*flow_runs) if a.type == "progress" and a.key]
    assert sorted(a.key for a in keyed) == [progress_key("numbers-nightly")] * 2
    assert {a.flow_run_id for a in keyed} == set(flow_runs)
    assert not [a for a in api.artifacts(*flow_runs) if a.type == "progress" and not a.key]
    with api.client() as client:
        cards = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(like_="numbers-nightly")
            )
        )
    assert sorted(c.key for c in cards) == sorted(
        ["numbers-nightly", "numbers-nightly-output", "numbers-nightly-progress"]
    )
    for artifact in keyed:
        assert sorted(shard_rows(artifact.description)) == [f"0000{i}" for i in range(4)]


def test_a_shard_task_outside_the_flows_keeps_an_unkeyed_progress_artifact(prefect_server, sim, wd):
    """A flow of the user's own that maps the shard task: each shard's progress is an unkeyed
    artifact of that flow run (on its page, not on the Artifacts page)."""
    from prefect import flow, unmapped

    from prefect_tasks import run_online_shard

    llm = online_llm(sim)
    run = steps.prepare(llm, [{"n": i} for i in range(50)], wd)

    @flow
    def my_build() -> int:
        done = run_online_shard.map(unmapped(run), run["shards"], llm=unmapped(llm)).result()
        return sum(r["succeeded"] for r in done)

    state = my_build(return_state=True)
    assert state.result() == 50
    progress = [a for a in api.artifacts(api.flow_run_id(state)) if a.type == "progress"]
    assert len(progress) == 2 and all(a.key is None for a in progress)
    assert sorted(a.description.split(":")[0] for a in progress) == ["shard 00000", "shard 00001"]
    assert all(float(a.data) == 100.0 for a in progress)


def test_each_shards_progress_reads_only_that_shard(prefect_server, wd, monkeypatch):
    """The progress thread of a shard task reads the status of its own shard, never every
    shard's files (four shard tasks each re-reading the whole run every few seconds); the
    whole run is read once, when the flow opens its progress artifact."""
    from prefect_tasks import curate

    read: list[list[str]] = []
    real_status = steps.status

    def recording_status(*args, **kwargs):
        status = real_status(*args, **kwargs)
        read.append([entry["shard"] for entry in status["shards"]])
        return status

    monkeypatch.setattr(steps, "status", recording_status)
    with Simulator(latency=0.02) as sim:
        llm = online_llm(sim, shard_size=10, max_concurrent_requests=2)
        summary = curate(llm, [{"n": i} for i in range(40)], wd, progress_interval=0.1)
    assert summary["rows"] == 40
    assert read[0] == [f"0000{i}" for i in range(4)]  # the flow, once
    assert read[1:] and all(len(shards) == 1 for shards in read[1:]), read
    assert {shards[0] for shards in read} == {f"0000{i}" for i in range(4)}


def test_on_a_task_runner_of_its_own_each_shard_takes_one_part_unless_told(prefect_server, wd):
    """``curate`` knows the width of its own task runner only; on another one each shard takes
    ``1/<shards>`` of the limits (never more than the provider allows) and a warning asks for
    ``parallel_shards``, which then decides."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from prefect_tasks import curate

    two_threads = curate.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    rows = [{"n": i} for i in range(30)]
    with Simulator(rpm=3000) as sim:
        untold = two_threads(online_llm(sim, shard_size=10), rows, wd, return_state=True)
        told = two_threads(
            online_llm(sim, shard_size=10), rows, wd, run_key="told", parallel_shards=2,
            return_state=True,
        )  # fmt: skip
    for state, rpm in ((untold, 1000), (told, 1500)):
        assert state.result()["rows"] == 30
        shard_runs = [t for t in api.task_runs(api.flow_run_id(state)) if "shard" in t.name]
        assert len(shard_runs) == 3
        assert {t.state.result()["limits"]["max_requests_per_minute"] for t in shard_runs} == {rpm}
    warnings = [line.message for line in api.logs(api.flow_run_id(untold)) if line.level >= 30]
    assert any("parallel_shards=" in message for message in warnings), warnings


def test_flow_runs_are_named_after_the_dataset_and_the_night(prefect_server, sim, wd):
    """``<artifact_key or LLM class>-<run_key>`` (the scheduled date put in), not
    ``<random name>``: the flow runs list reads like the build's history."""
    from prefect_tasks import curate

    llm, rows = online_llm(sim), [{"n": i} for i in range(5)]
    named = curate(llm, rows, wd, run_key="2026-11-27", artifact_key="recipes", return_state=True)
    dated = curate(llm, rows, wd, run_key="nightly-{scheduled_date}", return_state=True)
    keyless = curate(llm, rows, wd, return_state=True)
    names = [api.flow_run(api.flow_run_id(state)).name for state in (named, dated, keyless)]
    night = json.loads((Path(dated.result()["run_uri"]) / "manifest.json").read_text())["run_key"]
    assert names == ["recipes-2026-11-27", f"Numbered-{night}", "Numbered"]
    assert night.startswith("nightly-20")


def test_refresh_cache_runs_the_steps_again_and_sends_only_what_is_missing(prefect_server, sim, wd):
    from prefect_tasks import curate

    llm, rows = online_llm(sim), [{"n": i} for i in range(50)]
    curate(llm, rows, wd, run_key="2026-11-27")
    sent = sim.stats()["requests"]
    state = curate(llm, rows, wd, run_key="2026-11-27", refresh_cache=True, return_state=True)
    assert state.result()["rows"] == 50 and sim.stats()["requests"] == sent
    shards = {k: v for k, v in states_by_task(api.flow_run_id(state)).items() if "shard" in k}
    assert len(shards) == 2 and all(v == ["Completed"] for v in shards.values())


def test_the_output_artifact_is_a_link_only_where_a_browser_can_follow_it(
    prefect_server, sim, wd, tmp_path
):
    """A published local dataset gets a markdown note naming its path and how to read it; an
    ``https://`` output a link artifact; an ``s3://`` one a markdown note again."""
    from prefect import flow

    from prefect_tasks import curate
    from prefect_tasks.artifacts import report

    output = str(tmp_path / "published" / "numbers")
    state = curate(
        online_llm(sim), [{"n": i} for i in range(5)], wd, output_uri=output,
        artifact_key="numbers-local", return_state=True,
    )  # fmt: skip
    summary = state.result()
    (note,) = [a for a in api.artifacts(api.flow_run_id(state)) if a.key == "numbers-local-output"]
    assert note.type == "markdown" and output in note.data and output in note.description
    assert "read_parquet" in note.data

    @flow
    def notes() -> None:
        report({**summary, "output_uri": "https://data.example.org/numbers"}, "numbers-web")
        report({**summary, "output_uri": "s3://bucket/numbers"}, "numbers-s3")

    notes()
    (web,) = api.artifacts_by_key("numbers-web-output")  # Prefect stores a link as markdown
    link = "https://data.example.org/numbers"
    assert web.type == "markdown" and web.data == f"[{link}]({link})"
    (s3,) = api.artifacts_by_key("numbers-s3-output")
    assert "`s3://bucket/numbers`" in s3.data and "](" not in s3.data
