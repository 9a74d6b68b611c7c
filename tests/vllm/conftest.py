"""Shared fixtures of the vLLM tests (run in the vLLM venv: ``make test-vllm``).

One tiny random Llama per session, vLLM in-process and offline with its temp and cache files
under the session's tmp dir, and at most one open engine at a time: an in-process engine's
shutdown tears down process-global state, which breaks any other engine still open.
Nothing here imports vLLM: each test module calls ``pytest.importorskip("vllm")``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from curator_flows.testing.tiny_model import offline_vllm_env

SUPPORT = Path(__file__).parent / "support"
if str(SUPPORT) not in sys.path:  # LLM classes the worker subprocesses import by the same name
    sys.path.insert(0, str(SUPPORT))

from offline_llms import ENGINE_KWARGS  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def vllm_env(tmp_path_factory):
    """Offline, in-process vLLM with its temp and cache files under the session's tmp dir."""
    root = tmp_path_factory.mktemp("vllm-env")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in offline_vllm_env(root).items():
            mp.setenv(name, value)
        mp.setattr(tempfile, "tempdir", str(root))
        yield root


@pytest.fixture(scope="session")
def tiny_model(vllm_env) -> str:
    from curator_flows.testing.tiny_model import build_tiny_llama

    return build_tiny_llama(vllm_env / "tiny-llama")


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


class EnginePool:
    """At most one open engine at a time, reused while the config is unchanged."""

    def __init__(self, model: str):
        self.model = model
        self.key: str | None = None
        self.gen = None

    def get(self, sampling: dict, json_schema: dict | None = None):
        from curator_flows.backends.vllm import VLLMGenerator

        key = json.dumps([sampling, json_schema], sort_keys=True)
        if key != self.key:
            self.release()
            self.gen = VLLMGenerator(self.model, ENGINE_KWARGS, sampling, json_schema)
            self.key = key
        assert self.gen is not None
        return self.gen

    def release(self) -> None:
        if self.gen is not None:
            self.gen.close()
        self.gen = self.key = None


@pytest.fixture(scope="session")
def engines(tiny_model):
    pool = EnginePool(tiny_model)
    yield pool
    pool.release()


@pytest.fixture
def no_open_engine(engines):
    """For tests that build their own engine (an ``LLM(backend="vllm")`` call)."""
    engines.release()


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment of a worker subprocess: this one's, plus the support folder."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), path]))}
