"""An offline LLM and a stand-in generator importable from subprocesses (tests put this folder
on PYTHONPATH), for steps that run in a child process the tests can freeze."""

from __future__ import annotations

import json
import os
import signal

from curator_flows import LLM


class OfflineNumbers(LLM):
    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}


class FreezingGenerator:
    """Answers each chunk at once, notes each call in ``calls_path`` and, at the end of call
    ``freeze_at``, stops its own process (SIGSTOP) as a VM suspend or a long pause would: the
    parent decides when it wakes."""

    def __init__(self, calls_path: str, freeze_at: int) -> None:
        self.calls_path = calls_path
        self.freeze_at = freeze_at
        self.calls = 0

    def generate(self, requests: list[dict]) -> list[dict]:
        self.calls += 1
        with open(self.calls_path, "a") as handle:
            handle.write(f"{len(requests)}\n")
        out = [
            {
                "custom_id": request["custom_id"],
                "content": json.dumps({"echo": request["messages"][-1]["content"]}),
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 10, "completion_tokens": 4},
            }
            for request in requests
        ]
        if self.calls == self.freeze_at:
            os.kill(os.getpid(), signal.SIGSTOP)
        return out

    def close(self) -> None:
        pass
