"""The offline step: ``run_offline(run, shard)`` generates a shard's pending requests with vLLM.

Invariants:
- the engine is built once per step and fed chunks of ``batch_size`` prompts: never one prompt
  per call, never all of them in one call;
- each chunk's responses are appended to the run directory before the next chunk starts, so a
  killed GPU worker resumes at the last finished chunk;
- outputs that fail ``invalid_finish_reasons`` or the ``response_format`` schema are generated
  again, up to ``max_retries`` more rounds, then stored as final failures with the reason.
"""

from __future__ import annotations

import time
from typing import Any

from .cost import resolve_prices
from .llm import LLM
from .online import pending_items
from .progress import Progress
from .steps import RunRef, _llm_for, _shard_names, open_run
from .store import RunStore


def engine_arguments(llm: LLM) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(engine_kwargs, sampling_kwargs)`` for the vLLM generator."""
    params = llm.config.params
    engine: dict[str, Any] = {
        "tensor_parallel_size": params.tensor_parallel_size,
        "enforce_eager": params.enforce_eager,
        "gpu_memory_utilization": params.gpu_memory_utilization,
    }
    if params.max_model_length is not None:
        engine["max_model_len"] = params.max_model_length
    engine.update(params.engine_kwargs)
    sampling = {"max_tokens": params.max_tokens, "min_tokens": params.min_tokens}
    sampling.update(llm.generation_params)
    return engine, sampling


def _chunks(items: list[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_offline(
    run: RunRef,
    shard: str | list[str] | None = None,
    *,
    llm: LLM | None = None,
    generator: Any = None,
) -> dict[str, Any]:
    """Generate the pending requests of ``shard`` (a name, a list, or all) on this worker's GPU.

    ``generator`` lets a caller reuse one engine across several steps of the same process."""
    from .finalize import schema_problem

    store, manifest = open_run(run)
    if manifest["mode"] != "offline":
        raise ValueError(f"run {manifest['run_id']} is a {manifest['mode']} run, not offline")
    llm = _llm_for(manifest, llm)
    params = llm.config.params
    names = _shard_names(manifest, shard)
    pending = list(pending_items(store, names))
    result: dict[str, Any] = {"run_uri": store.uri, "shards": names, "pending_before": len(pending)}
    if not pending:
        return {**result, "sent": 0, "succeeded": 0, "failed": 0, "elapsed": 0.0}
    started = time.monotonic()
    own_generator = generator is None
    if own_generator:
        from .backends.vllm import VLLMGenerator

        engine, sampling = engine_arguments(llm)
        schema = llm.schema()
        generator = VLLMGenerator(llm.model_name, engine, sampling, schema[1] if schema else None)
    prices = resolve_prices(llm.model_name, params.in_mtok_cost, params.out_mtok_cost)
    validate = schema_problem(llm)
    invalid = frozenset(params.invalid_finish_reasons)
    progress = Progress(f"{llm.model_name} {manifest['run_id']}", len(pending), params.progress)
    counts = {"sent": 0, "succeeded": 0, "failed": 0, "input_tokens": 0, "output_tokens": 0}
    appenders: dict[str, Any] = {}
    try:
        attempt = 0
        while pending:
            attempt += 1
            retry = []
            for chunk in _chunks(pending, params.batch_size):
                outputs = generator.generate(
                    [{"custom_id": item.id, "messages": item.messages} for item in chunk]
                )
                counts["sent"] += len(chunk)
                lines: dict[str, list[dict[str, Any]]] = {}
                for item, out in zip(chunk, outputs, strict=True):
                    used_in, used_out = (
                        out["usage"]["prompt_tokens"],
                        out["usage"]["completion_tokens"],
                    )
                    counts["input_tokens"] += used_in
                    counts["output_tokens"] += used_out
                    problem = None
                    if out["finish_reason"] in invalid:
                        problem = f"invalid finish_reason {out['finish_reason']!r}"
                    elif validate is not None:
                        problem = validate(out["content"])
                    if problem is None:
                        record = {
                            "id": item.id,
                            "content": out["content"],
                            "finish_reason": out["finish_reason"],
                            "usage": [used_in, used_out],
                            "cost": prices.cost(used_in, used_out),
                            "attempts": attempt,
                            "ts": time.time(),
                        }
                        counts["succeeded"] += 1
                        progress.counters.done += 1
                    elif attempt <= params.max_retries:
                        retry.append(item)
                        continue
                    else:
                        record = {
                            "id": item.id,
                            "error": f"{problem} (after {attempt} attempts)",
                            "attempts": attempt,
                            "ts": time.time(),
                        }
                        counts["failed"] += 1
                        progress.counters.failed += 1
                    lines.setdefault(item.shard, []).append(record)
                _append(store, appenders, lines)
                progress.counters.input_tokens = counts["input_tokens"]
                progress.counters.output_tokens = counts["output_tokens"]
                progress.tick()
            pending = retry
    finally:
        for appender in appenders.values():
            appender.close()
        if own_generator and generator is not None:
            generator.close()
        progress.close()
    elapsed = time.monotonic() - started
    return {
        **result,
        **counts,
        "elapsed": elapsed,
        "max_in_flight": params.batch_size,
        "latency_total": 0.0,
    }


def _append(
    store: RunStore, appenders: dict[str, Any], lines: dict[str, list[dict[str, Any]]]
) -> None:
    for shard, records in lines.items():
        appender = appenders.get(shard)
        if appender is None:
            appender = appenders[shard] = store.appender(f"responses/{shard}")
        appender.append_many(records)
        appender.flush()
