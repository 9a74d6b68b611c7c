"""The generators of the nightly build, shared by the demo, the Airflow DAGs and the Prefect flows:
Curator's cuisine example, then a recipe per cuisine."""

from __future__ import annotations

from pydantic import BaseModel, Field

from curator_flows import LLM


class Cuisines(BaseModel):
    """A list of cuisines."""

    cuisines_list: list[str] = Field(description="A list of cuisines.")


class CuisineGenerator(LLM):
    """Generates diverse cuisines."""

    response_format = Cuisines

    def prompt(self, input: dict) -> str:
        return "Generate 10 diverse cuisines."

    def parse(self, input: dict, response: Cuisines) -> list[dict]:
        return [{"cuisine": name} for name in response.cuisines_list]


class Recipe(BaseModel):
    title: str
    ingredients: list[str]
    instructions: list[str]


class RecipeGenerator(LLM):
    """Writes one recipe per cuisine."""

    response_format = Recipe

    def prompt(self, input: dict) -> str:
        return f"Write a typical home recipe from the {input['cuisine']} cuisine."

    def parse(self, input: dict, response: Recipe) -> dict:
        return {
            "cuisine": input["cuisine"],
            "title": response.title,
            "ingredients": response.ingredients,
            "instructions": response.instructions,
        }
