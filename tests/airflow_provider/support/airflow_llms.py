"""LLM subclasses of the Airflow tests, importable by the same name from every task (the tests put
this folder on ``sys.path``), so a step given only the run URI rebuilds them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from curator_flows import LLM
from dags_examples.generators import RecipeGenerator


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


Word = Annotated[str, Field(pattern=r"^[a-z]{1,8}$")]


class TinyRecipe(BaseModel):
    """The example's recipe with bounded fields: what a tiny random model finishes (a pattern,
    not max_length: xgrammar's maxLength lets control characters through)."""

    title: str = Field(pattern=r"^[a-z ]{1,16}$")
    ingredients: list[Word] = Field(min_length=1, max_length=2)
    instructions: list[Word] = Field(min_length=1, max_length=2)


class TinyRecipeGenerator(RecipeGenerator):
    """``RecipeGenerator`` (prompt and parse) with :class:`TinyRecipe` as its schema."""

    response_format = TinyRecipe
