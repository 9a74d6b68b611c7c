"""A worker process for the offline vLLM resume tests.

    python offline_worker.py call WORKING_DIR MODEL_DIR ROWS BATCH_SIZE [--pause-after K]
        runs ``resume_llm(...)(rows)`` (the whole in-process call: prepare, run_offline, finalize)
    python offline_worker.py step RUN_URI [SHARD ...]
        runs ``steps.run_offline(RUN_URI, SHARDS)``: the step from the run URI alone, as an
        Airflow or Prefect task on a GPU worker does

Prints one JSON line: the step's result (``step``), how many engines were built and how many
chunks (and prompts) they were given. ``--pause-after K`` sleeps before collecting the (K+1)-th
chunk, so a test can kill the process at a known point: after K chunks were stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from curator_flows.backends import vllm as vllm_backend

COUNTS = {"engines": 0, "chunks": 0, "prompts": 0, "collected": 0}


def instrument(pause_after: int | None) -> None:
    class CountingGenerator(vllm_backend.VLLMGenerator):
        def __init__(self, *args, **kwargs):
            COUNTS["engines"] += 1
            super().__init__(*args, **kwargs)

        def submit(self, requests):
            COUNTS["chunks"] += 1
            COUNTS["prompts"] += len(requests)
            return super().submit(requests)

        def collect(self, submission):
            if pause_after is not None and COUNTS["collected"] >= pause_after:
                print("paused", flush=True)
                time.sleep(3600)  # the test kills us here
            COUNTS["collected"] += 1
            return super().collect(submission)

    vllm_backend.VLLMGenerator = CountingGenerator


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    call = sub.add_parser("call")
    call.add_argument("working_dir")
    call.add_argument("model_dir")
    call.add_argument("rows", type=int)
    call.add_argument("batch_size", type=int)
    call.add_argument("--pause-after", type=int)
    step = sub.add_parser("step")
    step.add_argument("run_uri")
    step.add_argument("shards", nargs="*")
    args = parser.parse_args()

    instrument(getattr(args, "pause_after", None))
    if args.command == "call":
        from offline_llms import resume_llm

        llm = resume_llm(args.model_dir, args.batch_size)
        result = llm([{"n": i} for i in range(args.rows)], working_dir=args.working_dir)
        out = {"run_uri": result.cache_dir, "rows": len(result.dataset)}
    else:
        from curator_flows import steps

        out = {"step": steps.run_offline(args.run_uri, args.shards or None)}
    print(json.dumps({**out, **COUNTS}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
