"""The simulator over real HTTP: chat completions, Anthropic messages, limits, faults, stats."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import http.client
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Literal

import aiohttp
import pytest
from pydantic import BaseModel, Field

from curator_flows.backends.base import parse_duration
from curator_flows.testing.simulator import Simulator, SimulatorConfig, content, run_in_subprocess
from curator_flows.testing.simulator.cli import build_parser, config_from_args
from curator_flows.testing.simulator.ratelimit import go_duration

# --------------------------------------------------------------------------- helpers


def call(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, lower-cased headers, body) for any status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def chat(sim: Simulator, prompt: str, **params: Any) -> tuple[int, dict[str, str], bytes]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **params}
    return call("POST", sim.base_url + "/chat/completions", body)


def chat_json(sim: Simulator, prompt: str, **params: Any) -> dict[str, Any]:
    status, _, data = chat(sim, prompt, **params)
    assert status == 200, data
    return json.loads(data)


ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-sim", "anthropic-version": "2023-06-01"}


def message(sim: Simulator, prompt: str, headers=None, **params: Any):
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": prompt}],
        **params,
    }
    return call("POST", sim.url + "/v1/messages", body, headers or ANTHROPIC_HEADERS)


@pytest.fixture(scope="module")
def sim():
    with Simulator(seed=0) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_counters(request):
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").reset()


# --------------------------------------------------------------------------- models


class Color(enum.StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    street: str
    city: str = Field(min_length=3, max_length=12)
    zip_code: str = Field(pattern=r"^\d{5}$")


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=120)
    score: float = Field(gt=0, lt=1)
    favorite: Color
    kind: Literal["customer", "staff"]
    nickname: str | None = None
    tags: list[str] = Field(min_length=1, max_length=3)
    address: Address
    previous: list[Address] = []
    manager: Address | None = None
    active: bool


class StrictAddress(BaseModel):
    street: str
    zip_code: str = Field(pattern=r"^\d{5}$")


class StrictPerson(BaseModel):
    """Person in what OpenAI's strict mode accepts (no string length bounds)."""

    name: str
    age: int = Field(ge=0, le=120)
    favorite: Color
    kind: Literal["customer", "staff"]
    nickname: str | None = None
    tags: list[str] = Field(min_length=1, max_length=3)
    address: StrictAddress
    manager: StrictAddress | None = None


# --------------------------------------------------------------------------- OpenAI shapes


def test_chat_completion_shape_and_headers(sim):
    status, headers, data = chat(sim, "shape prompt")
    assert status == 200
    body = json.loads(data)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] >= 1 and usage["completion_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    for unit in ("requests", "tokens"):
        assert int(headers[f"x-ratelimit-limit-{unit}"]) >= 1_000_000_000
        assert int(headers[f"x-ratelimit-remaining-{unit}"]) > 0
        assert headers[f"x-ratelimit-reset-{unit}"] == "0s"
    assert headers["content-type"].startswith("application/json")


def test_models_endpoint(sim):
    status, _, data = call("GET", sim.base_url + "/models")
    assert status == 200
    body = json.loads(data)
    assert body["object"] == "list" and any(m["id"] == "gpt-4o-mini" for m in body["data"])


def test_openai_sdk_roundtrip(sim):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)
    out = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "sdk prompt"}]
    )
    assert out.choices[0].message.content
    parsed = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "sdk structured"}],
        response_format=StrictPerson,
    )
    assert isinstance(parsed.choices[0].message.parsed, StrictPerson)
    # The SDK sends every pydantic model strict; OpenAI refuses string length bounds there.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "sdk structured"}],
            response_format=Person,
        )
    assert refused.value.status_code == 400
    assert "Invalid schema for response_format 'Person'" in refused.value.message
    assert "is not permitted." in refused.value.message


def test_content_is_deterministic(sim):
    first = chat_json(sim, "determinism prompt", temperature=0.3)
    second = chat_json(sim, "determinism prompt", temperature=0.3)
    other = chat_json(sim, "another prompt", temperature=0.3)
    other_params = chat_json(sim, "determinism prompt", temperature=0.9)
    text = first["choices"][0]["message"]["content"]
    assert text == second["choices"][0]["message"]["content"]
    assert first["usage"] == second["usage"]
    assert first["id"] != second["id"]
    assert text != other["choices"][0]["message"]["content"]
    assert text != other_params["choices"][0]["message"]["content"]
    # A separate simulator gives the same content for the same request.
    with Simulator(seed=0) as other_sim:
        again = chat_json(other_sim, "determinism prompt", temperature=0.3)
    assert again["choices"][0]["message"]["content"] == text


def test_max_tokens_truncates_with_length(sim):
    body = chat_json(sim, "a long answer please", max_tokens=3)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 3
    body = chat_json(sim, "a long answer please", max_completion_tokens=2)
    assert body["usage"]["completion_tokens"] <= 2


def test_reasoning_models_think_in_output_tokens_within_max_completion_tokens(sim):
    """What a client reads of a reasoning model: usage.completion_tokens_details."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)
    messages = [{"role": "user", "content": "a reasoned answer"}]
    answer = client.chat.completions.create(model="o4-mini", messages=messages)
    usage = answer.usage
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0 and answer.choices[0].message.content
    assert usage.completion_tokens > reasoning  # the visible answer comes on top
    efforts = {
        effort: client.chat.completions.create(
            model="o4-mini", messages=messages, reasoning_effort=effort
        ).usage.completion_tokens_details.reasoning_tokens
        for effort in ("low", "high")
    }
    assert efforts["low"] < efforts["high"]
    # max_completion_tokens bounds thinking and answer together: thinking can use all of it
    cut = client.chat.completions.create(
        model="o4-mini", messages=messages, max_completion_tokens=20
    )
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content == ""
    assert cut.usage.completion_tokens == cut.usage.completion_tokens_details.reasoning_tokens
    assert cut.usage.completion_tokens == 20
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="o4-mini", messages=messages, max_tokens=100)
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "max_tokens"
    assert "Use 'max_completion_tokens' instead." in refused.value.message


def test_n_choices(sim):
    body = chat_json(sim, "several", n=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) == 3


def test_json_schema_content_validates_with_pydantic(sim):
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "Person", "schema": Person.model_json_schema(), "strict": False},
    }
    seen_null = seen_set = False
    for i in range(40):
        body = chat_json(sim, f"person {i}", response_format=response_format)
        person = Person.model_validate_json(body["choices"][0]["message"]["content"])
        seen_null |= person.manager is None
        seen_set |= person.manager is not None
    assert seen_null and seen_set  # both branches of Optional[...] are exercised


def test_json_object_mode(sim):
    body = chat_json(sim, "json please", response_format={"type": "json_object"})
    assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)


def test_system_prompts_are_counted(sim):
    system = {"role": "system", "content": "You are terse."}
    user = {"role": "user", "content": "counted system"}
    for _ in range(2):
        status, _, _ = call(
            "POST",
            sim.base_url + "/chat/completions",
            {"model": "gpt-4o-mini", "messages": [system, user]},
        )
        assert status == 200
    status, _, _ = message(sim, "anthropic system", system="Be brief.")
    assert status == 200
    chat_json(sim, "no system here")
    assert sim.stats()["by_system"] == {"You are terse.": 2, "Be brief.": 1}


def test_forced_tool_call(sim):
    tools = [
        {
            "type": "function",
            "function": {"name": "save_person", "parameters": Person.model_json_schema()},
        }
    ]
    body = chat_json(
        sim,
        "tool please",
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "save_person"}},
    )
    message = body["choices"][0]["message"]
    (tool_call,) = message["tool_calls"]
    assert tool_call["function"]["name"] == "save_person"
    Person.model_validate_json(tool_call["function"]["arguments"])


# --------------------------------------------------------------------------- errors


def test_error_shapes(sim):
    status, _, data = call("POST", sim.base_url + "/chat/completions", raw=b"{not json")
    assert status == 400
    error = json.loads(data)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"

    status, _, data = call("POST", sim.base_url + "/chat/completions", {"model": "m"})
    assert status == 400 and json.loads(data)["error"]["param"] == "messages"

    status, _, data = call("GET", sim.base_url + "/nope")
    assert status == 404
    assert set(json.loads(data)["error"]) == {"message", "type", "param", "code"}

    status, _, data = chat(
        sim,
        "bad schema",
        response_format={"type": "json_schema", "json_schema": {"schema": {}}},
    )
    assert status == 400


def test_require_api_key():
    with Simulator(require_api_key="sk-secret") as sim:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        url = sim.base_url + "/chat/completions"
        status, _, data = call("POST", url, body)
        assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"
        status, _, _ = call("POST", url, body, {"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, _ = call("POST", url, body, {"Authorization": "Bearer sk-secret"})
        assert status == 200
        status, _, _ = message(sim, "hi")
        assert status == 401
        status, _, _ = message(sim, "hi", {**ANTHROPIC_HEADERS, "x-api-key": "sk-secret"})
        assert status == 200


# --------------------------------------------------------------------------- rate limits


def test_go_duration_format():
    assert go_duration(0) == "0s"
    assert go_duration(0.12) == "120ms"
    assert go_duration(1) == "1s"
    assert go_duration(1.5) == "1.5s"
    assert go_duration(360) == "6m0s"
    assert go_duration(3723) == "1h2m3s"


def test_rpm_limit_429_and_headers():
    # rpm=60 -> 1 request/s, bucket of 2 (burst_seconds=2).
    with Simulator(rpm=60) as sim:
        statuses = []
        for i in range(3):
            status, headers, data = chat(sim, f"rpm {i}")
            statuses.append(status)
        assert statuses == [200, 200, 429]
        assert headers["x-ratelimit-limit-requests"] == "60"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert int(headers["retry-after"]) >= 1
        assert 1 <= int(headers["retry-after-ms"]) <= 1000
        error = json.loads(data)["error"]
        assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
        assert error["message"].startswith("Rate limit reached")
        stats = sim.stats()
        assert stats["status_counts"] == {"200": 2, "429": 1}
        assert stats["rate_limited"] == 1
        # A rate-limited request is not admitted: by_prompt only counts admitted requests.
        assert "rpm 2" not in stats["by_prompt"]


def test_rpm_bucket_refills():
    with Simulator(rpm=1200) as sim:  # 20/s, bucket 40
        results = [chat(sim, f"refill {i}")[0] for i in range(45)]
        assert results.count(429) >= 1
        time.sleep(0.25)  # ~5 requests refilled
        assert chat(sim, "after refill")[0] == 200


def test_tpm_limit():
    with Simulator(tpm=6000) as sim:  # 100 tokens/s, bucket 200
        status, headers, _ = chat(sim, "small", max_tokens=150)
        assert status == 200
        assert headers["x-ratelimit-limit-tokens"] == "6000"
        assert int(headers["x-ratelimit-remaining-tokens"]) < 200
        status, headers, data = chat(sim, "small again", max_tokens=150)
        assert status == 429
        assert json.loads(data)["error"]["type"] == "tokens"
        # Larger than the per-minute limit: never admitted.
        status, _, data = chat(sim, "huge", max_tokens=10_000)
        assert status == 429 and "Request too large" in json.loads(data)["error"]["message"]


def test_configure_changes_limits_at_runtime():
    with Simulator() as sim:
        assert chat(sim, "x")[0] == 200
        sim.configure(rpm=60)
        assert [chat(sim, f"c {i}")[0] for i in range(3)] == [200, 200, 429]
        sim.configure(rpm=None)
        assert chat(sim, "free again")[0] == 200


def test_latency():
    with Simulator(latency=0.2, latency_jitter=0.05) as sim:
        start = time.monotonic()
        assert chat(sim, "slow")[0] == 200
        elapsed = time.monotonic() - start
        assert 0.2 <= elapsed < 1.5


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "status"), [("500", 500), ("503", 503), ("529", 529), ("429", 429)]
)
def test_error_fault_markers(sim, kind, status):
    prompt = f"error fault [[sim:{kind}x1]]"
    got, headers, data = chat(sim, prompt)
    assert got == status
    assert set(json.loads(data)["error"]) == {"message", "type", "param", "code"}
    if kind == "429":
        assert headers["retry-after"] == "1" and headers["retry-after-ms"] == "1000"
    assert chat(sim, prompt)[0] == 200
    assert sim.stats()["faults"] == {kind: 1}


def test_marker_counts_and_sequences(sim):
    assert [chat(sim, "twice [[sim:500x2]]")[0] for _ in range(3)] == [500, 500, 200]
    assert [chat(sim, "always [[sim:503]]")[0] for _ in range(3)] == [503, 503, 503]
    seq = "seq [[sim:500x1]] [[sim:429x1]]"
    assert [chat(sim, seq)[0] for _ in range(3)] == [500, 429, 200]
    stats = sim.stats()
    assert stats["by_prompt"]["twice [[sim:500x2]]"] == 3
    assert stats["faults"] == {"500": 3, "503": 3, "429": 1}


def test_malformed_length_schema_invalid_markers(sim):
    status, _, data = chat(sim, "bad body [[sim:malformedx1]]")
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(data)

    body = chat_json(sim, "cut short [[sim:length]]")
    assert body["choices"][0]["finish_reason"] == "length"
    full = chat_json(sim, "cut short")
    assert len(body["choices"][0]["message"]["content"]) < len(
        full["choices"][0]["message"]["content"]
    )

    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "Person", "schema": Person.model_json_schema()},
    }
    bad = chat_json(sim, "invalid [[sim:schema_invalidx1]]", response_format=response_format)
    assert bad["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(ValueError):
        Person.model_validate_json(bad["choices"][0]["message"]["content"])
    good = chat_json(sim, "invalid [[sim:schema_invalidx1]]", response_format=response_format)
    Person.model_validate_json(good["choices"][0]["message"]["content"])
    assert sim.stats()["faults"] == {"malformed": 1, "length": 1, "schema_invalid": 1}


def test_drop_fault_disconnects(sim):
    conn = http.client.HTTPConnection(sim.host, sim.port, timeout=5)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "[[sim:dropx1]]"}]})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.getresponse()
    conn.close()
    assert chat(sim, "[[sim:dropx1]]")[0] == 200
    stats = sim.stats()
    assert stats["faults"] == {"drop": 1}
    assert stats["status_counts"] == {"200": 1}


def test_hang_fault_times_out_client():
    with Simulator(hang_seconds=2.0) as sim:

        async def go() -> None:
            body = {"model": "m", "messages": [{"role": "user", "content": "[[sim:hangx1]]"}]}
            timeout = aiohttp.ClientTimeout(total=0.3)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                with pytest.raises(asyncio.TimeoutError):
                    async with session.post(sim.base_url + "/chat/completions", json=body) as r:
                        await r.read()
                async with session.post(sim.base_url + "/chat/completions", json=body) as r:
                    assert r.status == 200

        asyncio.run(go())
        assert sim.stats()["faults"] == {"hang": 1}


@pytest.mark.parametrize("kind", ["500", "503", "429", "drop", "malformed", "length"])
def test_fault_rates_of_one(kind):
    with Simulator(faults={kind: 1.0}) as sim:
        try:
            status, _, data = chat(sim, "rate form")
        except (http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError):
            status, data = None, b""
        expected = {"500": 500, "503": 503, "429": 429, "drop": None}.get(kind, 200)
        assert status == expected
        if kind == "length":
            assert json.loads(data)["choices"][0]["finish_reason"] == "length"
        assert sim.stats()["faults"] == {kind: 1}


def test_fault_rates_are_deterministic_and_independent_per_attempt():
    def run(seed: int) -> list[int]:
        with Simulator(faults={"500": 0.3}, seed=seed) as sim:
            return [chat(sim, f"rate prompt {i % 40}")[0] for i in range(120)]

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    failures = first.count(500)
    assert 15 <= failures <= 60
    # Retries of the same prompt get independent draws: some prompt fails then succeeds.
    per_prompt: dict[int, list[int]] = {}
    for i, status in enumerate(first):
        per_prompt.setdefault(i % 40, []).append(status)
    assert any(500 in s and 200 in s for s in per_prompt.values())


# --------------------------------------------------------------------------- stats & control


def test_stats_and_control_endpoints(sim):
    chat(sim, "stats a")
    chat(sim, "stats a")
    chat(sim, "stats b [[sim:500x1]]")
    chat(
        sim,
        "ignored",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "part1 "}, {"type": "text", "text": "part2"}],
            },
        ],
    )
    stats = sim.stats()
    assert stats["requests"] == 4 and stats["chat_completions"] == 4
    assert stats["by_prompt"] == {"stats a": 2, "stats b [[sim:500x1]]": 1, "part1 part2": 1}
    assert stats["status_counts"] == {"200": 3, "500": 1}
    assert stats["faults"] == {"500": 1}

    status, _, data = call("GET", sim.url + "/_sim/stats")
    assert status == 200 and json.loads(data) == stats
    status, _, data = call("POST", sim.url + "/_sim/config", {"latency": 0.0, "rpm": None})
    assert status == 200 and json.loads(data)["latency"] == 0.0
    status, _, _ = call("POST", sim.url + "/_sim/config", {"no_such_field": 1})
    assert status == 400
    status, _, _ = call("POST", sim.url + "/_sim/reset", {})
    assert status == 200
    assert sim.stats()["requests"] == 0 and sim.stats()["by_prompt"] == {}
    # Attempt counters were reset too: the marker fires again.
    assert chat(sim, "stats b [[sim:500x1]]")[0] == 500


def test_concurrent_requests_all_served(sim):
    async def go() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                body = {"model": "m", "messages": [{"role": "user", "content": f"conc {i}"}]}
                async with session.post(sim.base_url + "/chat/completions", json=body) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(300)))

    assert set(asyncio.run(go())) == {200}
    stats = sim.stats()
    assert stats["chat_completions"] == 300
    assert all(stats["by_prompt"][f"conc {i}"] == 1 for i in range(300))


def test_config_validation():
    with pytest.raises(ValueError):
        SimulatorConfig(faults={"explode": 0.5})
    with pytest.raises(ValueError):
        SimulatorConfig(rpm=0)
    with pytest.raises(ValueError):
        Simulator(no_such_option=1)


def test_run_in_subprocess():
    proc, base_url = run_in_subprocess(port=0, rpm=6000)
    try:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        body = {"model": "m", "messages": [{"role": "user", "content": "child"}]}
        status, headers, _ = call("POST", base_url + "/chat/completions", body)
        assert status == 200 and headers["x-ratelimit-limit-requests"] == "6000"
        status, _, data = call("GET", base_url[: -len("/v1")] + "/_sim/stats")
        assert json.loads(data)["by_prompt"] == {"child": 1}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_message_shape_and_headers(sim):
    status, headers, data = message(
        sim, "hello claude", system=[{"type": "text", "text": "Be brief."}]
    )
    assert status == 200
    body = json.loads(data)
    assert body["id"].startswith("msg_")
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["model"] == "claude-sonnet-4-5"
    (block,) = body["content"]
    assert block["type"] == "text" and block["text"]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"]["input_tokens"] >= 1 and body["usage"]["output_tokens"] >= 1
    for name in ("requests", "input-tokens", "output-tokens", "tokens"):
        assert int(headers[f"anthropic-ratelimit-{name}-limit"]) >= 1_000_000_000
        assert headers[f"anthropic-ratelimit-{name}-reset"].endswith("Z")
    assert headers["request-id"]
    assert sim.stats()["messages"] == 1
    assert sim.stats()["by_prompt"] == {"hello claude": 1}


def test_anthropic_validation_errors(sim):
    status, _, data = message(sim, "no version", {"x-api-key": "k"})
    assert status == 400
    body = json.loads(data)
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    status, _, data = call(
        "POST",
        sim.url + "/v1/messages",
        {"model": "claude", "messages": [{"role": "user", "content": "x"}]},
        ANTHROPIC_HEADERS,
    )
    assert status == 400 and "max_tokens" in json.loads(data)["error"]["message"]


def test_anthropic_max_tokens_and_structured_output(sim):
    body = json.loads(message(sim, "long", max_tokens=2)[2])
    assert body["stop_reason"] == "max_tokens" and body["usage"]["output_tokens"] <= 2
    schema = Person.model_json_schema()
    for i in range(10):
        status, _, data = message(
            sim, f"structured {i}", output_format={"type": "json_schema", "schema": schema}
        )
        assert status == 200
        Person.model_validate_json(json.loads(data)["content"][0]["text"])
    status, _, data = message(
        sim,
        "tool",
        tools=[{"name": "person", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "person"},
    )
    body = json.loads(data)
    assert body["stop_reason"] == "tool_use"
    Person.model_validate(body["content"][0]["input"])


def test_anthropic_thinking_spends_max_tokens_and_its_budget_stays_below_it(sim):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    status, _, data = message(sim, "think first", max_tokens=1024, thinking=thinking)
    assert status == 400
    error = json.loads(data)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(
        "`max_tokens` must be greater than `thinking.budget_tokens`."
    )
    status, _, data = message(sim, "think first", max_tokens=2048, thinking=thinking)
    assert status == 200, data
    body = json.loads(data)
    (thought, answer) = body["content"]
    assert thought["type"] == "thinking" and thought["thinking"] and thought["signature"]
    assert answer["type"] == "text"
    # thinking tokens are output tokens: they come on top of the answer's
    status, _, plain = message(sim, "think first", max_tokens=2048)
    assert body["usage"]["output_tokens"] > json.loads(plain)["usage"]["output_tokens"]
    status, _, data = message(sim, "think first", max_tokens=2048, thinking={"type": "adaptive"})
    assert status == 200 and json.loads(data)["content"][0]["type"] == "thinking"


def test_anthropic_faults(sim):
    status, _, data = message(sim, "busy [[sim:529x1]]")
    assert status == 529 and json.loads(data)["error"]["type"] == "overloaded_error"
    status, _, data = message(sim, "boom [[sim:500x1]]")
    assert status == 500 and json.loads(data)["error"]["type"] == "api_error"
    status, headers, data = message(sim, "slow down [[sim:429x1]]")
    assert status == 429 and json.loads(data)["error"]["type"] == "rate_limit_error"
    assert headers["retry-after"] == "1"
    body = json.loads(message(sim, "short [[sim:lengthx1]]")[2])
    assert body["stop_reason"] == "max_tokens"
    assert message(sim, "busy [[sim:529x1]]")[0] == 200
    assert sim.stats()["faults"] == {"529": 1, "500": 1, "429": 1, "length": 1}


def test_anthropic_rate_limits():
    with Simulator(rpm=60, output_tpm=600) as sim:  # output bucket: 20 tokens
        status, headers, _ = message(sim, "a", max_tokens=10)
        assert status == 200
        assert headers["anthropic-ratelimit-requests-limit"] == "60"
        assert headers["anthropic-ratelimit-output-tokens-limit"] == "600"
        status, headers, data = message(sim, "b", max_tokens=20)
        assert status == 429
        assert json.loads(data)["error"]["type"] == "rate_limit_error"
        assert int(headers["retry-after"]) >= 1


# --------------------------------------------------------------------------- streaming


def test_openai_streaming_matches_non_streamed(sim):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)
    messages = [{"role": "user", "content": "stream me"}]
    full = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_anthropic_streaming_events(sim):
    status, headers, data = message(sim, "stream claude", stream=True)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data: ") :])
        for line in data.decode().splitlines()
        if line.startswith("data: ")
    ]
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    full = json.loads(message(sim, "stream claude")[2])
    assert text == full["content"][0]["text"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


# --------------------------------------------------------------------------- units


class Leaf(BaseModel):
    kind: Literal["leaf"]
    value: int = Field(multiple_of=5, ge=-50, le=50)


class Branch(BaseModel):
    kind: Literal["branch"]
    children: list[Branch | Leaf] = Field(max_length=3)


class Everything(BaseModel):
    person: Person
    tree: Branch | Leaf = Field(discriminator="kind")
    price: decimal.Decimal
    when: datetime.datetime
    day: datetime.date
    ident: uuid.UUID
    counts: dict[str, int]
    pair: tuple[int, str]
    unique: set[Color]
    code: str = Field(pattern=r"^[A-Z]{3}-\d{2,4}$")
    ratio: float = Field(ge=0, le=1, multiple_of=0.25)
    maybe_list: list[Address | None] | None = None
    nothing: None = None


def test_schema_generator_satisfies_pydantic_models():
    schema = Everything.model_json_schema()
    for i in range(300):
        value = content.generate_for_schema(schema, content.request_digest({"i": i}))
        Everything.model_validate(value)
    for i in range(20):
        text = content.violate_schema(schema, content.request_digest(i))
        with pytest.raises(ValueError):
            Everything.model_validate_json(text)


def test_cli_config_from_args():
    args = build_parser().parse_args(
        [
            "--port",
            "0",
            "--rpm",
            "100",
            "--fault",
            "500=0.1",
            "--fault",
            "drop",
            "--batch-timings",
            "validating=1,in_progress=2",
            "--config-json",
            '{"latency": 0.5}',
        ]
    )
    config = config_from_args(args)
    assert config.rpm == 100 and config.latency == 0.5 and config.port == 0
    assert config.faults == {"500": 0.1, "drop": 1.0}
    assert config.timings["validating"] == 1.0 and config.timings["in_progress"] == 2.0


def test_models_endpoints_refuse_a_wrong_key_in_each_providers_shape():
    import httpx

    from curator_flows.testing.simulator import Simulator

    with Simulator(require_api_key="sk-right") as sim:
        base = sim.base_url
        ok = httpx.get(f"{base}/models", headers={"Authorization": "Bearer sk-right"})
        bad = httpx.get(f"{base}/models", headers={"Authorization": "Bearer sk-wrong"})
        one = httpx.get(f"{base}/models/gpt-4o-mini", headers={"Authorization": "Bearer nope"})
        anth = httpx.get(
            f"{base}/models", headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"}
        )
    assert ok.status_code == 200
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert one.status_code == 401
    assert anth.status_code == 401 and anth.json()["error"]["type"] == "authentication_error"


# --------------------------------------------------------------------------- the account

OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
ANTHROPIC_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    "to upgrade or purchase credits."
)


def test_openai_out_of_credit_answers_429_insufficient_quota_until_credit_is_added():
    with Simulator(credit_requests=2, rpm=6000) as sim:
        assert [chat(sim, f"paid {i}")[0] for i in range(2)] == [200, 200]
        status, headers, data = chat(sim, "unpaid")
        assert status == 429 and json.loads(data) == OPENAI_QUOTA
        assert "retry-after" not in headers and headers["x-request-id"].startswith("req_")
        assert headers["x-ratelimit-limit-requests"] == "6000"  # the per-minute headers
        assert chat(sim, "unpaid again")[0] == 429
        stats = sim.stats()
        assert stats["refused"] == {"insufficient_quota": 2}
        assert stats["rate_limited"] == 0 and "unpaid" not in stats["by_prompt"]
        sim.configure(credit_requests=None)  # credit bought: served again
        assert chat(sim, "unpaid")[0] == 200


def test_anthropic_out_of_credit_answers_400_credit_balance_too_low():
    with Simulator(credit_requests=1) as sim:
        assert message(sim, "paid")[0] == 200
        status, headers, data = message(sim, "unpaid")
        body = json.loads(data)
        assert status == 400
        assert body["type"] == "error"
        assert body["error"] == {"type": "invalid_request_error", "message": ANTHROPIC_CREDIT}
        assert body["request_id"] == headers["request-id"] and body["request_id"].startswith("req_")
        assert sim.stats()["refused"] == {"credit_balance": 1}
        sim.reset()  # a reset refills the account too
        assert message(sim, "unpaid")[0] == 200


def test_openai_requests_per_day_refill_over_24_hours_and_name_the_limit():
    with Simulator(rpd=2) as sim:
        assert [chat(sim, f"day {i}")[0] for i in range(2)] == [200, 200]
        status, headers, data = chat(sim, "day 2")
        error = json.loads(data)["error"]
        assert status == 429
        assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
        match = re.fullmatch(
            r"Rate limit reached for gpt-4o-mini in organization org-simulator on requests per "
            r"day \(RPD\): Limit 2, Used 2, Requested 1\. Please try again in (\S+)\. Visit "
            r"https://platform\.openai\.com/account/rate-limits to learn more\.",
            error["message"],
        )
        assert match, error["message"]
        wait = parse_duration(match.group(1))
        assert 43_000 < wait <= 43_200  # one request of 2 per day refills in 12 hours
        # the per-day limit is only in the message: headers are the per-minute ones
        assert "retry-after" not in headers
        assert headers["x-ratelimit-limit-requests"] == "1000000000"
        assert sim.stats()["refused"] == {"rpd": 1} and sim.stats()["rate_limited"] == 0


def test_openai_tokens_per_day_count_prompt_and_max_tokens():
    with Simulator(tpd=300) as sim:
        assert chat(sim, "tokens a", max_tokens=100)[0] == 200
        assert chat(sim, "tokens b", max_tokens=100)[0] == 200
        status, _, data = chat(sim, "tokens c", max_tokens=100)
        error = json.loads(data)["error"]
        assert status == 429 and error["type"] == "tokens"
        assert "on tokens per day (TPD): Limit 300, Used 2" in error["message"]
        assert "Please try again in" in error["message"]
        status, _, data = chat(sim, "too big", max_tokens=1000)
        assert status == 429 and "Request too large" in json.loads(data)["error"]["message"]


def _upload_batch_file(sim: Simulator, prompts: list[str]) -> str:
    lines = b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": p}]},
            }
        ).encode()
        + b"\n"
        for i, p in enumerate(prompts)
    )
    boundary = "acct-boundary"
    raw = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + lines
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, data = call(
        "POST",
        sim.base_url + "/files",
        raw=raw,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200, data
    return json.loads(data)["id"]


def test_batch_creates_spend_credit_per_item_and_are_refused_out_of_credit():
    with Simulator(credit_requests=3) as sim:
        body = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
        file_id = _upload_batch_file(sim, ["b1", "b2"])
        status, _, _ = call("POST", sim.base_url + "/batches", {**body, "input_file_id": file_id})
        assert status == 200  # 2 items: 1 request of credit left
        assert chat(sim, "last paid")[0] == 200
        file_id = _upload_batch_file(sim, ["b3"])  # uploads are free
        create = {**body, "input_file_id": file_id}
        status, _, data = call("POST", sim.base_url + "/batches", create)
        assert status == 429 and json.loads(data) == OPENAI_QUOTA
        requests = {
            "requests": [
                {
                    "custom_id": "a1",
                    "params": {
                        "model": "claude-haiku-4-5",
                        "max_tokens": 16,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                }
            ]
        }
        status, headers, data = call(
            "POST", sim.url + "/v1/messages/batches", requests, ANTHROPIC_HEADERS
        )
        assert status == 400 and json.loads(data)["error"]["message"] == ANTHROPIC_CREDIT
        assert sim.stats()["batches_created"] == 1


def test_account_config_validation_and_cli():
    with pytest.raises(ValueError, match="credit_requests"):
        SimulatorConfig(credit_requests=-1)
    with pytest.raises(ValueError, match="rpd"):
        SimulatorConfig(rpd=0)
    args = build_parser().parse_args(["--rpd", "200", "--tpd", "9000", "--credit-requests", "5"])
    config = config_from_args(args)
    assert (config.rpd, config.tpd, config.credit_requests) == (200, 9000, 5)
