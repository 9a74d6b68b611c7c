"""generation_params are checked at construction, before anything is paid."""

from __future__ import annotations

import pytest

from curator_flows import LLM, ConfigError


@pytest.mark.parametrize(
    ("backend", "params", "message"),
    [
        ("openai", {"stream": True}, "stream"),
        ("anthropic", {"stream": True}, "stream"),
        ("openai", {"n": 2}, "n > 1"),
        ("openai", {"temprature": 0.2}, "did you mean 'temperature'"),
        ("anthropic", {"max_token": 10}, "did you mean 'max_tokens'"),
        ("litellm", {"top_pp": 0.9}, "did you mean 'top_p'"),
        ("openai", {"temperature": "hot"}, "must be a number"),
        ("openai", {"max_tokens": 1.5}, "must be an integer"),
        ("openai", {"seed": True}, "must be an integer"),
        ("openai", {"stop": [1, 2]}, "a string or a list of strings"),
        ("openai", {"frobnicate": 1}, "allowed keys"),
    ],
)
def test_bad_generation_params_fail_at_construction(backend, params, message):
    model = "claude-3-5-haiku-20241022" if backend == "anthropic" else "gpt-4o-mini"
    with pytest.raises(ConfigError, match=message):
        LLM(model, backend=backend, generation_params=params)


def test_batch_mode_is_checked_too():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        LLM("gpt-4o-mini", batch=True, generation_params={"temperatur": 0.1})


def test_good_params_and_server_specific_keys_on_a_compatible_endpoint():
    LLM("gpt-4o-mini", generation_params={"temperature": 0.2, "max_tokens": 10, "stop": "\n"})
    LLM("claude-3-5-haiku-20241022", backend="anthropic", generation_params={"top_k": 5})
    # an OpenAI-compatible server (vLLM, ...) takes its own sampling keys
    LLM(
        "my-model",
        backend="openai",
        generation_params={"top_k": 20, "repetition_penalty": 1.1, "guided_choice": ["a"]},
        backend_params={"base_url": "http://localhost:8000/v1"},
    )
    with pytest.raises(ConfigError, match="allowed keys"):
        LLM("gpt-4o-mini", generation_params={"guided_choice": ["a"]})  # OpenAI itself refuses
