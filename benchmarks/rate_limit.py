"""Rate-limit pacing: the simulator enforces 3,000 RPM with 0.5 s latency; 1,500 requests.

Target: ≥ 99 % of the ideal rate (the limit) and zero 429s. The client is given no limits: it
learns them from the simulator's rate-limit headers.

    python benchmarks/rate_limit.py [--requests 1500] [--rpm 3000] [--latency 0.5]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()
    with simulator_process(rpm=args.rpm, latency=args.latency) as base_url:
        with tempfile.TemporaryDirectory() as wd:
            llm = LLM(
                "gpt-4o-mini",
                backend_params={"base_url": base_url, "api_key": "bench", "progress": "off"},
            )
            run = steps.prepare(llm, [f"paced prompt {i}" for i in range(args.requests)], wd)
            with Clock() as clock:
                summary = steps.run_online(run, llm=llm)
        stats_url = base_url.removesuffix("/v1") + "/_sim/stats"
        stats = json.loads(urllib.request.urlopen(stats_url).read())
    ideal_seconds = args.requests / (args.rpm / 60.0)
    report(
        "rate_limit",
        {
            "requests": args.requests,
            "seconds": round(clock.wall, 2),
            "ideal_seconds": round(ideal_seconds, 2),
            "pct_of_ideal_rate": round(100 * ideal_seconds / clock.wall, 1),
            "http_429": stats["status_counts"].get("429", 0),
            "succeeded": summary["succeeded"],
        },
    )


if __name__ == "__main__":
    main()
