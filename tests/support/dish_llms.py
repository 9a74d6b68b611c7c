"""A lenient and a tightened ``response_format`` of one family (the same JSON schema), and an
LLM for each: the stored answers of the lenient one that the tightened one refuses (names in
``REFUSED``; a test sets it) are taken back by finalize and reused by no sibling run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from curator_flows import LLM

#: names the tightened validator refuses (a test clears and fills it)
REFUSED: set[str] = set()


class Dish(BaseModel):
    model_config = ConfigDict(title="Dish")
    name: str
    calories: int


class StrictDish(BaseModel):  # the same JSON schema as Dish; refuses some stored answers
    model_config = ConfigDict(title="Dish")
    name: str
    calories: int

    @field_validator("name")
    @classmethod
    def not_refused(cls, value: str) -> str:
        if value in REFUSED:
            raise ValueError("a refused name")
        return value


class DishWriter(LLM):
    response_format = Dish

    def prompt(self, input: dict) -> str:
        return f"a dish named after {input['n']}"

    def parse(self, input: dict, response: Dish) -> dict:
        return {"n": input["n"], "name": response.name}


class StrictDishWriter(DishWriter):
    response_format = StrictDish
