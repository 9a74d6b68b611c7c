"""Online throughput: N requests against the simulator (zero latency, no limits) in a separate
process. Reports req/s, client CPU per request and peak RSS.

Targets (2-core machine shared with the simulator): ≥ 3,000 req/s, ≤ 0.35 ms client CPU per
request at 20,000 requests; peak RSS ≤ 300 MB at 100,000 requests.

    python benchmarks/online_throughput.py [--requests 20000] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import Clock, peak_rss_mb, report, simulator_process  # noqa: E402

from curator_flows import LLM, steps  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    with simulator_process() as base_url, tempfile.TemporaryDirectory() as wd:
        llm = LLM(
            "gpt-4o-mini",
            backend_params={
                "base_url": base_url,
                "api_key": "bench",
                "max_concurrent_requests": args.concurrency,
                "progress": "off",
            },
        )
        rows = ({"prompt": f"benchmark prompt number {i}"} for i in range(args.requests))
        with Clock() as prep:
            run = steps.prepare(llm, rows, wd)
        with Clock() as online:
            summary = steps.run_online(run, llm=llm)
        with Clock() as fin:  # the datasets.Dataset included (it is built on first access)
            steps.finalize(run, llm=llm)
            rows = len(steps.load_response(run).dataset)
        assert summary["succeeded"] == args.requests, summary
        assert rows == args.requests
        report(
            "online_throughput",
            {
                "requests": args.requests,
                "req_per_s": round(args.requests / online.wall),
                "client_cpu_ms_per_req": round(online.cpu / args.requests * 1000, 3),
                "prepare_s": round(prep.wall, 2),
                "finalize_s": round(fin.wall, 2),
                "peak_rss_mb": round(peak_rss_mb()),
            },
        )


if __name__ == "__main__":
    main()
