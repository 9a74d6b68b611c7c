"""LLM subclasses and response formats importable from subprocesses (tests put this folder on
PYTHONPATH), so a step can rebuild the LLM from the run manifest alone."""

from __future__ import annotations

from pydantic import BaseModel

from curator_flows import LLM


class Numbered(LLM):
    def prompt(self, input: dict) -> str:
        return f"number {input['n']}{input.get('marker', '')}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}


class Padded(LLM):
    """Large prompts: ``pad`` characters of filler per row (for byte-limit sharding)."""

    def prompt(self, input: dict) -> str:
        return f"number {input['n']} " + "x" * input["pad"]

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"]}


class Fact(BaseModel):
    subject: str
    fact: str


class FactWriter(LLM):
    response_format = Fact

    def prompt(self, input: dict) -> str:
        return f"a fact about {input['topic']}{input.get('marker', '')}"

    def parse(self, input: dict, response: Fact) -> dict:
        assert isinstance(response, Fact)
        return {"topic": input["topic"], "fact": response.fact}
