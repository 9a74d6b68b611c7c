"""LLM subclasses importable from subprocesses (tests put this folder on PYTHONPATH)."""

from __future__ import annotations

from curator_flows import LLM


class Numbered(LLM):
    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}
