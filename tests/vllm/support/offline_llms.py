"""LLM subclasses for the offline vLLM tests, importable from worker subprocesses (the tests
put this folder on ``sys.path`` and ``PYTHONPATH``), so a step rebuilds them from the manifest."""

from __future__ import annotations

from pydantic import BaseModel, Field

from curator_flows import LLM

# VLLMGenerator tests: small, eager, float32, a fixed 64 MiB KV cache (the default memory
# utilisation fails on CPU).
ENGINE_KWARGS = {
    "kv_cache_memory_bytes": 64 * 1024 * 1024,
    "max_model_len": 512,
    "enforce_eager": True,
    "dtype": "float32",
    "seed": 0,
}


class Record(BaseModel):
    # A pattern bounds the string so the random model finishes it; not max_length: xgrammar's
    # maxLength rule lets raw control characters through, which is invalid JSON.
    name: str = Field(pattern=r"^[a-z ]{1,20}$")
    score: int


def offline_params(**extra) -> dict:
    """backend_params for the tiny model on CPU (quiet, eager, a fixed 256 MiB KV cache)."""
    params = {
        "enforce_eager": True,
        "max_model_length": 512,
        "progress": "off",
        "engine_kwargs": {"kv_cache_memory_bytes": 256 * 1024 * 1024, "dtype": "float32"},
    }
    params.update(extra)
    return params


def record_prompt(n: int) -> str | list[dict[str, str]]:
    """Plain strings for even rows, a system + user conversation for odd rows."""
    text = f"Write record {n} as JSON with a name and a score."
    if n % 2 == 0:
        return text
    return [
        {"role": "system", "content": "You write short JSON records."},
        {"role": "user", "content": text},
    ]


class Records(LLM):
    """Rows ``{"n": int}``; no response_format (the control of the structured runs)."""

    def prompt(self, input: dict) -> str | list[dict[str, str]]:
        return record_prompt(input["n"])

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}


class StructuredRecords(LLM):
    """The same prompts as :class:`Records`, constrained to :class:`Record`."""

    response_format = Record

    def prompt(self, input: dict) -> str | list[dict[str, str]]:
        return record_prompt(input["n"])

    def parse(self, input: dict, response: Record) -> dict:
        return {"n": input["n"], **response.model_dump()}


def resume_llm(model_dir: str, batch_size: int) -> Records:
    """The LLM of the kill / resume test: the worker subprocesses and the test build the same
    one (same run id). Two shards of 24 requests, 16 tokens per response."""
    return Records(
        model_dir,
        backend="vllm",
        backend_params=offline_params(
            batch_size=batch_size,
            shard_size=24,
            max_tokens=16,
            invalid_finish_reasons=[],  # a random model rarely stops on its own
        ),
    )


class Completions(LLM):
    """Curator's ``return_completions_object``: ``parse()`` reads the chat completion."""

    return_completions_object = True

    def prompt(self, input: dict) -> str:
        return f"Say something about {input['topic']}."

    def parse(self, input: dict, response: dict) -> dict:
        choice = response["choices"][0]
        return {
            "topic": input["topic"],
            "text": choice["message"]["content"],
            "finish_reason": choice["finish_reason"],
            "completion_tokens": response["usage"]["completion_tokens"],
        }
