"""VLLMGenerator on the real vLLM engine (CPU) with a tiny random Llama built offline.

Runs only where vLLM is installed (the separate venv from scripts/setup_vllm_venv.sh):

    make test-vllm      # or: .venv-vllm/bin/python -m pytest tests/vllm -q

Fixtures (the tiny model, the offline env, the shared engine pool) are in conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from offline_llms import ENGINE_KWARGS, Record  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from curator_flows.backends.vllm import VLLMGenerator, validate_params  # noqa: E402

# Enough tokens for the constrained JSON outputs (< 50 tokens); the unconstrained
# control uses the same sampling.
MAX_TOKENS = 160
SAMPLING = {"max_tokens": MAX_TOKENS, "temperature": 1.0}


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

    # Without the generator's own chat rendering: vLLM's chat path (LLM.enqueue_chat).
    monkeypatch.setattr(generator, "_chat_fast_path", False)
    enqueued = generator.generate(requests)
    assert [r["usage"]["prompt_tokens"] for r in enqueued] == expected

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


def test_a_request_with_params_of_its_own_samples_with_them(generator, monkeypatch):
    """A row's own generation params (``"params"``) override the generator's for that request
    only, on every engine path (rendered chats, vLLM's chat path, a mixed batch)."""
    requests = []
    for i in range(6):
        messages = [{"role": "user", "content": f"count to {i}"}]
        request = {"custom_id": f"r{i}", "messages": messages}
        if i % 2 == 0:
            request["params"] = {"max_tokens": 2, "min_tokens": 2}
        requests.append(request)
    requests.append({"custom_id": "plain", "prompt": "word word", "params": {"max_tokens": 3}})

    def check(responses):
        assert [r["custom_id"] for r in responses] == [r["custom_id"] for r in requests]
        for request, response in zip(requests, responses, strict=True):
            cap = (request.get("params") or {}).get("max_tokens", MAX_TOKENS)
            check_response(response, request["custom_id"], max_tokens=cap)
            if "params" in request:
                assert response["usage"]["completion_tokens"] <= cap
        assert any(r["usage"]["completion_tokens"] > 3 for r in responses)  # the others: 160

    check(generator.generate(requests))
    monkeypatch.setattr(generator, "_chat_fast_path", False)
    check(generator.generate(requests))


def test_rendered_chats_match_vllm_chat(generator):
    from vllm import SamplingParams

    conversations = [
        [{"role": "user", "content": "Hi"}],
        [
            {"role": "system", "content": "You write short records."},
            {"role": "user", "content": "One record about a fox, please."},
            {"role": "assistant", "content": '{"name": "fox"}'},
            {"role": "user", "content": "Another one"},
        ],
    ]
    rendered = generator._render_chats(conversations)
    by_vllm = generator._llm.chat(conversations, SamplingParams(max_tokens=1), use_tqdm=False)
    assert [r["prompt_token_ids"] for r in rendered] == [list(o.prompt_token_ids) for o in by_vllm]
    # Anything but plain text messages is left to vLLM's chat().
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert generator._render_chats([parts]) is None
    named = [{"role": "user", "content": "Hi", "name": "ann"}]
    assert generator._render_chats([named]) is None
    response = generator.generate([{"custom_id": "parts", "messages": parts}])[0]
    assert response["usage"]["prompt_tokens"] == len(rendered[0]["prompt_token_ids"])


def test_submissions_overlap_and_collect_in_any_order(generator, tokenizer):
    def batch(tag, n):
        return [{"custom_id": f"{tag}{i}", "prompt": "word " * (i + 1)} for i in range(n)]

    first, second, third = batch("a", 5), batch("b", 3), batch("c", 4)
    handles = [generator.submit(b) for b in (first, second, third)]
    # The engine works on every queued request while the first one is collected.
    assert [r["custom_id"] for r in generator.collect(handles[0])] == [
        r["custom_id"] for r in first
    ]
    assert generator._finished  # later submissions finished meanwhile, kept for later
    third_out = generator.collect(handles[2])
    second_out = generator.collect(handles[1])
    assert [r["custom_id"] for r in third_out] == [r["custom_id"] for r in third]
    assert [r["custom_id"] for r in second_out] == [r["custom_id"] for r in second]
    for request, response in zip(second, second_out, strict=True):
        check_response(response, request["custom_id"])
        assert response["usage"]["prompt_tokens"] == len(tokenizer(request["prompt"]).input_ids)
    assert not generator._finished

    # wait(): run until one submission is done, or until the engine wants more work.
    handles = [generator.submit(b) for b in (batch("w", 3), batch("x", 20))]
    assert generator.unfinished == 23
    assert generator.wait(handles, refill_below=100) == []  # below the mark: top up first
    done = generator.wait(handles)
    assert done and all(generator.done(h) for h in done)
    assert generator.unfinished < 23
    for handle in handles:
        assert len(generator.collect(handle)) == len(handle.custom_ids)
    assert generator.unfinished == 0

    # A cancelled submission leaves nothing behind in the engine or the generator.
    doomed = generator.submit(batch("d", 6))
    generator.cancel(doomed)
    assert generator.collect(generator.submit(batch("e", 2)))[1]["custom_id"] == "e1"
    assert not generator._finished
    assert not generator._llm.llm_engine.has_unfinished_requests()
    assert generator.unfinished == 0
    assert generator.capacity == 256  # vLLM's CPU default max_num_seqs


def test_rejected_submission_leaves_nothing_queued(generator):
    with pytest.raises(ValueError, match="maximum context length"):
        generator.submit(
            [
                {"custom_id": "ok", "prompt": "hi"},
                {"custom_id": "long", "messages": [{"role": "user", "content": "word " * 600}]},
            ]
        )
    assert not generator._llm.llm_engine.has_unfinished_requests()


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


def test_key_checks_read_the_vllm_source_without_importing_it():
    # LLM construction validates vLLM parameter names (at DAG-parse time, say) without the
    # seconds-long vLLM + torch import: the names come from vLLM's source and must match
    # what the imported vLLM reports.
    code = (
        "import sys\n"
        "from curator_flows.backends import vllm as b\n"
        "sampling, engine = b._vllm_sampling_keys(), b._vllm_engine_keys()\n"
        "assert 'vllm' not in sys.modules and 'torch' not in sys.modules\n"
        "assert {'temperature', 'max_tokens'} <= sampling and 'kv_cache_memory_bytes' in engine\n"
        "import vllm\n"
        "assert sampling == b._vllm_sampling_keys(), sampling ^ b._vllm_sampling_keys()\n"
        "assert engine == b._vllm_engine_keys(), engine ^ b._vllm_engine_keys()\n"
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
