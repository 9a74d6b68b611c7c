"""Retries and cache keys, through Prefect's own retry machinery: transient failures are
retried (with backoff and jitter), bad input, auth and budget failures never; cache keys are
the run id, shard and step, the same in every flow run."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path

import prefect_api as api
import pytest
from flow_llms import Numbered

from curator_flows.errors import (
    AuthenticationError,
    BudgetExceededError,
    EndpointUnreachableError,
    InputError,
    RateLimitExhaustedError,
)
from curator_flows.testing.simulator import Simulator


def attempts_until(error: Exception) -> tuple[str, int]:
    """Run a task with the step tasks' retry options (no delay) that fails once with
    ``error``; its final state's name and how many times it ran."""
    from prefect import flow, task

    from prefect_tasks.policy import retry_options

    calls: list[int] = []

    @task(**{**retry_options(), "retry_delay_seconds": 0})
    def step() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return "ok"

    @flow
    def one_step() -> str:
        return step()

    state = one_step(return_state=True)
    return state.name, len(calls)


@pytest.mark.parametrize(
    "error",
    [
        RateLimitExhaustedError("429 after every retry"),
        EndpointUnreachableError("connection refused"),
        TimeoutError("read timed out"),
    ],
    ids=["429-exhausted", "unreachable", "timeout"],
)
def test_transient_failures_are_retried(prefect_server, error):
    assert attempts_until(error) == ("Completed", 2)


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("HTTP 401: invalid key", status=401),
        BudgetExceededError("over budget", spent=1.0, budget=1.0),
        InputError("row 3 has no 'n'"),
        KeyError("a bug"),
    ],
    ids=["401", "budget", "bad-input", "bug"],
)
def test_permanent_failures_are_not_retried(prefect_server, error):
    assert attempts_until(error) == ("Failed", 1)


def send_through_the_engine(sim: Simulator, body: dict) -> tuple[str, int]:
    """A task with the step tasks' retry options (no delay) that sends one chat completion
    through the engine's HTTP client (one attempt of its own, like a batch call that used up
    its attempts): the simulator's real answer decides; the final state's name and how many
    times the task ran."""
    from prefect import flow, task

    from curator_flows.batch.transport import Http
    from prefect_tasks.policy import retry_options

    calls: list[int] = []

    @task(**{**retry_options(), "retry_delay_seconds": 0})
    def send() -> str:
        calls.append(1)
        http = Http({"Authorization": "Bearer sk-test"}, timeout=30, attempts=1)
        answer = http.request("POST", f"{sim.base_url}/chat/completions", json=body)
        return answer["choices"][0]["message"]["content"]

    @flow
    def one_call() -> str:
        return send()

    state = one_call(return_state=True)
    return state.name, len(calls)


def test_a_real_503_is_retried(prefect_server, sim):
    prompt = "name a dish [[sim:503x1]]"  # the simulator answers 503 once, then 200
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    assert send_through_the_engine(sim, body) == ("Completed", 2)
    stats = sim.stats()
    assert stats["status_counts"] == {"503": 1, "200": 1}
    assert list(stats["by_prompt"].values()) == [2]  # the same request, once more


def test_a_real_400_is_not_retried(prefect_server, sim):
    body = {"model": "gpt-4o-mini", "messages": "not a list of messages"}
    assert send_through_the_engine(sim, body) == ("Failed", 1)
    assert sim.stats()["status_counts"] == {"400": 1} and sim.stats()["requests"] == 1


def test_every_step_task_retries_only_transient_failures_with_backoff_and_jitter():
    from prefect_tasks import policy, tasks

    step_tasks = [
        tasks.prepare, tasks.run_online_shard, tasks.run_offline_shard, tasks.submit_batch,
        tasks.wait_for_batch, tasks.collect_batch, tasks.launch_offline_shard, tasks.finalize,
    ]  # fmt: skip
    for step in step_tasks:
        assert step.retries == policy.RETRIES and step.retry_jitter_factor == policy.JITTER_FACTOR
        assert step.retry_delay_seconds == [10.0, 20.0, 40.0, 80.0]
        assert step.retry_condition_fn in (policy.retry_transient, policy.retry_transient_finalize)
        assert step.result_serializer == "json"
    assert tasks.run_offline_shard.tags == {"gpu"}


def test_the_retries_outlast_a_dead_workers_lease():
    """A worker that died on another host leaves its shard's lease for up to ``lease_seconds``;
    a new flow run's task meets ``LeaseHeldError`` (transient) until then. Its retries' delays,
    each at the shortest Prefect's jitter draws, must add up to more than that."""
    from prefect.utilities.math import lower_clamp_multiple

    from curator_flows.config import CommonParams
    from prefect_tasks import tasks

    delays = tasks.run_online_shard.retry_delay_seconds
    shortest = lower_clamp_multiple(1 + tasks.run_online_shard.retry_jitter_factor)
    assert sum(delays) * shortest > CommonParams().lease_seconds


def test_cache_keys_are_run_shard_and_step_never_the_flow_run(prefect_server, tmp_path):
    from prefect import flow

    from prefect_tasks.policy import step_cache_key

    run = {"run_id": "abc123def456-0f0f", "run_uri": str(tmp_path / "abc123def456-0f0f")}
    key = step_cache_key("submit", run, "00001", 0)
    assert key == step_cache_key("submit", run["run_uri"], "00001", 0)  # a result or its URI
    assert key.startswith("curator-submit-abc123def456-0f0f-00001-c0-")
    others = {
        step_cache_key("submit", run, "00002", 0),
        step_cache_key("submit", run, "00001", 1),
        step_cache_key("collect", run, "00001", 0),
        step_cache_key(
            "submit", {**run, "run_uri": str(tmp_path / "b" / run["run_id"])}, "00001", 0
        ),
    }
    assert key not in others and len(others) == 4

    @flow
    def keyed() -> str:
        return step_cache_key("submit", run, "00001", 0)

    assert keyed() == keyed() == key  # two flow runs, one key


def test_each_tasks_cache_key_fn_is_deterministic_in_run_shard_and_cycle(tmp_path):
    """The ``cache_key_fn`` the tasks carry: the same parameters give the same key; the LLM,
    the credentials and the other parameters do not enter it; another run URI, shard or cycle
    gives another key."""
    from prefect_tasks import tasks

    run = {"run_id": "abc123def456-0f0f", "run_uri": str(tmp_path / "abc123def456-0f0f")}
    elsewhere = {**run, "run_uri": str(tmp_path / "elsewhere" / run["run_id"])}
    keyed_tasks = [
        tasks.run_online_shard, tasks.run_offline_shard, tasks.submit_batch,
        tasks.wait_for_batch, tasks.collect_batch, tasks.launch_offline_shard,
    ]  # fmt: skip
    keys = set()
    for step in keyed_tasks:
        cycled = "cycle" in inspect.signature(step.fn).parameters

        def keyed(run=run, shard="00001", cycle=0, **other):
            parameters = {"run": run, "shard": shard, **other}
            if cycled:  # noqa: B023 (called in this iteration)
                parameters["cycle"] = cycle
            return step.cache_key_fn(None, parameters)  # noqa: B023

        key = keyed()
        assert keyed() == key == keyed(run=dict(run))
        assert keyed(credentials={"api_key": "sk-a"}, llm="m:L", parallel_shards=3) == key
        others = {keyed(run=elsewhere), keyed(shard="00002")} | (
            {keyed(cycle=1)} if cycled else set()
        )
        assert key not in others and len(others) == (3 if cycled else 2)
        keys.add(key)
    assert len(keys) == len(keyed_tasks)  # one key space per step


def test_a_second_flow_run_finds_the_results_under_the_same_cache_keys(prefect_server, sim, wd):
    from prefect_tasks import curate
    from prefect_tasks.policy import step_cache_key

    llm = Numbered(
        "gpt-4o-mini",
        backend_params={"base_url": sim.base_url, "progress": "off", "shard_size": 5},
    )

    def shard_keys(state) -> dict[str, str]:
        runs = api.task_runs(api.flow_run_id(state))
        shards = [t for t in runs if t.name.startswith("run_online_shard")]
        return {t.name: Path(t.state.data.storage_key).name for t in shards}  # the stored result

    rows = [{"n": i} for i in range(10)]
    first = curate(llm, rows, wd, run_key="k", return_state=True)
    second = curate(llm, rows, wd, run_key="k", return_state=True)
    run = first.result()
    assert (
        shard_keys(first)
        == shard_keys(second)
        == {
            f"run_online_shard-{shard}": step_cache_key("run_online", run, shard)
            for shard in ("00000", "00001")
        }
    )


def test_a_wrong_key_fails_the_flow_without_a_retry(prefect_server, wd):
    from prefect_tasks import curate

    with Simulator(require_api_key="sk-right") as sim:
        llm = Numbered("gpt-4o-mini", backend_params={"base_url": sim.base_url, "progress": "off"})
        state = curate(llm, [{"n": i} for i in range(5)], wd,
                       credentials={"api_key": "sk-wrong"}, return_state=True)  # fmt: skip
        assert sim.stats()["status_counts"].get("200", 0) == 0
    assert state.is_failed()
    with pytest.raises(AuthenticationError):
        state.result()
    (shard,) = [t for t in api.task_runs(api.flow_run_id(state)) if "shard" in t.name]
    assert shard.run_count == 1 and shard.state.name == "Failed"


def test_an_unreachable_endpoint_is_retried_until_it_answers(prefect_server, wd, monkeypatch):
    """The provider is down for the first attempt (no HTTP answer at all) and comes up while
    Prefect decides on the retry (in the shard task's own ``retry_condition_fn``), so the
    retry finds it: no timing to race."""
    from prefect_tasks import curate, policy, tasks

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers: list[Simulator] = []
    verdicts: list[tuple[str, bool]] = []

    def retry_and_start_the_provider(task, task_run, state) -> bool:
        retry = policy.retry_transient(task, task_run, state)
        verdicts.append((type(policy.failure_of(state)).__name__, retry))
        if retry and not servers:
            servers.append(Simulator(port=port).start())
        return retry

    monkeypatch.setattr(
        tasks,
        "run_online_shard",
        tasks.run_online_shard.with_options(
            retry_delay_seconds=0, retry_condition_fn=retry_and_start_the_provider
        ),
    )
    llm = Numbered(
        "gpt-4o-mini",
        backend_params={"base_url": f"http://127.0.0.1:{port}/v1", "progress": "off"},
    )
    try:
        state = curate(llm, [{"n": i} for i in range(5)], wd, return_state=True)
        assert verdicts == [("EndpointUnreachableError", True)]
        assert state.result()["rows"] == 5
        assert servers[0].stats()["status_counts"] == {"200": 5}
    finally:
        for server in servers:
            server.stop()
    (shard,) = [t for t in api.task_runs(api.flow_run_id(state)) if "shard" in t.name]
    assert shard.run_count == 2


def unreachable_llm() -> Numbered:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections are refused
    params = {"base_url": f"http://127.0.0.1:{port}/v1", "progress": "off", "max_retries": 0}
    return Numbered("gpt-4o-mini", backend_params=params)


@pytest.mark.parametrize("retries", [0, 2])
def test_retries_and_their_delays_are_flow_parameters(prefect_server, wd, retries):
    """An endpoint that never answers: the shard task runs ``1 + retries`` times, with the
    delays the flow was given (none here), then the flow fails with the transient error."""
    from prefect_tasks import curate

    state = curate(
        unreachable_llm(), [{"n": i} for i in range(3)], wd, retries=retries,
        retry_delay_seconds=0, return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    with pytest.raises(EndpointUnreachableError):
        state.result()
    (shard,) = [t for t in api.task_runs(api.flow_run_id(state)) if "shard" in t.name]
    assert shard.run_count == 1 + retries


def test_step_options_keep_the_tasks_retry_rules_and_the_default_backoff():
    from prefect_tasks import policy, tasks
    from prefect_tasks.policy import StepOptions

    assert StepOptions().apply(tasks.run_online_shard) is tasks.run_online_shard  # as today
    six = StepOptions(retries=6).apply(tasks.run_online_shard)
    assert six.retries == 6 and six.retry_delay_seconds == [10, 20, 40, 80, 160, 320]
    assert six.retry_condition_fn is policy.retry_transient
    assert six.retry_jitter_factor == policy.JITTER_FACTOR
    listed = StepOptions(retries=2, retry_delay_seconds=[1, 5]).apply(tasks.finalize)
    assert listed.retry_delay_seconds == [1, 5]
    assert listed.retry_condition_fn is policy.retry_transient_finalize
    refreshed = StepOptions(refresh_cache=True).apply(tasks.collect_batch)
    assert refreshed.refresh_cache is True and refreshed.retries == policy.RETRIES


@pytest.mark.parametrize(
    "options",
    [
        {"retries": -1},
        {"retry_delay_seconds": -5},
        {"retry_delay_seconds": []},
        {"retry_delay_seconds": [10, -1]},
        {"retry_delay_seconds": [1] * 51},
    ],
)
def test_bad_retry_parameters_fail_the_flow_before_anything_is_sent(
    prefect_server, sim, wd, options
):
    from curator_flows.errors import ConfigError
    from prefect_tasks import curate

    llm = Numbered("gpt-4o-mini", backend_params={"base_url": sim.base_url, "progress": "off"})
    with pytest.raises(ConfigError, match="retr"):
        curate(llm, [{"n": 1}], wd, **options)
    assert sim.stats()["requests"] == 0
