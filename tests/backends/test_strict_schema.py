"""When a ``response_format`` goes to OpenAI strict, when non-strict, and what is sent: the
client's decision, checked against the simulator's independent reading of OpenAI's rules and
over real HTTP (online and batch)."""

from __future__ import annotations

import logging
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from curator_flows import LLM
from curator_flows.backends.openai import response_format_param
from curator_flows.backends.strict_schema import strict_json_schema, strict_problem
from curator_flows.testing.simulator.strict import strict_schema_error


class Inner(BaseModel):
    x: int


class Plain(BaseModel):
    title: str
    count: int = Field(ge=0)
    tags: list[str] = Field(min_length=1, max_length=5)
    kind: Literal["a", "b"]
    note: str | None = None
    inner: Inner = Field(description="described nested model")
    maybe: Inner | None = None
    many: list[Inner] = []


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


class FreeDict(BaseModel):
    label: str
    scores: dict[str, float]


class ListOfDicts(BaseModel):
    rows: list[dict]


class AnyField(BaseModel):
    value: Any


class Lengths(BaseModel):
    code: str = Field(min_length=3)


class AllowsExtra(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class UniqueTags(BaseModel):
    tags: set[str]


STRICT = [Plain, Tree, Inner]
NON_STRICT = {
    FreeDict: "properties/scores is a free-form object",
    ListOfDicts: "properties/rows/items is a free-form object",
    AnyField: "properties/value has no type",
    Lengths: "properties/code uses 'minLength'",
    AllowsExtra: "the root is a free-form object",
    UniqueTags: "properties/tags uses 'uniqueItems'",
}


@pytest.mark.parametrize("model", STRICT, ids=lambda m: m.__name__)
def test_qualifying_models_are_sent_strict_and_the_rules_accept_them(model):
    param = response_format_param(model.__name__, model.model_json_schema())
    spec = param["json_schema"]
    assert param["type"] == "json_schema" and spec["strict"] is True
    assert strict_problem(spec["schema"]) is None
    assert strict_schema_error(spec["schema"]) is None  # the simulator's reading agrees


def test_strict_conversion_keeps_what_the_model_accepts():
    schema = strict_json_schema(Plain.model_json_schema())
    assert schema["additionalProperties"] is False
    assert schema["required"] == list(Plain.model_fields)
    inner = schema["properties"]["inner"]
    assert "$ref" not in inner and inner["description"] == "described nested model"
    assert inner["properties"] == {"x": {"title": "X", "type": "integer"}}
    assert "default" not in schema["properties"]["note"]
    # a document that fills every field validates against the pydantic model
    Plain.model_validate(
        {
            "title": "t",
            "count": 1,
            "tags": ["x"],
            "kind": "a",
            "note": None,
            "inner": {"x": 1},
            "maybe": None,
            "many": [],
        }
    )


@pytest.mark.parametrize("model", list(NON_STRICT), ids=lambda m: m.__name__)
def test_models_strict_mode_cannot_express_are_sent_non_strict(model):
    schema = model.model_json_schema()
    param = response_format_param(model.__name__, schema)
    spec = param["json_schema"]
    assert spec["strict"] is False
    assert spec["schema"] == schema  # as pydantic wrote it
    problem = strict_problem(strict_json_schema(schema))
    assert problem is not None and problem.startswith(NON_STRICT[model])
    # and sending that schema strict is what OpenAI refuses
    assert strict_schema_error(strict_json_schema(schema)) is not None


def test_non_strict_is_logged_once_per_schema(caplog):
    class Once(BaseModel):
        scores: dict[str, int]

    with caplog.at_level(logging.WARNING, logger="curator_flows.backends.openai"):
        for _ in range(3):
            response_format_param("Once", Once.model_json_schema())
    records = [r for r in caplog.records if "non-strict" in r.getMessage()]
    assert len(records) == 1
    assert "Once" in records[0].getMessage() and "free-form" in records[0].getMessage()


def test_schema_name_is_what_openai_accepts():
    param = response_format_param("Answer[int] v2", Inner.model_json_schema())
    assert param["json_schema"]["name"] == "Answer_int__v2"


class Scorer(LLM):
    response_format = FreeDict

    def prompt(self, input):
        return f"score {input['item']}"

    def parse(self, input, response: FreeDict):
        return {"item": input["item"], "label": response.label, "n": len(response.scores)}


@pytest.mark.parametrize("batch", [False, True], ids=["online", "batch"])
def test_free_form_dict_field_runs_against_the_strict_simulator(sim, wd, batch):
    """Sent strict, this schema is refused (400) by OpenAI and by the simulator; sent as it is
    now, every row lands."""
    sim.configure(batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05})
    backend_params = {"base_url": sim.base_url, "api_key": "sk-test", "progress": "off"}
    if batch:
        backend_params["batch_check_interval"] = 0.05
    result = Scorer("gpt-4o-mini", batch=batch, backend_params=backend_params)(
        [{"item": "apple"}, {"item": "pear"}], working_dir=wd
    )
    assert [row["item"] for row in result.dataset] == ["apple", "pear"]
    assert result.request_stats.failed == 0
    stats = sim.stats()
    assert stats["status_counts"].get("400", 0) == 0
    assert stats["batch_items" if batch else "chat_completions"] == 2
