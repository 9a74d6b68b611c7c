"""``curate_offline`` with ``shard_deployment``: every shard runs as a flow run of the
``curate-offline-shard`` deployment (what a GPU work pool executes), served here by a runner in
another process whose flow runs rebuild the LLM from the run manifest; the parent waits for them
and finalizes. (A stand-in generator replaces vLLM in those processes.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import prefect_api as api
import pytest
from flow_llms import OfflineNumbers

from curator_flows import steps
from curator_flows.errors import ConfigError

SERVE = (
    "from prefect_tasks import curate_offline_shard\n"
    "curate_offline_shard.serve(name='gpu', tags=['gpu'], limit=4)\n"
)


def test_offline_shards_run_as_flow_runs_of_a_gpu_deployment(prefect_env, wd):
    from prefect_tasks import CuratorCredentials, curate_offline

    CuratorCredentials(api_key="sk-unused-by-vllm").save("gpu-creds", overwrite=True)
    env = {**prefect_env, "CURATOR_TEST_STAND_IN_VLLM": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    output = wd + "-runner.log"  # a file, not a pipe nobody reads: the runner never blocks
    with open(output, "wb") as sink:
        runner = subprocess.Popen([sys.executable, "-c", SERVE], env=env, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 90
        while not _deployment_exists("curate-offline-shard/gpu"):
            assert runner.poll() is None, open(output).read()[-3000:]
            assert time.monotonic() < deadline, "the runner never registered its deployment"
            time.sleep(0.5)
        llm = OfflineNumbers(
            "some/model", backend="vllm", backend_params={"progress": "off", "shard_size": 10}
        )
        state = curate_offline(
            llm, [{"n": i} for i in range(20)], wd, credentials="gpu-creds",
            shard_deployment="curate-offline-shard/gpu", return_state=True,
        )  # fmt: skip
        summary = state.result()
        # read while the runner serves: a runner shutting down may still touch its flow runs
        launches = [t for t in api.task_runs(api.flow_run_id(state)) if "launch" in t.name]
        results = [t.state.result() for t in launches]
        children = [api.flow_run(r["flow_run_id"]) for r in results]
    finally:
        runner.terminate()
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            runner.kill()
    assert summary["rows"] == 20 and summary["failed"] == 0
    rows = list(steps.load_response(summary["run_uri"]).dataset)
    assert sorted((r["n"], r["echo"]) for r in rows) == [(i, i) for i in range(20)]
    assert sorted(r["shard"] for r in results) == ["00000", "00001"]
    assert all(c.state.is_completed() for c in children), [c.state for c in children]
    assert {c.parameters["credentials"] for c in children} == {"gpu-creds"}  # a name, no key
    assert "sk-unused-by-vllm" not in json.dumps([c.parameters for c in children], default=str)
    with api.client() as client:  # shown under the parent flow run in the UI
        parents = {client.read_task_run(c.parent_task_run_id).flow_run_id for c in children}
    assert parents == {api.flow_run_id(state)}
    assert os.path.exists(os.path.join(summary["run_uri"], "manifest.json"))


KEY = "sk-must-not-reach-the-server-0123456789"
LLM_KWARGS = {
    "model_name": "some/model",
    "backend": "vllm",
    "backend_params": {"api_key": KEY, "progress": "off", "shard_size": 10},
}


def _flow_run_parameters() -> str:
    with api.client() as client:
        return json.dumps([r.parameters for r in client.read_flow_runs(limit=200)], default=str)


def test_a_key_in_llm_kwargs_never_reaches_a_shard_flow_run(prefect_server, wd):
    """``run_deployment`` stores a shard flow run's parameters as given (no public view), so
    ``llm_kwargs`` holding a key are refused, by the flow before anything is prepared and by
    the launching task itself."""
    from prefect import flow

    from prefect_tasks import CuratorCredentials, curate_offline, launch_offline_shard

    CuratorCredentials(api_key="sk-in-the-block").save("gpu-creds-2", overwrite=True)
    with pytest.raises(ConfigError, match="backend_params.api_key"):
        curate_offline(
            "flow_llms:OfflineNumbers", [{"n": i} for i in range(5)], wd,
            credentials="gpu-creds-2", llm_kwargs=LLM_KWARGS,
            shard_deployment="curate-offline-shard/not-needed",
        )  # fmt: skip
    assert not os.listdir(wd)  # nothing prepared

    @flow
    def launch() -> dict:
        return launch_offline_shard(
            os.path.join(wd, "some-run"), "00000", deployment="curate-offline-shard/not-needed",
            credentials="gpu-creds-2", llm="flow_llms:OfflineNumbers", llm_kwargs=LLM_KWARGS,
        )  # fmt: skip

    state = launch(return_state=True)
    with pytest.raises(ConfigError, match="CuratorCredentials block"):
        state.result()
    assert KEY not in _flow_run_parameters()  # the parent's view masks it; no child was made


def _deployment_exists(name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    with api.client() as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True
