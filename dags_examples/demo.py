"""``make demo``: the nightly build (cuisines → recipes) as a Prefect flow, end to end.

The flow runs on Prefect's temporary local server (its database in a temporary
``PREFECT_HOME``, gone at exit; set ``PREFECT_API_URL`` to use your own server instead) against
the simulator started in this process: no API key, no network. With ``OPENAI_API_KEY`` set,
``--model gpt-4o-mini`` calls the real provider. Datasets land as Parquet under
``./curator-output/datasets/<name>/date=<date>/`` (``--output`` to change it); the date (UTC,
as a deployment's scheduled date) is the run key, so running the demo again the same day resumes
instead of generating anew. ``make prefect-ui`` keeps its runs apart (``prefect-ui/``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import os
import shutil
import sys
import tempfile
from typing import Any


def _temporary_prefect_home() -> str | None:
    """A throw-away ``PREFECT_HOME`` for Prefect's temporary server (set before Prefect is
    imported); ``None`` when ``PREFECT_API_URL`` points at a server already."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    home = tempfile.mkdtemp(prefix="curator-demo-prefect-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.update(
        PREFECT_HOME=home,
        PREFECT_LOCAL_STORAGE_PATH=os.path.join(home, "storage"),
        PREFECT_MEMO_STORE_PATH=os.path.join(home, "memo_store.toml"),
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    return home


def _print_dataset(title: str, brief: dict[str, Any]) -> None:
    print(f"\n== {title}: {brief['rows']} rows, {brief['failed']} failed requests")
    print(
        f"   tokens: {brief['input_tokens']} in / {brief['output_tokens']} out; "
        f"cost ${brief['cost']:.5f}; time {brief['time']:.2f}s"
    )
    print(f"   dataset: {brief['output_uri']}")
    print(f"   run:     {brief['run_uri']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="call the real provider (needs OPENAI_API_KEY)")
    parser.add_argument("--output", default="curator-output", help="where runs and datasets go")
    parser.add_argument("--latency", type=float, default=0.05, help="simulated latency (s)")
    parser.add_argument("--date", help="the run key (default: today)")
    args = parser.parse_args(argv)

    real = bool(args.model and os.environ.get("OPENAI_API_KEY"))
    if args.model and not real:
        print(
            "--model needs OPENAI_API_KEY; running against the simulator instead", file=sys.stderr
        )
    home = _temporary_prefect_home()
    root = os.path.abspath(args.output)
    with contextlib.ExitStack() as stack:
        if real:
            model, base_url = args.model, None
            print(f"Calling the real provider with model {model}")
        else:
            from curator_flows.testing.simulator import Simulator

            sim = stack.enter_context(Simulator(latency=args.latency, rpm=6000))
            model, base_url = "gpt-4o-mini", sim.base_url
            print(f"Simulator on {sim.base_url} (6,000 RPM, {args.latency * 1000:.0f} ms latency)")
        print(
            "Prefect: "
            + (
                f"temporary local server (PREFECT_HOME={home})"
                if home
                else os.environ["PREFECT_API_URL"]
            )
        )
        from dags_examples.prefect_nightly import nightly_recipes

        result = nightly_recipes(
            run_date=args.date or datetime.datetime.now(datetime.UTC).date().isoformat(),
            model=model,
            working_dir=f"{root}/runs",
            output_root=f"{root}/datasets",
            base_url=base_url,
        )
        _print_dataset("cuisines", result["cuisines"])
        _print_dataset("recipes", result["recipes"])

        from curator_flows import steps

        recipes = steps.load_response(result["recipes"]["run_uri"]).dataset
        if len(recipes):
            print(f"\nFirst recipe: {recipes[0]['title']!r} ({recipes[0]['cuisine']})")
        print(
            f"\nDatasets (Parquet, _SUCCESS last) under {root}/datasets/ "
            f"(run key {result['run_key']})"
        )
        print(
            "Watch the same build in the Prefect UI: make prefect-ui (its runs and datasets "
            f"apart, under {root}/prefect-ui/)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
