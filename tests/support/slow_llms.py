"""LLMs importable from subprocesses (tests put this folder on PYTHONPATH) whose steps take
long enough for a test to kill them mid-way."""

from __future__ import annotations

import time

from curator_flows import LLM


class SlowParsing(LLM):
    """``parse()`` takes 50 ms a row: a finalize of 40 rows runs for about two seconds."""

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        time.sleep(0.05)
        return {"n": input["n"], "response": response}
