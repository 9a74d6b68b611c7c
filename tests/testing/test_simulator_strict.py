"""The simulator refuses what OpenAI's strict structured outputs refuse, with OpenAI's 400 answer
(online and as batch error lines), and answers requests with tools by a tool call."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from pydantic import BaseModel, Field

from curator_flows.testing.simulator import Simulator
from curator_flows.testing.simulator.strict import strict_schema_error

ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-sim", "anthropic-version": "2023-06-01"}


def call(method: str, url: str, body: Any = None, headers=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and raw is None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(sim: Simulator, prompt: str = "strict please", **params: Any):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **params}
    return call("POST", sim.base_url + "/chat/completions", body)


def strict_format(name: str, schema: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": strict},
    }


def closed(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


@pytest.fixture(scope="module")
def sim():
    with Simulator(batch_timings={"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05}) as s:
        yield s


class Scores(BaseModel):
    label: str
    scores: dict[str, float]


# --------------------------------------------------------------------------- online refusals


def test_free_form_dict_field_is_refused_with_openais_answer(sim):
    schema = closed(
        {
            "label": {"type": "string"},
            "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        }
    )
    before = sim.stats()["by_prompt"].get("strict please", 0)
    status, body = chat(sim, response_format=strict_format("Scores", schema))
    assert status == 400
    assert body == {
        "error": {
            "message": "Invalid schema for response_format 'Scores': In context=('properties', "
            "'scores'), 'additionalProperties' is required to be supplied and to be false.",
            "type": "invalid_request_error",
            "param": "response_format",
            "code": None,
        }
    }
    # refused before generation: nothing was admitted for that prompt
    assert sim.stats()["by_prompt"].get("strict please", 0) == before


def test_pydantic_schema_as_is_is_refused_and_accepted_non_strict(sim):
    schema = Scores.model_json_schema()
    status, body = chat(sim, response_format=strict_format("Scores", schema))
    assert status == 400
    assert body["error"]["message"] == (
        "Invalid schema for response_format 'Scores': In context=(), 'additionalProperties' is "
        "required to be supplied and to be false."
    )
    status, body = chat(sim, response_format=strict_format("Scores", schema, strict=False))
    assert status == 200
    Scores.model_validate_json(body["choices"][0]["message"]["content"])


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": []}
            | {"additionalProperties": False},
            "In context=(), 'required' is required to be supplied and to be an array including "
            "every key in properties. Missing 'a'.",
        ),
        (
            closed({"a": {"type": "string", "minLength": 2}}),
            "In context=('properties', 'a'), 'minLength' is not permitted.",
        ),
        (
            closed({"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}),
            "In context=('properties', 'tags'), 'uniqueItems' is not permitted.",
        ),
        (
            closed(
                {"inner": {"$ref": "#/$defs/Inner", "description": "the inner part"}},
                **{"$defs": {"Inner": closed({"x": {"type": "integer"}})}},
            ),
            "In context=('properties', 'inner'), $ref cannot have keywords {'description'}.",
        ),
        (
            closed({"value": {"description": "anything"}}),
            "In context=('properties', 'value'), schema must have a 'type' key.",
        ),
        (
            closed({"rows": {"type": "array", "items": {"type": "object"}}}),
            "In context=('properties', 'rows', 'items'), 'additionalProperties' is required to "
            "be supplied and to be false.",
        ),
        (
            {"type": "array", "items": {"type": "string"}},
            "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'.",
        ),
    ],
)
def test_each_strict_rule_is_refused(sim, schema, message):
    status, body = chat(sim, response_format=strict_format("Thing", schema))
    assert status == 400, body
    assert body["error"]["message"] == f"Invalid schema for response_format 'Thing': {message}"
    assert body["error"]["param"] == "response_format"


def test_a_schema_that_follows_the_rules_is_accepted(sim):
    schema = closed(
        {
            "title": {"type": "string", "pattern": "^[A-Z]"},
            "count": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "inner": {"$ref": "#/$defs/Inner"},
        },
        **{"$defs": {"Inner": closed({"x": {"type": "integer"}})}},
    )
    assert strict_schema_error(schema) is None
    status, body = chat(sim, response_format=strict_format("Thing", schema))
    assert status == 200, body
    document = json.loads(body["choices"][0]["message"]["content"])
    assert set(document) == {"title", "count", "tags", "note", "inner"}


def test_strict_function_with_an_open_object_is_refused(sim):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "strict": True,
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    status, body = chat(sim, tools=tools)
    assert status == 400
    assert body["error"] == {
        "message": "Invalid schema for function 'lookup': In context=(), 'additionalProperties' "
        "is required to be supplied and to be false.",
        "type": "invalid_request_error",
        "param": "tools[0].function.parameters",
        "code": "invalid_function_parameters",
    }


# --------------------------------------------------------------------------- batch refusals


def _upload(sim: Simulator, data: bytes) -> str:
    boundary = "----strict-test"
    parts = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    parts += data + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, body = call("POST", sim.base_url + "/files", raw=parts, headers=headers)
    assert status == 200, body
    return body["id"]


def test_batch_line_with_a_refused_strict_schema_gets_openais_400(sim):
    bad = strict_format("Scores", Scores.model_json_schema())
    good = strict_format("Scores", Scores.model_json_schema(), strict=False)
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"batch strict {i}"}],
                "response_format": fmt,
            },
        }
        for i, fmt in enumerate([bad, good])
    ]
    file_id = _upload(sim, b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    status, batch = call(
        "POST",
        sim.base_url + "/batches",
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert status == 200, batch
    deadline = time.monotonic() + 10
    while batch["status"] != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
        batch = call("GET", f"{sim.base_url}/batches/{batch['id']}")[1]
    assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    status, raw = _content(sim, batch["error_file_id"])
    (error_line,) = [json.loads(line) for line in raw.splitlines()]
    assert error_line["custom_id"] == "req-0"
    assert error_line["response"]["status_code"] == 400
    assert error_line["response"]["body"]["error"]["message"].startswith(
        "Invalid schema for response_format 'Scores': In context=()"
    )
    status, raw = _content(sim, batch["output_file_id"])
    (ok_line,) = [json.loads(line) for line in raw.splitlines()]
    assert ok_line["custom_id"] == "req-1"
    Scores.model_validate_json(ok_line["response"]["body"]["choices"][0]["message"]["content"])


def _content(sim: Simulator, file_id: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"{sim.base_url}/files/{file_id}/content", timeout=10) as resp:
        return resp.status, resp.read()


# --------------------------------------------------------------------------- tool calls


class Weather(BaseModel):
    location: str
    units: str = Field(pattern="^(celsius|fahrenheit)$")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": Weather.model_json_schema(),
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_local_time",
        "strict": True,
        "parameters": closed({"location": {"type": "string"}}),
    },
}


def test_a_request_with_tools_is_answered_with_a_tool_call(sim):
    names = set()
    for i in range(12):
        status, body = chat(sim, f"what is the weather {i}", tools=[WEATHER_TOOL, TIME_TOOL])
        assert status == 200, body
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        (call_,) = choice["message"]["tool_calls"]
        names.add(call_["function"]["name"])
        arguments = json.loads(call_["function"]["arguments"])
        if call_["function"]["name"] == "get_weather":
            Weather.model_validate(arguments)
        else:
            assert set(arguments) == {"location"}
    assert names == {"get_weather", "get_local_time"}  # "auto" picks among the tools


def test_tool_choice_none_answers_with_text(sim):
    status, body = chat(sim, "no tools now", tools=[WEATHER_TOOL], tool_choice="none")
    assert status == 200
    message = body["choices"][0]["message"]
    assert message["content"] and "tool_calls" not in message


def test_anthropic_tools_and_thinking(sim):
    tool = {"name": "get_weather", "input_schema": Weather.model_json_schema()}
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "weather in Paris"}],
        "tools": [tool],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    status, message = call("POST", sim.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 200, message
    kinds = [block["type"] for block in message["content"]]
    assert kinds == ["thinking", "tool_use"]
    assert message["content"][0]["thinking"]
    assert message["stop_reason"] == "tool_use"
    Weather.model_validate(message["content"][1]["input"])
    body["tool_choice"] = {"type": "none"}
    status, message = call("POST", sim.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert [block["type"] for block in message["content"]] == ["thinking", "text"]
