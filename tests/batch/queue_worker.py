"""A worker that advances every shard of a batch run until all are done:
``python queue_worker.py <run_uri> forward|backward`` (two of them, in opposite shard orders,
share one run in ``test_batch_queue``). Prints ``{"advanced": <advance calls that ran>}``."""

from __future__ import annotations

import json
import sys
import time

from curator_flows import LeaseHeldError, steps


def main() -> None:
    run_uri, order = sys.argv[1], sys.argv[2]
    todo = [s["shard"] for s in steps.status(run_uri)["shards"]]
    if order == "backward":
        todo.reverse()
    advanced, deadline = 0, time.monotonic() + 150
    while todo:
        assert time.monotonic() < deadline, f"shards {todo} never finished"
        waits = []
        for shard in list(todo):
            try:
                state = steps.advance(run_uri, shard)
            except LeaseHeldError:  # the other worker is on it right now
                waits.append(0.02)
                continue
            advanced += 1
            if state["done"]:
                todo.remove(shard)
            else:
                waits.append(state["wait_seconds"])
        time.sleep(min(waits, default=0))
    print(json.dumps({"advanced": advanced}))


if __name__ == "__main__":
    main()
