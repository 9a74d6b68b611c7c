"""LLM subclasses of the Airflow tests, importable by the same name from every task (the tests put
this folder on ``sys.path``), so a step given only the run URI rebuilds them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from curator_flows import LLM


class Numbered(LLM):
    """Rows ``{"n": int}``; one plain-text request each."""

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}{input.get('marker', '')}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}


class Fact(BaseModel):
    subject: str = Field(description="What the fact is about.")
    fact: str
    sources: list[str]


class FactWriter(LLM):
    """Rows ``{"n": int}``; a structured ``Fact`` each."""

    response_format = Fact

    def prompt(self, input: dict) -> str:
        return f"a fact about topic {input['n']}"

    def parse(self, input: dict, response: Fact) -> dict:
        return {"n": input["n"], "subject": response.subject, "fact": response.fact}
