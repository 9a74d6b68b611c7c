"""VLLMGenerator on the real vLLM engine (CPU) with a tiny random Llama built offline.

Runs only where vLLM is installed (the separate venv from scripts/setup_vllm_venv.sh):

    .venv-vllm/bin/python -m pytest tests/backends/test_vllm_generator.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

pytest.importorskip("vllm")

from pydantic import BaseModel, Field, ValidationError  # noqa: E402

from curator_flows.backends.vllm import VLLMGenerator, validate_params  # noqa: E402
from curator_flows.testing.tiny_model import build_tiny_llama  # noqa: E402

# Enough tokens for the constrained JSON outputs (< 50 tokens); the unconstrained
# control uses the same sampling.
MAX_TOKENS = 160
SAMPLING = {"max_tokens": MAX_TOKENS, "temperature": 1.0}
ENGINE_KWARGS = {
    "kv_cache_memory_bytes": 64 * 1024 * 1024,  # the default memory utilisation fails on CPU
    "max_model_len": 512,
    "enforce_eager": True,
    "dtype": "float32",
    "seed": 0,
}


class Record(BaseModel):
    # A pattern bounds the string so a random model finishes it (an unbounded string
    # runs for hundreds of tokens). Not max_length: xgrammar's maxLength rule admits raw
    # control characters, which is invalid JSON.
    name: str = Field(pattern=r"^[a-z ]{1,20}$")
    score: int


@pytest.fixture(scope="session")
def vllm_env(tmp_path_factory):
    """Offline, in-process vLLM with its temp and cache files under the test's tmp dir."""
    root = tmp_path_factory.mktemp("vllm-env")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "TMPDIR": str(root),
            "VLLM_RPC_BASE_PATH": str(root),
            "VLLM_CACHE_ROOT": str(root / "cache"),
        }.items():
            mp.setenv(name, value)
        mp.setattr(tempfile, "tempdir", str(root))
        yield root


@pytest.fixture(scope="session")
def tiny_model(vllm_env) -> str:
    return build_tiny_llama(vllm_env / "tiny-llama")


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


class EnginePool:
    """At most one open engine at a time, reused while the config is unchanged.

    An in-process vLLM engine's shutdown tears down process-global distributed state,
    so closing one engine breaks any other that is still open in the process.
    """

    def __init__(self, model: str):
        self.model = model
        self.key: str | None = None
        self.gen: VLLMGenerator | None = None

    def get(self, sampling: dict, json_schema: dict | None = None) -> VLLMGenerator:
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
def generator(engines) -> VLLMGenerator:
    return engines.get(SAMPLING)


def chat_tokens(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


def check_response(response: dict, custom_id: str, max_tokens: int = MAX_TOKENS) -> None:
    assert set(response) == {"custom_id", "content", "finish_reason", "usage"}
    assert response["custom_id"] == custom_id
    assert isinstance(response["content"], str)
    assert response["finish_reason"] in {"stop", "length"}
    completion = response["usage"]["completion_tokens"]
    assert 0 < completion <= max_tokens
    if response["finish_reason"] == "length":
        assert completion == max_tokens


# --- generation ---------------------------------------------------------------------


def test_plain_prompts_generate(generator, tokenizer):
    prompts = ["Hello", "The quick brown fox jumps over the lazy dog", "Numbers 1 2 3"]
    requests = [{"custom_id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)]
    responses = generator.generate(requests)
    assert len(responses) == len(requests)
    for request, response in zip(requests, responses, strict=True):
        check_response(response, request["custom_id"])
        assert response["content"]
        # Plain prompts are tokenized as-is (the tokenizer adds BOS), no chat template.
        assert response["usage"]["prompt_tokens"] == len(tokenizer(request["prompt"]).input_ids)


def test_chat_messages_go_through_chat_template(generator, tokenizer):
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [
            {"role": "system", "content": "You write short records."},
            {"role": "user", "content": "Give me one record about a quick brown fox."},
        ],
    ]
    requests = [{"custom_id": f"c{i}", "messages": m} for i, m in enumerate(conversations)]
    responses = generator.generate(requests)
    for request, response in zip(requests, responses, strict=True):
        check_response(response, request["custom_id"])
        expected = chat_tokens(tokenizer, request["messages"])
        assert response["usage"]["prompt_tokens"] == expected
        # The template adds BOS + role markers + end-of-turn + assistant marker.
        raw = sum(
            len(tokenizer.encode(m["content"], add_special_tokens=False))
            for m in request["messages"]
        )
        assert expected >= raw + 3


def test_mixed_batch_keeps_order(generator, tokenizer, monkeypatch):
    requests = []
    for i in range(12):
        if i % 3 == 0:
            requests.append({"custom_id": f"m{i}", "prompt": "word " * (i + 1)})
        else:
            content = "tell me " + "more " * i
            requests.append(
                {"custom_id": f"m{i}", "messages": [{"role": "user", "content": content}]}
            )

    def expected_prompt_tokens(request):
        if "prompt" in request:
            return len(tokenizer(request["prompt"]).input_ids)
        return chat_tokens(tokenizer, request["messages"])

    expected = [expected_prompt_tokens(r) for r in requests]
    assert len(set(expected)) == len(expected)  # each request identifiable by its length

    responses = generator.generate(requests)
    assert [r["custom_id"] for r in responses] == [r["custom_id"] for r in requests]
    assert [r["usage"]["prompt_tokens"] for r in responses] == expected
    for request, response in zip(requests, responses, strict=True):
        check_response(response, request["custom_id"])

    # Older vLLM without LLM.enqueue*: chat templates are rendered by the generator.
    class NoEnqueue:
        def __init__(self, llm):
            self._inner = llm

        def __getattr__(self, name):
            if name in {"enqueue", "enqueue_chat", "wait_for_completion"}:
                raise AttributeError(name)
            return getattr(self._inner, name)

    monkeypatch.setattr(generator, "_llm", NoEnqueue(generator._llm))
    fallback = generator.generate(requests)
    assert [r["usage"]["prompt_tokens"] for r in fallback] == expected


def test_empty_request_list(generator):
    assert generator.generate([]) == []


def test_structured_output_matches_schema(engines):
    requests = [
        {"custom_id": f"s{i}", "messages": [{"role": "user", "content": f"Record {i} as JSON"}]}
        for i in range(24)
    ]

    def valid(text: str) -> bool:
        try:
            Record.model_validate_json(text)
        except ValidationError:
            return False
        return True

    # Control: without the constraint, the same prompts and sampling do not parse, so
    # the constrained run below proves the constraint is applied, not silently ignored.
    unconstrained = engines.get(SAMPLING).generate(requests)
    assert sum(valid(r["content"]) for r in unconstrained) < len(requests) // 2

    constrained = engines.get(SAMPLING, Record.model_json_schema())
    responses = constrained.generate(requests)
    for request, response in zip(requests, responses, strict=True):
        check_response(response, request["custom_id"])
        assert response["finish_reason"] == "stop", response
        assert valid(response["content"]), response


def test_usage_counts_match_generated_tokens(generator, tokenizer):
    responses = generator.generate([{"custom_id": "u", "prompt": "Count my tokens please"}])
    usage = responses[0]["usage"]
    assert usage["prompt_tokens"] == len(tokenizer("Count my tokens please").input_ids) > 0
    assert usage["completion_tokens"] > 0
    # Re-encoding the text can merge tokens differently, but never exceeds the budget.
    assert usage["completion_tokens"] <= MAX_TOKENS


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "sampling", "match"),
    [
        ({}, {"max_tokens": 4, "temprature": 0.5}, "temprature"),
        ({"tensor_parallel_size": 0}, {"max_tokens": 4}, "tensor_parallel_size"),
        ({"gpu_memory_utilization": 1.5}, {"max_tokens": 4}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 0}, {"max_tokens": 4}, "gpu_memory_utilization"),
        ({}, {"max_tokens": 0}, "max_tokens"),
        ({}, {"max_tokens": 4, "min_tokens": 5}, "min_tokens"),
        ({}, {"max_tokens": 4, "top_p": 0}, "top_p"),
        ({}, {"max_tokens": 4, "n": 2}, "n must be 1"),
        ({}, {"max_tokens": 4, "structured_outputs": {}}, "json_schema"),
        ({"max_model_len": 0}, {"max_tokens": 4}, "max_model_len"),
        ({"not_an_engine_arg": 1}, {"max_tokens": 4}, "not_an_engine_arg"),
        # Checked by vLLM's own SamplingParams, re-raised as ValueError.
        ({}, {"max_tokens": 4, "presence_penalty": 5}, "presence_penalty"),
    ],
)
def test_bad_params_raise_before_engine_start(tiny_model, monkeypatch, engine, sampling, match):
    import vllm

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine must not start with invalid parameters")

    monkeypatch.setattr(vllm, "LLM", no_engine)
    with pytest.raises(ValueError, match=match):
        VLLMGenerator(tiny_model, {**ENGINE_KWARGS, **engine}, sampling)


def test_validate_params_maps_aliases():
    engine, sampling = validate_params({"max_model_length": 256}, {"max_tokens": 3})
    assert engine == {"max_model_len": 256, "trust_remote_code": False}
    assert sampling == {"max_tokens": 3}


@pytest.mark.parametrize(
    "request_",
    [
        {"prompt": "no id"},
        {"custom_id": "x"},
        {"custom_id": "x", "prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"custom_id": "x", "messages": [{"content": "no role"}]},
        {"custom_id": "x", "prompt": 42},
    ],
)
def test_bad_requests_raise(generator, request_):
    with pytest.raises(ValueError, match="request"):
        generator.generate([request_])


def test_prompt_longer_than_context_is_a_value_error(generator):
    with pytest.raises(ValueError, match="maximum context length"):
        generator.generate([{"custom_id": "long", "prompt": "word " * 600}])
    # The engine is still usable afterwards.
    assert generator.generate([{"custom_id": "ok", "prompt": "hi"}])[0]["custom_id"] == "ok"


def test_missing_vllm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"curator-flows\[vllm\]"):
        VLLMGenerator("any-model", {}, {"max_tokens": 4})


def test_module_import_does_not_import_vllm():
    code = (
        "import sys, curator_flows.backends.vllm, curator_flows.testing.tiny_model; "
        "bad = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


def test_close_frees_engine_and_a_new_one_starts(engines, tiny_model):
    engines.release()  # one open engine per process
    gen = VLLMGenerator(tiny_model, ENGINE_KWARGS, {"max_tokens": 3})
    assert len(gen.generate([{"custom_id": "a", "prompt": "hi"}])) == 1
    gen.close()
    gen.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate([{"custom_id": "a", "prompt": "hi"}])
    with VLLMGenerator(tiny_model, ENGINE_KWARGS, {"max_tokens": 3}) as again:
        assert again.generate([{"custom_id": "b", "prompt": "hi"}])[0]["custom_id"] == "b"
