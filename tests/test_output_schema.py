"""Where a declared output schema comes from, and how annotations map to Arrow types (the
published asset's contract is made of it; see curator_flows.output_schema)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, TypedDict

import pyarrow as pa
import pytest
from pydantic import BaseModel

from curator_flows import LLM
from curator_flows.errors import ConfigError
from curator_flows.output_schema import declared_schema, schema_of_class


class Step(BaseModel):
    order: int
    text: str


class Recipe(BaseModel):
    title: str
    servings: int | None = None
    cooked_at: dt.datetime
    steps: list[Step]
    tags: set[str] = set()
    level: Literal["easy", "hard"] = "easy"
    extra: Any = None
    mixed: int | str = 0


class Row(TypedDict):
    title: str
    score: float


class ByAnnotation(LLM):
    def parse(self, input: dict, response: str) -> list[Row]:
        return [{"title": response, "score": 1.0}]


class ByDefaultParse(LLM):
    response_format = Recipe


def test_a_model_maps_to_the_arrow_types_its_rows_are_stored_with():
    schema = schema_of_class(Recipe)
    assert schema.field("title").type == pa.string() and not schema.field("title").nullable
    assert schema.field("servings").type == pa.int64() and schema.field("servings").nullable
    assert schema.field("cooked_at").type == pa.timestamp("us")
    assert schema.field("steps").type == pa.list_(
        pa.struct([pa.field("order", pa.int64(), False), pa.field("text", pa.string(), False)])
    )
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("level").type == pa.string()
    for json_text in ("extra", "mixed"):  # no one type: JSON text, marked as such
        assert schema.field(json_text).metadata == {b"curator_flows.encoding": b"json"}


def test_where_a_declaration_comes_from():
    annotated = declared_schema(ByAnnotation("gpt-4o-mini"))
    assert annotated[1].endswith("test_output_schema.Row")
    assert annotated[0] == pa.schema(
        [pa.field("title", pa.string(), False), pa.field("score", pa.float64(), False)]
    )
    default, source = declared_schema(ByDefaultParse("gpt-4o-mini"))
    assert "default parse" in source
    assert default.field("cooked_at").type == pa.string()  # model_dump(mode="json")
    assert declared_schema(LLM("gpt-4o-mini")) is None
    returned = declared_schema(LLM("gpt-4o-mini"), Step)  # the class parse() returned
    assert returned[1].startswith("parse() returns ") and returned[1].endswith(".Step")
    explicit = pa.schema([("title", pa.string())])
    assert declared_schema(ByAnnotation("gpt-4o-mini", output_schema=explicit)) == (
        explicit,
        "output_schema",
    )


def test_output_schema_is_checked_at_construction_and_survives_a_rebuild():
    from curator_flows.rebuild import verify_rebuild

    with pytest.raises(ConfigError, match="output_schema must be"):
        LLM("gpt-4o-mini", output_schema={"title": "string"})
    llm = ByAnnotation("gpt-4o-mini", output_schema=pa.schema([("title", pa.string())]))
    verify_rebuild(llm, llm.spec())  # the schema argument is kept in the manifest
