"""The ``openai`` online backend against a real, independent OpenAI-compatible server: vLLM's
own ``vllm.entrypoints.openai.api_server`` serving the tiny random Llama on CPU.

The server sends no rate-limit headers, so the online runner caps itself at 64 in flight.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Literal

import pytest

pytest.importorskip("vllm")

from pydantic import BaseModel  # noqa: E402

from curator_flows import LLM  # noqa: E402

SERVED_NAME = "tiny-llama"
STARTUP_TIMEOUT = 240


class Verdict(BaseModel):
    # Bounded fields only: a random model finishes these in a few tokens.
    ok: bool
    label: Literal["yes", "no", "maybe"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def vllm_server(engines, tiny_model, tmp_path_factory):
    engines.release()  # keep the memory of this process's engine out of the way
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        tiny_model,
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "512",
        "--kv-cache-memory-bytes",
        str(256 * 1024 * 1024),
        "--enforce-eager",
        "--dtype",
        "float32",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not healthy(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def server_params(base_url: str, **extra) -> dict:
    return {"base_url": base_url, "api_key": "x", "max_tokens": 16, "progress": "off", **extra}


def test_plain_prompts_through_the_openai_backend(vllm_server):
    prompts = [f"Tell me about record {i}" for i in range(12)]
    llm = LLM(
        SERVED_NAME,
        backend="openai",
        # A random model seldom stops on its own: accept finish_reason "length".
        backend_params=server_params(vllm_server, invalid_finish_reasons=[]),
    )
    result = llm(prompts)
    assert result.request_stats.succeeded == len(prompts) and result.request_stats.failed == 0
    assert all(isinstance(text, str) and text for text in result.dataset["response"])
    assert result.token_usage.input > 0
    assert 0 < result.token_usage.output <= 16 * len(prompts)


def test_response_format_through_the_openai_backend(vllm_server):
    prompts = [f"Is record {i} fine? Answer as JSON." for i in range(12)]
    llm = LLM(
        SERVED_NAME,
        backend="openai",
        response_format=Verdict,
        backend_params=server_params(vllm_server, max_tokens=64),
    )
    result = llm(prompts)
    assert result.request_stats.succeeded == len(prompts) and result.request_stats.failed == 0
    assert set(result.dataset.column_names) == {"ok", "label"}
    for row in result.dataset:
        Verdict(**row)
