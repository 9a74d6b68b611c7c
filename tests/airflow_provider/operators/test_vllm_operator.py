"""CuratorVLLMOperator: GPU routing defaults, and the offline step run in the vLLM venv's own
interpreter (the real engine on CPU with a tiny random model)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from airflow_env import REPO, SUPPORT

from airflow_provider import CuratorPermanentError, CuratorVLLMOperator
from curator_flows import steps

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


@pytest.fixture(autouse=True)
def embedded_curator_default(monkeypatch):
    """The operators' ``curator_default`` connection: the embedded simulator (the offline
    steps send nothing to it; the connection is only looked up)."""
    from airflow_provider.hooks.embedded import EMBEDDED_CONNECTION

    monkeypatch.setenv("AIRFLOW_CONN_CURATOR_DEFAULT", EMBEDDED_CONNECTION)


def test_gpu_routing_defaults():
    pod = {"pod_override": {"spec": "a V1Pod with nvidia.com/gpu limits"}}
    op = CuratorVLLMOperator(task_id="g", run="/r", shard="00000", executor_config=pod)
    assert (op.queue, op.pool, op.executor_config) == ("gpu", "gpu", pod)
    assert op.map_index_template == "{{ task.shard }}"
    custom = CuratorVLLMOperator(task_id="h", run="/r", shard="0", queue="a100", pool="a100s")
    assert (custom.queue, custom.pool) == ("a100", "a100s")


def test_mapped_gpu_routing_defaults():
    import pendulum
    from airflow.sdk import DAG

    start = pendulum.datetime(2025, 1, 1, tz="UTC")
    with DAG("gpu_default", schedule=None, start_date=start):
        default = CuratorVLLMOperator.partial(task_id="g", run="/r").expand(shard=["0", "1"])
        explicit = CuratorVLLMOperator.partial(task_id="h", run="/r", pool="a100s").expand(
            shard=["0"]
        )
    with DAG("gpu_dag_default", schedule=None, start_date=start, default_args={"pool": "mine"}):
        from_dag = CuratorVLLMOperator.partial(task_id="g", run="/r").expand(shard=["0"])
    assert default.partial_kwargs["pool"] == "gpu" and default.partial_kwargs["queue"] == "gpu"
    assert explicit.partial_kwargs["pool"] == "a100s"
    assert from_dag.partial_kwargs["pool"] == "mine"


@pytest.fixture(scope="module")
def vllm_env(tmp_path_factory):
    if not VLLM_PYTHON.exists():
        pytest.skip("needs the vLLM venv (make vllm-venv)")
    from curator_flows.testing.tiny_model import offline_vllm_env

    root = tmp_path_factory.mktemp("vllm")
    env = {**offline_vllm_env(root / "cache"), "PYTHONPATH": str(SUPPORT)}
    build = subprocess.run(
        [
            str(VLLM_PYTHON),
            "-c",
            "import sys; from curator_flows.testing.tiny_model import build_tiny_llama; "
            "print(build_tiny_llama(sys.argv[1]))",
            str(root / "tiny-llama"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    return build.stdout.strip().splitlines()[-1], env


def offline_llm(model: str, **extra):
    from airflow_llms import Numbered

    params = {
        "max_model_length": 256,
        "max_tokens": 8,
        "invalid_finish_reasons": [],  # a random model rarely stops by itself
        "max_retries": 0,
        "enforce_eager": True,
        "progress": "log",
        "engine_kwargs": {"kv_cache_memory_bytes": 128 * 1024 * 1024, "dtype": "float32"},
        **extra,
    }
    return Numbered(model, backend="vllm", backend_params=params)


def test_offline_shard_in_the_vllm_interpreter(vllm_env, tmp_path, caplog):
    model, env = vllm_env
    run = steps.prepare(offline_llm(model), [{"n": i} for i in range(6)], str(tmp_path))
    op = CuratorVLLMOperator(
        task_id="generate", run=run, shard="00000", python=str(VLLM_PYTHON), env=env,
    )  # fmt: skip
    result = op.execute({})
    assert result["succeeded"] == 6 and result["failed"] == 0
    again = op.execute({})  # a retry: the shard is done, no engine is started
    assert again["succeeded"] == 0 and again["sent"] == 0
    assert steps.finalize(run["run_uri"])["rows"] == 6
    json.dumps(result)


def test_a_permanent_error_in_the_interpreter_is_permanent(vllm_env, tmp_path):
    model, env = vllm_env
    run = steps.prepare(offline_llm(model), [{"n": 1}], str(tmp_path))
    op = CuratorVLLMOperator(
        task_id="generate", run=run, shard="00009", python=str(VLLM_PYTHON), env=env,
    )  # fmt: skip
    with pytest.raises(CuratorPermanentError, match="unknown shard"):
        op.execute({})
    assert Path(run["run_uri"]).exists()


def offline_run(tmp_path):
    return steps.prepare(offline_llm("tiny-model-never-loaded"), [{"n": 1}], str(tmp_path))


def interpreter_operator(run, python: str, **options) -> CuratorVLLMOperator:
    return CuratorVLLMOperator(
        task_id="generate", run=run, shard="00000", python=python,
        env={"PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])}, **options,
    )  # fmt: skip


def test_an_llm_the_interpreter_cannot_build_is_a_permanent_library_error(tmp_path):
    import sys

    run = offline_run(tmp_path)
    op = interpreter_operator(run, sys.executable, llm="airflow_llms:NoSuchLLM")
    with pytest.raises(CuratorPermanentError, match="NoSuchLLM' cannot be imported"):
        op.execute({})


def test_an_interpreter_that_ends_without_a_result_is_retryable(tmp_path):
    from airflow_provider.compat import AirflowFailException
    from curator_flows.errors import CuratorFlowsError

    run = offline_run(tmp_path)
    with pytest.raises(CuratorFlowsError, match="exited with code 1 without a result") as caught:
        interpreter_operator(run, "/bin/false").execute({})
    assert caught.value.retryable and not isinstance(caught.value, AirflowFailException)
    with pytest.raises(CuratorPermanentError, match="cannot be started"):
        interpreter_operator(run, str(tmp_path / "no-such-python")).execute({})
