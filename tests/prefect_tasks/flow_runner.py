"""Runs one flow of ``prefect_tasks`` in a fresh process (the tests kill it): ``python
flow_runner.py '<json>'`` with ``flow`` (a flow's name in ``prefect_tasks``) and its keyword
arguments; prints the flow's result as JSON."""

from __future__ import annotations

import json
import sys

import prefect_tasks


def main() -> None:
    args = json.loads(sys.argv[1])
    flow = getattr(prefect_tasks, args.pop("flow"))
    print(json.dumps(flow(**args)), flush=True)


if __name__ == "__main__":
    main()
