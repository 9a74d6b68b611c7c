"""LLM subclasses for the Prefect tests, importable from child processes (the tests put this
folder on PYTHONPATH), and a stand-in for the vLLM generator."""

from __future__ import annotations

import json
import os

from curator_flows import LLM


class Numbered(LLM):
    """Online or batch: "number <n>" (plus an optional simulator fault marker)."""

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}{input.get('marker', '')}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}


class OfflineNumbers(LLM):
    """Offline (vLLM) shape: the stand-in generator answers ``{"n": <n>}``."""

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "echo": json.loads(response)["n"]}


class StandInGenerator:
    """Answers each request like vLLM would (no vLLM in this venv); records what it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def generate(self, requests: list[dict]) -> list[dict]:
        out = []
        for request in requests:
            self.seen.append(request["custom_id"])
            n = int(request["messages"][-1]["content"].split()[-1])
            out.append(
                {
                    "custom_id": request["custom_id"],
                    "content": json.dumps({"n": n}),
                    "finish_reason": "stop",
                    "usage": {"prompt_tokens": 10, "completion_tokens": 4},
                }
            )
        return out

    def close(self) -> None:
        pass


def install_stand_in_generator() -> None:
    """Make this process's offline steps use :class:`StandInGenerator` instead of vLLM."""
    from curator_flows import offline

    offline.build_generator = lambda llm: StandInGenerator()


# Child processes (a served GPU-pool flow run) import this module when they rebuild the LLM
# from the run manifest, before the offline step builds its generator.
if os.environ.get("CURATOR_TEST_STAND_IN_VLLM") == "1":
    install_stand_in_generator()
