"""OpenAI Batch API (and any OpenAI-compatible ``base_url``): ``/v1/files`` + ``/v1/batches``.

Input line (exact)::

    {"custom_id":"<id>","method":"POST","url":"/v1/chat/completions","body":{<template>,"messages":[...]}}

so its size is ``len(messages_json) + line_overhead(template)`` bytes, newline included. A
request with its own generation params (``"params"`` in its request line) has the template
updated with them as its body (larger by at most the size of those params).

Reconciliation: every batch carries ``metadata = {curator_run_id, curator_shard, curator_round}``.
After a crash between the create call and the record, :meth:`OpenAIBatches.find` lists batches
newest first (``GET /v1/batches?limit=&after=``) back to the intent's time (less a clock-skew
margin) and re-attaches to the one whose metadata names this run, shard and round, or whose
``input_file_id`` is the file this round uploaded. The match is exact: metadata is ours. A
shard whose record was lost altogether adopts the batch of its highest round found by the same
metadata (:meth:`OpenAIBatches.find_shard`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from ..backends.openai import DEFAULT_BASE_URL, parse_chat_completion, request_body
from ..errors import CuratorFlowsError
from .base import RECONCILE_SKEW, BatchInfo, ItemResult, RoundIntent, paginate
from .transport import BatchAPIError, Http, multipart_file

ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)
_HEAD = b'{"custom_id":'
_MID = b',"method":"POST","url":"' + ENDPOINT.encode() + b'","body":'
_TAIL = b"}}\n"
_ID_BYTES = 34  # a 32-hex id with its quotes


def body_prefix(template: dict[str, Any]) -> bytes:
    """``{<template>,"messages":`` : everything of a request body before its messages."""
    return orjson.dumps(template)[:-1] + b',"messages":'


def line_overhead(template: dict[str, Any]) -> int:
    """Bytes of one input line besides its ``messages`` JSON (newline included)."""
    return len(_HEAD) + _ID_BYTES + len(_MID) + len(body_prefix(template)) + len(_TAIL)


def _errors(data: dict[str, Any]) -> list[str]:
    block = data.get("errors") or {}
    items = block.get("data") if isinstance(block, dict) else block
    out = []
    for item in items or []:
        if isinstance(item, dict):
            text = f"{item.get('code') or 'error'}: {item.get('message') or ''}".strip()
            if item.get("line") is not None:
                text += f" (line {item['line']})"
            out.append(text)
    return out


def batch_info(data: dict[str, Any]) -> BatchInfo:
    status = str(data.get("status") or "unknown")
    return BatchInfo(
        id=data["id"],
        status=status,
        ended=status in TERMINAL,
        created_at=float(data["created_at"]) if data.get("created_at") is not None else None,
        request_counts=dict(data.get("request_counts") or {}),
        input_file_id=data.get("input_file_id"),
        output_file_id=data.get("output_file_id"),
        error_file_id=data.get("error_file_id"),
        errors=_errors(data),
        metadata=dict(data.get("metadata") or {}),
    )


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        code = inner.get("code") or inner.get("type") or "error"
        return f"{code}: {inner.get('message') or ''}".strip()
    return str(error)


def parse_result_line(raw: bytes) -> ItemResult | None:
    """One line of an output or error file (``None`` when it names no request)."""
    try:
        line = orjson.loads(raw)
        custom_id = line["custom_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    response = line.get("response") or {}
    status = response.get("status_code")
    if status == 200:
        attempt = parse_chat_completion(response.get("body"))
        if attempt.kind == "ok":
            return ItemResult(custom_id, "ok", attempt)
        return ItemResult(custom_id, "retry", error=attempt.error)
    if status is None:
        return ItemResult(custom_id, "retry", error=_error_text(line.get("error") or "no response"))
    error = f"HTTP {status}: {_error_text(response.get('body') or line.get('error'))}"
    fatal = 400 <= status < 500 and status not in (408, 409, 429)
    return ItemResult(custom_id, "fatal" if fatal else "retry", error=error)


class OpenAIBatches:
    """One OpenAI-compatible endpoint's files and batches."""

    name = "openai"
    uploads_files = True

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        template: dict[str, Any] | None = None,
        completion_window: str = "24h",
    ) -> None:
        self.base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.http = Http({"authorization": f"Bearer {api_key or 'none'}"}, timeout)
        self.completion_window = completion_window
        self.template = template
        self.prefix = body_prefix(template) if template is not None else None

    # ----------------------------------------------------------------- input
    def write_input(self, handle: Any, requests: Iterable[dict[str, Any]]) -> tuple[int, int]:
        if self.prefix is None:
            raise CuratorFlowsError("this client was built without a request template")
        count = size = 0
        head, mid, prefix = _HEAD, _MID, self.prefix
        for request in requests:
            if request.get("params"):
                body = request_body(self.template, request["messages"], request["params"])
                line = b"".join(
                    (head, orjson.dumps(request["id"]), mid, orjson.dumps(body), b"}\n")
                )
            else:
                line = b"".join(
                    (
                        head,
                        orjson.dumps(request["id"]),
                        mid,
                        prefix,
                        orjson.dumps(request["messages"]),
                        _TAIL,
                    )
                )
            handle.write(line)
            count += 1
            size += len(line)
        return count, size

    def upload(self, path: str, filename: str) -> str:
        chunks, length, content_type = multipart_file(
            {"purpose": "batch"}, "file", filename, path, "application/jsonl"
        )
        data = self.http.request(
            "POST",
            f"{self.base}/files",
            body=chunks,
            length=length,
            headers={"content-type": content_type},
        )
        return data["id"]

    # --------------------------------------------------------------- batches
    def create(self, path: str, input_file_id: str | None, intent: RoundIntent) -> BatchInfo:
        body = {
            "input_file_id": input_file_id,
            "endpoint": ENDPOINT,
            "completion_window": self.completion_window,
            "metadata": metadata(intent),
        }
        return batch_info(self.http.request("POST", f"{self.base}/batches", json=body, retry=False))

    def get(self, batch_id: str) -> BatchInfo:
        return batch_info(self.http.request("GET", f"{self.base}/batches/{batch_id}"))

    def cancel(self, batch_id: str) -> BatchInfo:
        try:
            data = self.http.request("POST", f"{self.base}/batches/{batch_id}/cancel")
        except BatchAPIError as exc:
            if exc.status in (400, 409):  # already ended or cancelling: report where it is
                return self.get(batch_id)
            raise
        return batch_info(data)

    def list(self, limit: int = 100) -> Iterator[BatchInfo]:
        """Every batch, newest first, page by page."""
        for item in paginate(self.http, f"{self.base}/batches", "after", limit):
            yield batch_info(item)

    def find(self, intent: RoundIntent, claimed: set[str], belongs: Any = None) -> BatchInfo | None:
        """The batch of ``intent`` by its metadata or input file (exact; see module doc)."""
        wanted = metadata(intent)
        since = intent.intent_at - RECONCILE_SKEW
        for info in self.list():
            if info.created_at is not None and info.created_at < since:
                break  # newest first: everything further is older than the intent
            if info.id in claimed:
                continue
            tagged = all(str(info.metadata.get(k)) == v for k, v in wanted.items())
            same_file = (
                intent.input_file_id is not None and info.input_file_id == intent.input_file_id
            )
            if tagged or same_file:
                info.matched_by = "metadata" if tagged else "input_file"
                return info
        return None

    def find_shard(self, run_id: str, shard: str, since: float) -> BatchInfo | None:
        """The batch of ``shard``'s highest round that names ``run_id`` in its metadata,
        created after ``since`` (the newest of that round), if any: what a shard whose record
        was lost adopts."""
        best: BatchInfo | None = None
        for info in self.list():
            if info.created_at is not None and info.created_at < since:
                break  # newest first: everything further is older
            tags = info.metadata
            if tags.get("curator_run_id") != run_id or tags.get("curator_shard") != shard:
                continue
            try:
                round_index = int(tags.get("curator_round"))
            except (TypeError, ValueError):
                continue
            if best is None or round_index > int(best.metadata["curator_round"]):
                best = info
        if best is not None:
            best.matched_by = "metadata"
        return best

    # --------------------------------------------------------------- results
    def results(self, info: BatchInfo) -> Iterator[ItemResult]:
        for file_id in (info.output_file_id, info.error_file_id):
            if not file_id:
                continue
            for raw in self.http.iter_lines(f"{self.base}/files/{file_id}/content"):
                item = parse_result_line(raw)
                if item is not None:
                    yield item

    def delete_files(self, info: BatchInfo, input_file_id: str | None) -> None:
        for file_id in {input_file_id, info.input_file_id, info.output_file_id, info.error_file_id}:
            if not file_id:
                continue
            try:
                self.http.request("DELETE", f"{self.base}/files/{file_id}")
            except BatchAPIError as exc:
                if exc.status != 404:
                    raise


def metadata(intent: RoundIntent) -> dict[str, str]:
    return {
        "curator_run_id": intent.run_id,
        "curator_shard": intent.shard,
        "curator_round": str(intent.round),
    }
