"""Run one step of a batch run in this (fresh) process: ``python step_runner.py '<json>'``.

``crash`` (optional) makes the process die with exit status 17 at a chosen line:
``after_create`` (the create call returned, its batch id not yet recorded), ``mid_collect``
(the second flush of response lines is half written, with a torn last line) and
``before_collected`` (every line is appended, the round not yet marked collected).
"""

from __future__ import annotations

import json
import os
import sys

CRASH = 17


def install_crash(mode: str | None) -> None:
    if mode is None:
        return
    from curator_flows.batch import collect, records, steps

    if mode == "after_create":
        steps._record_created = lambda *a, **k: os._exit(CRASH)
    elif mode == "mid_collect":
        from curator_flows.store import LocalAppender, dumps

        collect.FLUSH_LINES = 10
        calls = {"n": 0}
        original = LocalAppender.append_many

        def append_many(self, records_):
            records_ = list(records_)
            calls["n"] += 1
            if calls["n"] < 2:
                return original(self, records_)
            half = records_[: len(records_) // 2]
            torn = dumps(records_[len(half)])[:25]
            os.write(self.fd, b"".join(dumps(r) for r in half) + torn)
            os._exit(CRASH)

        LocalAppender.append_many = append_many
    elif mode == "before_collected":
        original_save = records.BatchRecord.save

        def save(self):
            if self.current and self.current["state"] == records.COLLECTED:
                os._exit(CRASH)
            original_save(self)

        records.BatchRecord.save = save
    else:
        raise ValueError(mode)


def build_llm(args: dict):
    import batch_llms

    cls = getattr(batch_llms, args["cls"])
    return cls(args["model"], batch=True, backend=args["backend"], backend_params=args["params"])


def main() -> None:
    args = json.loads(sys.argv[1])
    install_crash(args.get("crash"))
    from curator_flows import steps

    step = args["step"]
    if step == "call":
        response = build_llm(args)(args["rows"], working_dir=args["wd"])
        out = {
            "rows": len(response.dataset),
            "failed": response.request_stats.failed,
            "run_uri": response.cache_dir,
        }
    elif step == "prepare":
        out = steps.prepare(build_llm(args), args["rows"], args["wd"])
    elif step in ("submit", "poll", "collect"):
        out = getattr(steps, step)(args["run"], args["shard"])
    elif step == "finalize":
        steps.finalize(args["run"])
        response = steps.load_response(args["run"])
        out = {
            "rows": len(response.dataset),
            "failed": response.request_stats.failed,
            "ns": list(response.dataset["n"]),
            "cost": response.cost_info.total_cost,
        }
    elif step == "status":
        out = steps.status(args["run"])
    else:
        raise ValueError(step)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
