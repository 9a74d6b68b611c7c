"""``LLM(backend="vllm")`` vs ONE raw ``vllm.LLM.generate`` call, same prompts, same engine.

    .venv-vllm/bin/python benchmarks/vllm_offline.py                  # tiny random model, CPU
    .venv-vllm/bin/python benchmarks/vllm_offline.py --batch-sizes 64,256,1024 --repeats 8
    .venv-vllm/bin/python benchmarks/vllm_offline.py --stop er --max-tokens 128   # varied lengths
    .venv-vllm/bin/python benchmarks/vllm_offline.py --model-dir /models/x --dtype bfloat16
    make bench-vllm ARGS="--n 4096"

What is timed (completion tokens / wall seconds); ONE engine serves every run of both sides,
so engine start-up and shutdown are excluded on both sides:

- raw: one ``vllm.LLM.generate`` over all N prompts, on that engine's ``vllm.LLM`` with the
  same ``SamplingParams``, given pre-tokenized chat prompts (the chat template is rendered and
  tokenized outside the timed region, which favours raw);
- ours: the whole ``llm(rows)`` call = prepare (request shards on disk) → run_offline (chat
  template, chunks of ``batch_size`` queued on the engine, each chunk's responses appended to
  the run directory) → finalize (parse, Arrow output, stats), in a fresh working directory.

The engine comes from ``offline.build_generator`` of the benchmark's LLM (so raw gets exactly
our engine kwargs), with prefix caching off so no run profits from an earlier one. One small
warm-up call per side, then every repeat runs each side once, in a shuffled order.

Shared CPUs make wall time noisy (±15 % between identical runs), so the engine's ``step()``
is timed too, which splits each run into engine steps and everything outside them:

- ``steps``: how many engine steps the run took. Equal counts mean the engine was packed as
  densely as in one raw call: chunking cost nothing on the engine side.
- ``outside``: seconds outside ``step()`` (raw: adding 2,048 requests; ours: also prepare,
  chat templates, storing responses, finalize): our real overhead.
- ``estimate``: ours / raw throughput with one pooled step time for both sides, i.e. the ratio
  with the machine's noise taken out.

``--stop`` adds a stop string so output lengths vary (a random model otherwise runs every
output to ``max_tokens``): that is where naive chunking would cost, since a chunk that waits
for its longest output leaves engine slots idle.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vllm_raw import _offline_env, make_prompts  # noqa: E402


class StepTimer:
    """Wraps the engine's ``step()``: counts steps and the seconds spent in them."""

    def __init__(self, engine: Any) -> None:
        self.steps = 0
        self.seconds = 0.0
        step = engine.step

        def timed_step():
            start = time.perf_counter()
            try:
                return step()
            finally:
                self.seconds += time.perf_counter() - start
                self.steps += 1

        engine.step = timed_step

    def reset(self) -> None:
        self.steps, self.seconds = 0, 0.0


def raw_run(generator: Any, prompt_ids: list[list[int]]) -> dict:
    """ONE ``vllm.LLM.generate`` call over all prompts, on the generator's own engine and
    ``SamplingParams``."""
    llm, params = generator._llm, generator._sampling_params
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}


class _Shared:
    """The shared engine, handed to ``run_offline`` as if built there; closing is a no-op."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._generator, name)

    def close(self) -> None:
        pass


def ours_run(llm: Any, rows: list[dict], working_dir: str, generator: Any) -> dict:
    """The whole ``llm(rows)`` call (prepare → run_offline → finalize) on the shared engine."""
    from curator_flows import offline

    step: dict[str, Any] = {}
    build, run_offline = offline.build_generator, offline.run_offline

    def recorded_run_offline(*args, **kwargs):
        step.update(run_offline(*args, **kwargs))
        return step

    offline.build_generator = lambda llm_: _Shared(generator)
    offline.run_offline = recorded_run_offline
    try:
        start = time.perf_counter()
        result = llm(rows, working_dir=working_dir)
        seconds = time.perf_counter() - start
    finally:
        offline.build_generator, offline.run_offline = build, run_offline
    assert result.request_stats.failed == 0, result.request_stats
    assert len(result.dataset) == len(rows)
    return {
        "seconds": seconds,
        "tokens": result.token_usage.output,
        "chunks": step["details"]["chunks"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="number of prompts")
    parser.add_argument("--batch-sizes", default="64,256,1024", help="comma-separated")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stop", default=None, help="a stop string (varied output lengths)")
    parser.add_argument("--dtype", default="float32", help="engine dtype (CPU: float32/bfloat16)")
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--model-dir", default=None, help="default: build the tiny random model")
    parser.add_argument("--repeats", type=int, default=5, help="runs per side (medians shown)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="vllm-offline-bench-"))
    _offline_env(root)
    logging.getLogger("vllm").setLevel(logging.WARNING)

    from curator_flows import LLM, offline

    if args.model_dir:
        model_dir = args.model_dir
    else:
        from curator_flows.testing.tiny_model import build_tiny_llama

        model_dir = build_tiny_llama(root / "tiny-llama")

    generation: dict[str, Any] = {"temperature": 1.0}
    if args.stop:
        generation["stop"] = [args.stop]
    else:
        generation["ignore_eos"] = True  # every output exactly max_tokens on both sides

    def make_llm(batch_size: int) -> Any:
        return LLM(
            model_dir,
            backend="vllm",
            generation_params=generation,
            backend_params={
                "batch_size": batch_size,
                "max_tokens": args.max_tokens,
                "enforce_eager": True,
                "max_model_length": 512,
                "invalid_finish_reasons": [],  # accept "length" (ignore_eos, the cap)
                "progress": "off",
                "engine_kwargs": {
                    "kv_cache_memory_bytes": args.kv_cache_mib * 1024 * 1024,
                    "dtype": args.dtype,
                    "seed": 0,
                    # Every run prefills in full: no run profits from an earlier one's cache.
                    "enable_prefix_caching": False,
                },
            },
        )

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    generator = offline.build_generator(make_llm(batch_sizes[0]))  # ONE engine for every run
    timer = StepTimer(generator._llm.llm_engine)
    prompts = make_prompts(args.n)
    rows = [{"prompt": p} for p in prompts]
    tokenizer = generator._llm.get_tokenizer()
    prompt_ids = [
        tokenizer.encode(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )
        for p in prompts
    ]

    runs: dict[int | None, list[dict]] = {None: [], **{b: [] for b in batch_sizes}}
    order = random.Random(0)
    try:
        # Warm-up, once per side (first calls import pyarrow, datasets, ...).
        raw_run(generator, prompt_ids[:8])
        ours_run(make_llm(batch_sizes[0]), rows[:8], tempfile.mkdtemp(dir=root), generator)
        for repeat in range(args.repeats):
            sides: list[int | None] = list(runs)
            order.shuffle(sides)  # no side always runs first (or last) in a repeat
            for side in sides:
                timer.reset()
                if side is None:
                    r = raw_run(generator, prompt_ids)
                else:
                    wd = tempfile.mkdtemp(prefix="wd-", dir=root)
                    r = ours_run(make_llm(side), rows, wd, generator)
                r.update(steps=timer.steps, in_steps=timer.seconds)
                r["outside"] = r["seconds"] - r["in_steps"]
                runs[side].append(r)
                label = "raw" if side is None else f"ours batch_size={side}"
                print(
                    f"[{repeat}] {label:>21}: {r['tokens'] / r['seconds']:9.1f} tokens/s, "
                    f"{r['steps']} steps, {r['outside']:.2f} s outside steps",
                    flush=True,
                )
    finally:
        generator.close()

    def med(side: int | None, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    def rate(side: int | None) -> float:
        return statistics.median(r["tokens"] / r["seconds"] for r in runs[side])

    # One step time for everyone: the machine's noise lands on both sides alike.
    step_time = statistics.median(r["in_steps"] / r["steps"] for rs in runs.values() for r in rs)

    def modelled_seconds_per_token(side: int | None) -> float:
        return statistics.median(
            (r["steps"] * step_time + r["outside"]) / r["tokens"] for r in runs[side]
        )

    raw_rate = rate(None)
    mean_tokens = statistics.mean(r["tokens"] for r in runs[None]) / args.n
    print()
    print(
        f"prompts={args.n} max_tokens={args.max_tokens} "
        f"{'stop=' + repr(args.stop) if args.stop else 'ignore_eos'} "
        f"({mean_tokens:.1f} tokens/prompt) dtype={args.dtype}; one engine for all runs "
        f"(start-up excluded on both sides); medians of {args.repeats} runs per side"
    )
    print(
        f"raw vllm.LLM.generate, one call: {raw_rate:9.1f} tokens/s, "
        f"{med(None, 'steps'):.0f} engine steps, {med(None, 'outside'):.2f} s outside steps"
    )
    for b in batch_sizes:
        estimate = modelled_seconds_per_token(None) / modelled_seconds_per_token(b)
        print(
            f"LLM(backend='vllm') batch_size={b:>5}: {rate(b):9.1f} tokens/s "
            f"({rate(b) / raw_rate:6.1%} of raw), {med(b, 'steps'):.0f} engine steps, "
            f"{med(b, 'outside'):.2f} s outside steps; estimate {estimate:6.1%} of raw"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
