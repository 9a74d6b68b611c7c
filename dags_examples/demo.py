"""``make demo``: a small nightly-style build, end to end.

Without ``--model`` (or without ``OPENAI_API_KEY``) it runs against the simulator started in this
process: no API key, no network. With ``OPENAI_API_KEY`` set and ``--model gpt-4o-mini`` it calls
the real provider. The dataset lands under ``./curator-output/`` (``--output`` to change it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from dags_examples.generators import CuisineGenerator, RecipeGenerator


def _print_stats(title: str, result) -> None:
    print(f"\n== {title}: {len(result.dataset)} rows  ({result.cache_dir})")
    s = result.request_stats
    print(f"   requests: {s.total} total, {s.succeeded} ok, {s.failed} failed, {s.cached} cached")
    print(
        f"   tokens: {result.token_usage.input} in / {result.token_usage.output} out; "
        f"cost ${result.cost_info.total_cost:.5f}; "
        f"time {result.performance_stats.total_time:.2f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="call the real provider (needs OPENAI_API_KEY)")
    parser.add_argument("--output", default="curator-output", help="working_dir for the runs")
    parser.add_argument("--latency", type=float, default=0.05, help="simulated latency (s)")
    args = parser.parse_args(argv)

    real = bool(args.model and os.environ.get("OPENAI_API_KEY"))
    if args.model and not real:
        print(
            "--model needs OPENAI_API_KEY; running against the simulator instead", file=sys.stderr
        )
    with contextlib.ExitStack() as stack:
        if real:
            model, backend_params = args.model, {}
            print(f"Calling the real provider with model {model}")
        else:
            from curator_flows.testing.simulator import Simulator

            sim = stack.enter_context(Simulator(latency=args.latency, rpm=6000))
            model = "gpt-4o-mini"
            backend_params = {"base_url": sim.base_url, "api_key": "simulator"}
            print(f"Simulator on {sim.base_url} (6,000 RPM, {args.latency * 1000:.0f} ms latency)")

        working_dir = os.path.abspath(args.output)
        cuisines = CuisineGenerator(model, backend_params=backend_params)(working_dir=working_dir)
        _print_stats("cuisines", cuisines)
        recipes = RecipeGenerator(model, backend_params=backend_params)(
            cuisines.dataset, working_dir=working_dir
        )
        _print_stats("recipes", recipes)
        first = recipes.dataset[0] if len(recipes.dataset) else None
        if first:
            print(f"\nFirst recipe: {first['title']!r} ({first['cuisine']})")
        print(f"\nDataset files: {recipes.cache_dir}/output/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
