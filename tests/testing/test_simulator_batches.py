"""The simulator's batch APIs over real HTTP: OpenAI files + batches, Anthropic message batches."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from pydantic import BaseModel

from curator_flows.testing.simulator import Simulator

FAST = {"validating": 0.1, "in_progress": 0.3, "finalizing": 0.1, "cancelling": 0.1}
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-sim", "anthropic-version": "2023-06-01"}


def call(method: str, url: str, body: Any = None, headers=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and raw is None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ok(method: str, url: str, body: Any = None, headers=None) -> Any:
    status, data = call(method, url, body, headers)
    assert status == 200, data
    return json.loads(data)


def upload(sim: Simulator, data: bytes, purpose: str | None = "batch") -> tuple[int, Any]:
    boundary = "----simulator-test-boundary"
    parts = b""
    if purpose is not None:
        parts += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        ).encode()
    parts += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="input.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
    ).encode()
    parts += data + f"\r\n--{boundary}--\r\n".encode()
    status, body = call(
        "POST",
        sim.base_url + "/files",
        raw=parts,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    return status, json.loads(body)


def chat_body(prompt: str) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 200,
    }


def batch_input(prompts: list[str]) -> bytes:
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat_body(prompt),
        }
        for i, prompt in enumerate(prompts)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def create_batch(sim: Simulator, prompts: list[str], metadata=None) -> dict[str, Any]:
    status, file_obj = upload(sim, batch_input(prompts))
    assert status == 200, file_obj
    return ok(
        "POST",
        sim.base_url + "/batches",
        {
            "input_file_id": file_obj["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": metadata,
        },
    )


def wait_batch(sim: Simulator, batch_id: str, until: set[str], timeout: float = 5.0):
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = ok("GET", f"{sim.base_url}/batches/{batch_id}")
        if not seen or seen[-1] != batch["status"]:
            seen.append(batch["status"])
        if batch["status"] in until:
            return batch, seen
        time.sleep(0.02)
    raise AssertionError(f"batch stuck: {seen}")


def file_lines(sim: Simulator, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    status, data = call("GET", f"{sim.base_url}/files/{file_id}/content")
    assert status == 200
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture
def sim():
    with Simulator(batch_timings=FAST) as server:
        yield server


# --------------------------------------------------------------------------- files


def test_file_lifecycle(sim):
    status, file_obj = upload(sim, b'{"a": 1}\n')
    assert status == 200
    assert file_obj["id"].startswith("file-") and file_obj["object"] == "file"
    assert file_obj["bytes"] == 9 and file_obj["purpose"] == "batch"
    assert file_obj["filename"] == "input.jsonl" and isinstance(file_obj["created_at"], int)
    assert ok("GET", f"{sim.base_url}/files/{file_obj['id']}") == file_obj
    status, data = call("GET", f"{sim.base_url}/files/{file_obj['id']}/content")
    assert status == 200 and data == b'{"a": 1}\n'
    deleted = ok("DELETE", f"{sim.base_url}/files/{file_obj['id']}")
    assert deleted == {"id": file_obj["id"], "object": "file", "deleted": True}
    assert call("GET", f"{sim.base_url}/files/{file_obj['id']}")[0] == 404
    assert upload(sim, b"x", purpose=None)[0] == 400


def test_file_size_limit(sim):
    sim.configure(max_file_bytes=100)
    status, body = upload(sim, b"x" * 101)
    assert status == 413 and "too large" in body["error"]["message"]
    assert upload(sim, b"x" * 100)[0] == 200


# --------------------------------------------------------------------------- OpenAI batches


def test_batch_progresses_and_outputs_shuffled_lines(sim):
    prompts = [f"batch prompt {i}" for i in range(30)]
    prompts[3] = "batch prompt 3 [[sim:500]]"
    prompts[7] = "batch prompt 7 [[sim:schema_invalid]]"
    meta = {"curator_run_id": "run-1", "curator_shard": "00002"}
    batch = create_batch(sim, prompts, meta)
    assert batch["id"].startswith("batch_") and batch["object"] == "batch"
    assert batch["status"] == "validating"
    assert batch["endpoint"] == "/v1/chat/completions" and batch["completion_window"] == "24h"
    assert batch["metadata"] == meta and batch["errors"] is None
    for key in ("output_file_id", "error_file_id", "completed_at", "failed_at", "expired_at"):
        assert batch[key] is None
    assert set(batch["request_counts"]) == {"total", "completed", "failed"}

    final, seen = wait_batch(sim, batch["id"], {"completed"})
    assert seen[0] == "validating" and seen[-1] == "completed"
    assert "in_progress" in seen
    assert [
        s for s in ("validating", "in_progress", "finalizing", "completed") if s in seen
    ] == seen
    assert final["request_counts"] == {"total": 30, "completed": 29, "failed": 1}
    assert final["in_progress_at"] and final["finalizing_at"] and final["completed_at"]

    outputs = file_lines(sim, final["output_file_id"])
    errors = file_lines(sim, final["error_file_id"])
    assert len(outputs) == 29 and len(errors) == 1
    ids = [line["custom_id"] for line in outputs]
    assert ids != sorted(ids, key=lambda c: int(c.split("-")[1]))  # shuffled
    by_id = {line["custom_id"]: line for line in outputs}
    assert set(by_id) == {f"req-{i}" for i in range(30)} - {"req-3"}
    line = by_id["req-0"]
    assert line["id"].startswith("batch_req_") and line["error"] is None
    assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
    completion = line["response"]["body"]
    assert completion["object"] == "chat.completion"
    # Batch content equals the online content for the same request body.
    status, data = call("POST", sim.base_url + "/chat/completions", chat_body("batch prompt 0"))
    online = json.loads(data)
    assert completion["choices"][0]["message"] == online["choices"][0]["message"]

    (error,) = errors
    assert error["custom_id"] == "req-3"
    assert error["response"]["status_code"] == 500
    assert error["response"]["body"]["error"]["type"] == "server_error"

    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["batches_by_run_shard"] == {"run-1/00002": 1}
    assert stats["batch_items_by_prompt"]["batch prompt 0"] == 1
    assert stats["by_prompt"]["batch prompt 0"] == 2  # the batch item + the online request
    assert stats["faults"] == {"500": 1, "schema_invalid": 1}


def test_same_input_gives_same_shuffle(sim):
    prompts = [f"shuffle {i}" for i in range(12)]
    orders = []
    for _ in range(2):
        batch = create_batch(sim, prompts)
        final, _ = wait_batch(sim, batch["id"], {"completed"})
        orders.append([line["custom_id"] for line in file_lines(sim, final["output_file_id"])])
    assert orders[0] == orders[1]


def test_batch_fail_validation(sim):
    sim.configure(batch_fail_validation=True)
    batch = create_batch(sim, ["doomed"])
    final, seen = wait_batch(sim, batch["id"], {"failed"})
    assert seen == ["validating", "failed"]
    assert final["errors"]["object"] == "list"
    (err,) = final["errors"]["data"]
    assert set(err) == {"code", "message", "param", "line"}
    assert final["failed_at"] and final["output_file_id"] is None
    assert sim.stats()["batch_items"] == 0


def test_malformed_input_lines_fail_validation(sim):
    good = batch_input(["fine"])
    _, file_obj = upload(sim, good + b"{not json\n" + good)  # bad line 2, duplicate id line 3
    batch = ok(
        "POST",
        sim.base_url + "/batches",
        {
            "input_file_id": file_obj["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    final, _ = wait_batch(sim, batch["id"], {"failed"})
    codes = {(e["code"], e["line"]) for e in final["errors"]["data"]}
    assert codes == {("invalid_json_line", 2), ("duplicate_custom_id", 3)}


def test_too_many_lines_fail_validation(sim):
    sim.configure(max_batch_lines=3)
    batch = create_batch(sim, ["a", "b", "c", "d"])
    final, _ = wait_batch(sim, batch["id"], {"failed"})
    assert final["errors"]["data"][0]["code"] == "too_many_requests"


def test_batch_create_errors(sim):
    url = sim.base_url + "/batches"
    body = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert call("POST", url, {**body, "input_file_id": "file-missing"})[0] == 404
    _, file_obj = upload(sim, batch_input(["x"]))
    assert (
        call("POST", url, {**body, "input_file_id": file_obj["id"], "endpoint": "/v1/x"})[0] == 400
    )
    bad_window = {**body, "input_file_id": file_obj["id"], "completion_window": "1h"}
    status, refused = call("POST", url, bad_window)
    assert status == 400
    assert json.loads(refused)["error"] == {
        "message": "Invalid value: '1h'. Supported values are: '24h'.",
        "type": "invalid_request_error",
        "param": "completion_window",
        "code": "invalid_value",
    }
    assert call("GET", f"{url}/batch_missing")[0] == 404


def test_batch_expiry_with_partial_output(sim):
    sim.configure(batch_expire_fraction=0.5)
    batch = create_batch(sim, [f"expiring {i}" for i in range(10)])
    final, seen = wait_batch(sim, batch["id"], {"expired"})
    assert seen[-1] == "expired" and "completed" not in seen
    assert final["expired_at"] is not None
    assert final["request_counts"] == {"total": 10, "completed": 5, "failed": 5}
    outputs = file_lines(sim, final["output_file_id"])
    errors = file_lines(sim, final["error_file_id"])
    assert len(outputs) == 5 and len(errors) == 5
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert all(e["response"] is None for e in errors)
    all_ids = {line["custom_id"] for line in outputs} | {e["custom_id"] for e in errors}
    assert all_ids == {f"req-{i}" for i in range(10)}


def test_batch_cancel_keeps_partial_output(sim):
    sim.configure(batch_timings={**FAST, "in_progress": 1.0})
    batch = create_batch(sim, [f"cancel me {i}" for i in range(20)])
    wait_batch(sim, batch["id"], {"in_progress"})
    time.sleep(0.4)
    cancelling = ok("POST", f"{sim.base_url}/batches/{batch['id']}/cancel")
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"]
    final, _ = wait_batch(sim, batch["id"], {"cancelled"})
    assert final["cancelled_at"] is not None
    outputs = file_lines(sim, final["output_file_id"])
    assert 0 < len(outputs) < 20
    assert final["request_counts"]["completed"] == len(outputs)
    # Cancelling again is a no-op; a finished batch cannot be cancelled.
    assert ok("POST", f"{sim.base_url}/batches/{batch['id']}/cancel")["status"] == "cancelled"
    done = create_batch(sim, ["quick"])
    sim.configure(batch_timings=FAST)
    assert sim.stats()["batches_cancelled"] == 1
    assert done["status"] == "validating"


def test_cannot_cancel_completed_batch(sim):
    batch = create_batch(sim, ["finished"])
    wait_batch(sim, batch["id"], {"completed"})
    assert call("POST", f"{sim.base_url}/batches/{batch['id']}/cancel")[0] == 400


def test_batch_list_pagination(sim):
    created = [create_batch(sim, [f"list {i}"])["id"] for i in range(5)]
    newest_first = created[::-1]
    page = ok("GET", f"{sim.base_url}/batches?limit=2")
    assert page["object"] == "list"
    assert [b["id"] for b in page["data"]] == newest_first[:2]
    assert page["first_id"] == newest_first[0] and page["last_id"] == newest_first[1]
    assert page["has_more"] is True
    page = ok("GET", f"{sim.base_url}/batches?limit=2&after={page['last_id']}")
    assert [b["id"] for b in page["data"]] == newest_first[2:4] and page["has_more"] is True
    page = ok("GET", f"{sim.base_url}/batches?limit=2&after={page['last_id']}")
    assert [b["id"] for b in page["data"]] == newest_first[4:] and page["has_more"] is False


def test_openai_sdk_batch_flow(sim):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)
    uploaded = client.files.create(
        file=("in.jsonl", batch_input(["sdk 1", "sdk 2"])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"curator_run_id": "r", "curator_shard": "s"},
    )
    deadline = time.monotonic() + 5
    while batch.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    lines = client.files.content(batch.output_file_id).text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in lines) == ["req-0", "req-1"]
    assert [b.id for b in client.batches.list(limit=10).data] == [batch.id]


# --------------------------------------------------------------------------- Anthropic


def message_params(prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }


def create_message_batch(sim: Simulator, prompts: list[str], **extra: Any) -> dict[str, Any]:
    requests = [
        {"custom_id": f"item-{i}", "params": message_params(p, **extra)}
        for i, p in enumerate(prompts)
    ]
    return ok("POST", sim.url + "/v1/messages/batches", {"requests": requests}, ANTHROPIC_HEADERS)


def wait_message_batch(sim: Simulator, batch_id: str, timeout: float = 5.0):
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = ok("GET", f"{sim.url}/v1/messages/batches/{batch_id}", headers=ANTHROPIC_HEADERS)
        if not seen or seen[-1] != batch["processing_status"]:
            seen.append(batch["processing_status"])
        if batch["processing_status"] == "ended":
            return batch, seen
        time.sleep(0.02)
    raise AssertionError(f"message batch stuck: {seen}")


def results(sim: Simulator, url: str) -> list[dict[str, Any]]:
    status, data = call("GET", url, headers=ANTHROPIC_HEADERS)
    assert status == 200, data
    return [json.loads(line) for line in data.splitlines() if line.strip()]


class Answer(BaseModel):
    answer: str
    confidence: float
    sources: list[str]


def test_message_batch_lifecycle(sim):
    prompts = [f"claude item {i}" for i in range(20)]
    prompts[5] = "claude item 5 [[sim:529]]"
    batch = create_message_batch(sim, prompts)
    assert batch["id"].startswith("msgbatch_") and batch["type"] == "message_batch"
    assert batch["processing_status"] == "in_progress"
    assert batch["request_counts"] == {
        "processing": 20,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch["results_url"] is None and batch["ended_at"] is None
    assert batch["created_at"].endswith("Z") and batch["expires_at"].endswith("Z")
    early = call(
        "GET", f"{sim.url}/v1/messages/batches/{batch['id']}/results", headers=ANTHROPIC_HEADERS
    )
    assert early[0] == 400

    final, seen = wait_message_batch(sim, batch["id"])
    assert seen == ["in_progress", "ended"]
    assert final["request_counts"]["succeeded"] == 19 and final["request_counts"]["errored"] == 1
    assert final["ended_at"] and final["results_url"].endswith(f"/{batch['id']}/results")
    lines = results(sim, final["results_url"])
    ids = [line["custom_id"] for line in lines]
    assert sorted(ids) == sorted(f"item-{i}" for i in range(20)) and ids != sorted(ids)
    by_id = {line["custom_id"]: line["result"] for line in lines}
    assert by_id["item-5"] == {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    }
    ok_result = by_id["item-0"]
    assert ok_result["type"] == "succeeded"
    msg = ok_result["message"]
    assert msg["type"] == "message" and msg["content"][0]["type"] == "text"
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batch_items"] == 20
    assert stats["batch_items_by_prompt"]["claude item 0"] == 1
    assert stats["faults"] == {"529": 1}


def test_message_batch_structured_output_and_invalid_params(sim):
    schema = Answer.model_json_schema()
    batch = create_message_batch(
        sim, ["q1", "q2"], output_format={"type": "json_schema", "schema": schema}
    )
    bad = {"custom_id": "bad", "params": {"model": "claude", "messages": []}}
    status, data = call(
        "POST", sim.url + "/v1/messages/batches", {"requests": [bad]}, ANTHROPIC_HEADERS
    )
    assert status == 200
    bad_batch = json.loads(data)
    final, _ = wait_message_batch(sim, batch["id"])
    for line in results(sim, final["results_url"]):
        Answer.model_validate_json(line["result"]["message"]["content"][0]["text"])
    bad_final, _ = wait_message_batch(sim, bad_batch["id"])
    (line,) = results(sim, bad_final["results_url"])
    assert line["result"]["type"] == "errored"
    assert line["result"]["error"]["error"]["type"] == "invalid_request_error"


def test_message_batch_validation_errors(sim):
    url = sim.url + "/v1/messages/batches"
    dup = [{"custom_id": "a", "params": message_params("x")}] * 2
    assert call("POST", url, {"requests": dup}, ANTHROPIC_HEADERS)[0] == 400
    assert call("POST", url, {"requests": []}, ANTHROPIC_HEADERS)[0] == 400
    bad_id = [{"custom_id": "has space", "params": message_params("x")}]
    assert call("POST", url, {"requests": bad_id}, ANTHROPIC_HEADERS)[0] == 400
    status, data = call("POST", url, {"requests": dup[:1]}, {"x-api-key": "k"})
    assert status == 400 and json.loads(data)["type"] == "error"
    assert call("GET", f"{url}/msgbatch_nope", headers=ANTHROPIC_HEADERS)[0] == 404


def test_message_batch_expiry(sim):
    sim.configure(batch_expire_fraction=0.25)
    batch = create_message_batch(sim, [f"exp {i}" for i in range(8)])
    final, _ = wait_message_batch(sim, batch["id"])
    assert final["request_counts"] == {
        "processing": 0,
        "succeeded": 2,
        "errored": 0,
        "canceled": 0,
        "expired": 6,
    }
    kinds = [line["result"]["type"] for line in results(sim, final["results_url"])]
    assert sorted(kinds) == ["expired"] * 6 + ["succeeded"] * 2


def test_message_batch_cancel(sim):
    sim.configure(batch_timings={**FAST, "in_progress": 1.0})
    batch = create_message_batch(sim, [f"cancel {i}" for i in range(20)])
    time.sleep(0.5)
    canceling = ok(
        "POST", f"{sim.url}/v1/messages/batches/{batch['id']}/cancel", headers=ANTHROPIC_HEADERS
    )
    assert canceling["processing_status"] == "canceling"
    assert canceling["cancel_initiated_at"] is not None
    final, _ = wait_message_batch(sim, batch["id"])
    counts = final["request_counts"]
    assert counts["canceled"] > 0 and counts["succeeded"] > 0
    assert counts["canceled"] + counts["succeeded"] == 20
    kinds = {line["result"]["type"] for line in results(sim, final["results_url"])}
    assert kinds == {"canceled", "succeeded"}
    deleted = ok(
        "DELETE", f"{sim.url}/v1/messages/batches/{batch['id']}", headers=ANTHROPIC_HEADERS
    )
    assert deleted == {"id": batch["id"], "type": "message_batch_deleted"}


def test_message_batch_list_pagination(sim):
    created = [create_message_batch(sim, [f"l {i}"])["id"] for i in range(5)]
    newest_first = created[::-1]
    url = sim.url + "/v1/messages/batches"
    page = ok("GET", f"{url}?limit=2", headers=ANTHROPIC_HEADERS)
    assert [b["id"] for b in page["data"]] == newest_first[:2] and page["has_more"] is True
    assert page["first_id"] == newest_first[0] and page["last_id"] == newest_first[1]
    page2 = ok("GET", f"{url}?limit=2&after_id={page['last_id']}", headers=ANTHROPIC_HEADERS)
    assert [b["id"] for b in page2["data"]] == newest_first[2:4]
    back = ok("GET", f"{url}?limit=2&before_id={page2['first_id']}", headers=ANTHROPIC_HEADERS)
    assert [b["id"] for b in back["data"]] == newest_first[:2] and back["has_more"] is False
    last = ok("GET", f"{url}?limit=2&after_id={page2['last_id']}", headers=ANTHROPIC_HEADERS)
    assert [b["id"] for b in last["data"]] == newest_first[4:] and last["has_more"] is False


def test_message_batch_fail_validation(sim):
    sim.configure(batch_fail_validation=True)
    batch = create_message_batch(sim, ["x", "y"])
    final, _ = wait_message_batch(sim, batch["id"])
    assert final["request_counts"]["errored"] == 2
    assert sim.stats()["batch_items"] == 0


def test_batch_usage_details_are_objects_with_the_reasoning_tokens_of_its_lines(sim):
    """What a client reads of an ended batch: usage with both details objects, never null."""
    openai = pytest.importorskip("openai")
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"usage {i}"}],
                "max_completion_tokens": 4000,
            },
        }
        for i, model in enumerate(["o4-mini", "o4-mini"])  # one model per batch, as OpenAI's
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 5
    while batch.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    outputs = [
        json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()
    ]
    usages = {line["custom_id"]: line["response"]["body"]["usage"] for line in outputs}
    reasoning = [u["completion_tokens_details"]["reasoning_tokens"] for u in usages.values()]
    assert all(tokens > 0 for tokens in reasoning)
    assert batch.usage.input_tokens_details.cached_tokens == 0
    assert batch.usage.output_tokens_details.reasoning_tokens == sum(reasoning)
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usages.values())


# --------------------------------------------------------------------------- batch queue limits


def _prompt_tokens(prompt: str) -> int:
    """The simulator's count of a one-message request: its text's quarter, + 4, + 3."""
    return (len(prompt) + 3) // 4 + 4 + 3


def test_openai_enqueued_token_limit_fails_the_batch_at_validation():
    prompts = [f"enqueued {i} " + "x" * 30 for i in range(10)]
    tokens = sum(_prompt_tokens(p) for p in prompts)
    timings = {**FAST, "in_progress": 1.0}
    with Simulator(batch_timings=timings, batch_enqueued_token_limit=tokens + tokens // 2) as sim:
        first = create_batch(sim, prompts[:], metadata={"n": "1"})
        second = create_batch(sim, [p + " again" for p in prompts])
        assert second["status"] == "validating"  # created: the limit is found at validation
        other_model = ok(
            "POST",
            sim.base_url + "/batches",
            {
                "input_file_id": upload(
                    sim,
                    b"".join(
                        json.dumps(
                            {
                                "custom_id": f"o-{i}",
                                "method": "POST",
                                "url": "/v1/chat/completions",
                                "body": {**chat_body(p), "model": "gpt-4o"},
                            }
                        ).encode()
                        + b"\n"
                        for i, p in enumerate(prompts)
                    ),
                )[1]["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        failed, seen = wait_batch(sim, second["id"], {"failed", "completed"})
        assert seen[-1] == "failed"
        assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
        assert failed["errors"]["object"] == "list"
        (error,) = failed["errors"]["data"]
        assert error["code"] == "token_limit_exceeded"
        assert error["param"] is None and error["line"] is None
        assert error["message"] == (
            "Enqueued token limit reached for gpt-4o-mini in organization org-simulator. "
            f"Limit: {tokens + tokens // 2:,} enqueued tokens. Please try again once some "
            "in_progress batches have been completed."
        )
        # another model has a queue of its own; the first batch runs to the end
        assert wait_batch(sim, other_model["id"], {"completed", "failed"})[0]["status"] == (
            "completed"
        )
        assert wait_batch(sim, first["id"], {"completed", "failed"})[0]["status"] == "completed"
        # once it completed, the same input fits
        third = create_batch(sim, [p + " again" for p in prompts])
        assert wait_batch(sim, third["id"], {"completed", "failed"})[0]["status"] == "completed"
        stats = sim.stats()
        assert stats["batch_queue_refusals"] == {"openai": 1}
        assert tokens <= stats["peak_enqueued_tokens"] <= tokens + tokens // 2
        # the refused batch's items were never admitted
        assert stats["batch_items_by_prompt"][prompts[0] + " again"] == 1


def test_openai_enqueued_tokens_are_input_tokens_only():
    """``max_tokens`` (the output cap) does not count: only the prompt's tokens are enqueued."""
    prompt = "just the input " + "y" * 20
    with Simulator(batch_timings=FAST, batch_enqueued_token_limit=_prompt_tokens(prompt)) as sim:
        batch = create_batch(sim, [prompt])  # chat_body asks max_tokens=200, far past the limit
        assert wait_batch(sim, batch["id"], {"completed", "failed"})[0]["status"] == "completed"
        too_big = create_batch(sim, [prompt + "z" * 8])
        done = wait_batch(sim, too_big["id"], {"completed", "failed"})[0]
        assert done["errors"]["data"][0]["code"] == "token_limit_exceeded"


def _post_message_batch(sim: Simulator, prompts: list[str]) -> tuple[int, Any, Any]:
    requests = [
        {"custom_id": f"item-{i}", "params": message_params(p)} for i, p in enumerate(prompts)
    ]
    req = urllib.request.Request(
        sim.url + "/v1/messages/batches",
        data=json.dumps({"requests": requests}).encode(),
        method="POST",
        headers={**ANTHROPIC_HEADERS, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def test_anthropic_processing_queue_limit_refuses_with_429():
    timings = {**FAST, "in_progress": 1.0}
    with Simulator(batch_timings=timings, batch_queue_request_limit=15) as sim:
        status, first, _ = _post_message_batch(sim, [f"queued {i}" for i in range(10)])
        assert status == 200
        status, body, headers = _post_message_batch(sim, [f"more {i}" for i in range(6)])
        assert status == 429
        assert body["type"] == "error"
        assert body["error"]["type"] == "rate_limit_error"
        assert "15 batch requests in the processing queue" in body["error"]["message"]
        assert int(headers["retry-after"]) >= 1 and headers["request-id"].startswith("req_")
        assert len(sim.stats()["by_prompt"]) == 10  # the refused requests were never admitted
        # what still fits is accepted; once the first batch ended, the rest fits too
        assert _post_message_batch(sim, [f"more {i}" for i in range(5)])[0] == 200
        wait_message_batch(sim, first["id"])
        assert _post_message_batch(sim, [f"later {i}" for i in range(6)])[0] == 200
        stats = sim.stats()
        assert stats["batch_queue_refusals"] == {"anthropic": 1}
        assert stats["peak_queued_batch_requests"] == 15
        assert stats["batches_created"] == 3


def test_queue_limit_options_on_the_command_line():
    from curator_flows.testing.simulator.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--batch-enqueued-token-limit", "90000", "--batch-queue-request-limit", "100000"]
    )
    config = config_from_args(args)
    assert config.batch_enqueued_token_limit == 90000
    assert config.batch_queue_request_limit == 100000
    assert config_from_args(build_parser().parse_args([])).batch_enqueued_token_limit is None
    with pytest.raises(ValueError, match="batch_enqueued_token_limit"):
        Simulator(batch_enqueued_token_limit=0)
