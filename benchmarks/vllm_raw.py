"""Raw vLLM throughput vs. VLLMGenerator, on the same prompts.

Helpers for the offline-backend benchmark, plus a standalone run on the tiny random
model (CPU is fine; run it in the vLLM venv):

    .venv-vllm/bin/python benchmarks/vllm_raw.py            # N=256, chunks of 64
    .venv-vllm/bin/python benchmarks/vllm_raw.py --n 512 --batch-size 128 --max-tokens 32

Tokens/s counts completion tokens over the wall time of the generate call(s) only:
engine start-up is excluded, and each engine gets one small warm-up call first.
``ignore_eos`` is on by default so both sides produce exactly N x max_tokens tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_WARMUP_PROMPTS = 4


def make_prompts(n: int) -> list[str]:
    """Deterministic, varied plain-text prompts."""
    topics = ["foxes", "datasets", "rivers", "compilers", "bread", "orbits", "violins", "tides"]
    return [
        f"Write record {i} about {topics[i % len(topics)]}, with a name and a score:"
        for i in range(n)
    ]


def _shutdown(llm: Any) -> None:
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None and hasattr(engine_core, "shutdown"):
        engine_core.shutdown()


def raw_generate_tokens_per_s(
    model_dir: str,
    prompts: list[str],
    engine_kwargs: dict,
    sampling_kwargs: dict,
    batch_size: int | None = None,
    repeats: int = 1,
) -> float:
    """Completion tokens/s of ONE raw ``vllm.LLM.generate`` call over all ``prompts``.

    ``batch_size`` splits the prompts into several calls instead (to separate the cost of
    chunking from the wrapper's own cost); ``repeats`` > 1 reports the best run.
    """
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, **engine_kwargs)
    try:
        params = SamplingParams(**sampling_kwargs)
        llm.generate(prompts[:_WARMUP_PROMPTS], params, use_tqdm=False)
        step = batch_size or len(prompts)
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = 0
            for i in range(0, len(prompts), step):
                outputs = llm.generate(prompts[i : i + step], params, use_tqdm=False)
                tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
            best = max(best, tokens / (time.perf_counter() - start))
    finally:
        _shutdown(llm)
        del llm
    return best


def generator_tokens_per_s(
    model_dir: str,
    prompts: list[str],
    engine_kwargs: dict,
    sampling_kwargs: dict,
    batch_size: int = 64,
    repeats: int = 1,
) -> float:
    """Completion tokens/s of ``VLLMGenerator.generate`` over ``prompts`` in chunks.

    ``repeats`` > 1 reports the best run.
    """
    from curator_flows.backends.vllm import VLLMGenerator

    requests = [{"custom_id": str(i), "prompt": p} for i, p in enumerate(prompts)]
    with VLLMGenerator(model_dir, engine_kwargs, sampling_kwargs) as gen:
        gen.generate(requests[:_WARMUP_PROMPTS])
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = 0
            for i in range(0, len(requests), batch_size):
                responses = gen.generate(requests[i : i + batch_size])
                tokens += sum(r["usage"]["completion_tokens"] for r in responses)
            best = max(best, tokens / (time.perf_counter() - start))
    return best


def _offline_env(root: Path) -> None:
    """Offline, in-process vLLM; temp and cache files under ``root``. Before importing vllm."""
    from curator_flows.testing.tiny_model import offline_vllm_env

    os.environ.update(offline_vllm_env(root))
    tempfile.tempdir = str(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="number of prompts")
    parser.add_argument("--batch-size", type=int, default=64, help="VLLMGenerator chunk size")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", help="engine dtype (CPU: float32/bfloat16)")
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--model-dir", default=None, help="default: build the tiny random model")
    parser.add_argument("--no-ignore-eos", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="report the best of N runs")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    _offline_env(root)
    if args.model_dir:
        model_dir = args.model_dir
    else:
        from curator_flows.testing.tiny_model import build_tiny_llama

        model_dir = build_tiny_llama(root / "tiny-llama")

    engine_kwargs = {
        "kv_cache_memory_bytes": args.kv_cache_mib * 1024 * 1024,
        "max_model_len": 512,
        "enforce_eager": True,
        "dtype": args.dtype,
        "seed": 0,
    }
    sampling_kwargs = {
        "max_tokens": args.max_tokens,
        "temperature": 1.0,
        "ignore_eos": not args.no_ignore_eos,
    }
    prompts = make_prompts(args.n)

    bs, reps = args.batch_size, args.repeats
    raw = raw_generate_tokens_per_s(model_dir, prompts, engine_kwargs, sampling_kwargs, None, reps)
    raw_chunked = raw_generate_tokens_per_s(
        model_dir, prompts, engine_kwargs, sampling_kwargs, bs, reps
    )
    gen = generator_tokens_per_s(model_dir, prompts, engine_kwargs, sampling_kwargs, bs, reps)
    print(
        f"prompts={args.n} max_tokens={args.max_tokens} dtype={args.dtype} "
        f"batch_size={bs} best of {reps}",
        flush=True,
    )
    print(f"raw vllm.LLM.generate, one call:         {raw:10.1f} tokens/s")
    print(f"raw vllm.LLM.generate, chunks of {bs:>4}:  {raw_chunked:10.1f} tokens/s")
    print(f"VLLMGenerator.generate, chunks of {bs:>4}: {gen:10.1f} tokens/s")
    print(f"generator / raw one call: {gen / raw:.2f}")
    print(f"generator / raw chunked:  {gen / raw_chunked:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
