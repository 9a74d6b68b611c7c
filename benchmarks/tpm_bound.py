"""Token-bound pacing: how close a run gets to what its limits allow when TPM (or RPM, or
Anthropic's ITPM/OTPM) binds.

The simulator (its own process) enforces the limits, counts what each provider counts up front
and settles to the usage, and answers every request with exactly ``--output-tokens`` tokens
after ``--latency`` seconds. The client is told no limits: it learns them from the headers. The
*evenly paced ideal* is what the binding limit allows without any burst: the tokens (or
requests) the run used over the limit's rate. Goal: wall time within 1.15x of it, zero 429s.

    python benchmarks/tpm_bound.py --tpm 60000 --requests 1500 --output-tokens 20
    python benchmarks/tpm_bound.py --tpm 600000 --requests 500 --output-tokens 600
    python benchmarks/tpm_bound.py --rpm 3000 --tpm 600000 --requests 600 --output-tokens 600
    python benchmarks/tpm_bound.py --provider anthropic --otpm 80000 --max-tokens 20000 \\
        --output-tokens 600 --latency 2 --requests 40 --burst 60
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import Clock, report, simulator_process  # noqa: E402

from curator_flows import LLM, steps  # noqa: E402


def ideal_seconds(args: argparse.Namespace, requests: int, stats: dict) -> tuple[float, str]:
    """The evenly paced time of what the run used, under its tightest limit (and which)."""
    prompt, completion = stats["prompt_tokens"], stats["completion_tokens"]
    candidates = [(0.0, "none")]
    if args.rpm:
        candidates.append((requests / (args.rpm / 60.0), "rpm"))
    if args.tpm:
        candidates.append(((prompt + completion) / (args.tpm / 60.0), "tpm"))
    if args.itpm:
        candidates.append((prompt / (args.itpm / 60.0), "itpm"))
    if args.otpm:
        candidates.append((completion / (args.otpm / 60.0), "otpm"))
    return max(candidates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rpm", type=int)
    parser.add_argument("--tpm", type=int)
    parser.add_argument("--itpm", type=int, help="Anthropic input tokens per minute")
    parser.add_argument("--otpm", type=int, help="Anthropic output tokens per minute")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--output-tokens", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, help="the requests' max_tokens (default none)")
    parser.add_argument("--burst", type=float, default=2.0, help="simulator burst_seconds")
    parser.add_argument("--concurrency", type=int, help="max_concurrent_requests")
    args = parser.parse_args()
    if not (args.rpm or args.tpm or args.itpm or args.otpm):
        parser.error("give at least one limit (--rpm, --tpm, --itpm, --otpm)")
    config = {
        "rpm": args.rpm,
        "tpm": args.tpm,
        "input_tpm": args.itpm,
        "output_tpm": args.otpm,
        "latency": args.latency,
        "burst_seconds": args.burst,
        "completion_tokens": args.output_tokens,
    }
    with simulator_process(**{k: v for k, v in config.items() if v is not None}) as base_url:
        with tempfile.TemporaryDirectory() as wd:
            backend_params = {"base_url": base_url, "api_key": "bench", "progress": "off"}
            if args.max_tokens:
                backend_params["max_tokens"] = args.max_tokens
            if args.concurrency:
                backend_params["max_concurrent_requests"] = args.concurrency
            model = "claude-sonnet-4-5" if args.provider == "anthropic" else "gpt-4o-mini"
            llm = LLM(model, backend=args.provider, backend_params=backend_params)
            run = steps.prepare(llm, [f"paced prompt {i}" for i in range(args.requests)], wd)
            with Clock() as clock:
                summary = steps.run_online(run, llm=llm)
        stats_url = base_url.removesuffix("/v1") + "/_sim/stats"
        stats = json.loads(urllib.request.urlopen(stats_url).read())
    ideal, binding = ideal_seconds(args, args.requests, stats)
    report(
        "tpm_bound",
        {
            "provider": args.provider,
            "requests": args.requests,
            "output_tokens": args.output_tokens,
            "binding": binding,
            "seconds": round(clock.wall, 2),
            "ideal_seconds": round(ideal, 2),
            "ratio": round(clock.wall / ideal, 3) if ideal else None,
            "http_429": stats["status_counts"].get("429", 0),
            "succeeded": summary["succeeded"],
        },
    )


if __name__ == "__main__":
    main()
