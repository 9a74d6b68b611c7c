"""Anthropic Message Batches: ``/v1/messages/batches`` (the requests go in the create call).

Create body (exact)::

    {"requests":[{"custom_id":"<id>","params":{<anthropic_params(messages)>}},...]}

One item is at most ``len(messages_json) + line_overhead(...)`` bytes (lifting system messages
into ``system`` only shrinks it), plus the size of the request's own generation params when
its request line has some (``"params"``: they override the run's in that item's ``params``).

Reconciliation. Anthropic batches carry no metadata and the custom ids must stay the run's
32-hex request ids, so a batch cannot name its run. After a crash between the create call and
the record, :meth:`AnthropicBatches.find` uses what the intent recorded *before* the call
(its time and its exact request count):

1. candidates: batches listed newest first, created no earlier than the intent (less a
   clock-skew margin), with ``request_counts`` summing to the round's request count and not
   recorded by another shard of the run;
2. an *ended* candidate is checked by content: the first custom id of its results must be one
   of this round's request ids (ids are content hashes, disjoint across the run's shards);
3. if no ended candidate matches and exactly one candidate is still in progress, and no other
   shard of the run has an unsent round of the same size, it is attached (``reconciled:
   "count"``); collect later accepts only custom ids of this shard, so a wrong match can
   never write wrong rows;
4. several unended candidates (or a rival shard of the same size) are :class:`Ambiguous`: the
   round stays unsent and ``submit`` / ``poll`` retry until the candidates end and step 2
   decides. Nothing new is created meanwhile.

Limits: a batch created by something else (another tool, another run of the same size) in the
same window can be taken for ours in step 3; then collect finds no row of the shard in it, marks
the round ``mismatch`` and the requests go into the next round: correct output, but the lost
batch is paid for. A provider whose list lags behind its create call can make step 1 miss the
batch (same consequence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import orjson

from ..backends.anthropic import DEFAULT_BASE_URL, api_headers, parse_message
from ..errors import CuratorFlowsError
from .base import (
    RECONCILE_SKEW,
    Ambiguous,
    BatchInfo,
    ItemResult,
    RoundIntent,
    paginate,
)
from .transport import BatchAPIError, Http, file_chunks

_HEAD = b'{"custom_id":'
_MID = b',"params":'
_TAIL = b"}"
_ID_BYTES = 34
FATAL_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
    }
)


def line_overhead(empty_params: dict[str, Any]) -> int:
    """Upper bound of one item's bytes besides its ``messages`` JSON: the item, its separating
    comma and one spare byte (14 items' spare bytes cover the 15 bytes of the body's
    ``{"requests":[...]}`` wrapper, less the first item's missing comma); ``empty_params`` is
    ``anthropic_params(..., messages=[])``."""
    params = len(orjson.dumps(empty_params)) - 2  # "[]" stands where the messages go
    return len(_HEAD) + _ID_BYTES + len(_MID) + params + len(_TAIL) + 2


def _epoch(stamp: Any) -> float | None:
    if isinstance(stamp, int | float):
        return float(stamp)
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def batch_info(data: dict[str, Any]) -> BatchInfo:
    counts = {k: int(v or 0) for k, v in (data.get("request_counts") or {}).items()}
    counts["total"] = sum(
        counts.get(k, 0) for k in ("processing", "succeeded", "errored", "canceled", "expired")
    )
    status = str(data.get("processing_status") or "unknown")
    return BatchInfo(
        id=data["id"],
        status=status,
        ended=status == "ended",
        created_at=_epoch(data.get("created_at")),
        request_counts=counts,
        results_url=data.get("results_url"),
    )


def parse_result_line(raw: bytes) -> ItemResult | None:
    try:
        line = orjson.loads(raw)
        custom_id = line["custom_id"]
        result = line.get("result") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    kind = result.get("type")
    if kind == "succeeded":
        attempt = parse_message(result.get("message"))
        if attempt.kind == "ok":
            return ItemResult(custom_id, "ok", attempt)
        return ItemResult(custom_id, "retry", error=attempt.error)
    if kind == "errored":
        error = result.get("error") or {}
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        error_type = inner.get("type") or "error"
        text = f"{error_type}: {inner.get('message') or ''}".strip()
        return ItemResult(
            custom_id, "fatal" if error_type in FATAL_ERROR_TYPES else "retry", error=text
        )
    if kind in ("canceled", "expired"):
        return ItemResult(custom_id, "retry", error=f"batch item {kind}")
    return ItemResult(custom_id, "retry", error=f"unknown result type {kind!r}")


class AnthropicBatches:
    name = "anthropic"
    uploads_files = False

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        params: Callable[[list[dict[str, Any]], dict[str, Any] | None], dict[str, Any]]
        | None = None,
        structured: bool = False,
    ) -> None:
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        self.base = base
        self.url = f"{base}/v1/messages/batches"
        self.http = Http(api_headers(api_key, structured), timeout)
        self.params = params

    # ----------------------------------------------------------------- input
    def write_input(self, handle: Any, requests: Iterable[dict[str, Any]]) -> tuple[int, int]:
        if self.params is None:
            raise CuratorFlowsError("this client was built without request parameters")
        handle.write(b'{"requests":[')
        count, size = 0, 15
        for request in requests:
            item = b"".join(
                (
                    b"," if count else b"",
                    _HEAD,
                    orjson.dumps(request["id"]),
                    _MID,
                    orjson.dumps(self.params(request["messages"], request.get("params"))),
                    _TAIL,
                )
            )
            handle.write(item)
            count += 1
            size += len(item)
        handle.write(b"]}")
        return count, size

    def upload(self, path: str, filename: str) -> None:
        return None

    # --------------------------------------------------------------- batches
    def create(self, path: str, input_file_id: str | None, intent: RoundIntent) -> BatchInfo:
        chunks, length = file_chunks(path)
        data = self.http.request(
            "POST",
            self.url,
            body=chunks,
            length=length,
            headers={"content-type": "application/json"},
            retry=False,
        )
        return batch_info(data)

    def get(self, batch_id: str) -> BatchInfo:
        return batch_info(self.http.request("GET", f"{self.url}/{batch_id}"))

    def cancel(self, batch_id: str) -> BatchInfo:
        try:
            return batch_info(self.http.request("POST", f"{self.url}/{batch_id}/cancel"))
        except BatchAPIError as exc:
            if exc.status in (400, 409):
                return self.get(batch_id)
            raise

    def list(self, limit: int = 100) -> Iterator[BatchInfo]:
        """Every batch, newest first, page by page (``after_id`` = the page's last id)."""
        for item in paginate(self.http, self.url, "after_id", limit):
            yield batch_info(item)

    def find(
        self,
        intent: RoundIntent,
        claimed: set[str],
        belongs: Callable[[str], bool],
        rivals: int = 0,
    ) -> BatchInfo | None:
        """See the module doc. ``belongs(custom_id)``: is it one of this round's requests;
        ``rivals``: other shards of the run with an unsent round of the same size."""
        since = intent.intent_at - RECONCILE_SKEW
        candidates = []
        for info in self.list():
            if info.created_at is not None and info.created_at < since:
                break
            if info.id not in claimed and info.total == intent.requests:
                candidates.append(info)
        unended = []
        for info in candidates:
            if not info.ended:
                unended.append(info)
                continue
            first = self.first_result(info)
            if first is not None and belongs(first.id):
                info.matched_by = "results"
                return info
        if not unended:
            return None
        if len(unended) == 1 and rivals == 0:
            unended[0].matched_by = "count"
            return unended[0]
        raise Ambiguous([info.id for info in unended])

    # --------------------------------------------------------------- results
    def results(self, info: BatchInfo) -> Iterator[ItemResult]:
        if not info.results_url:
            return
        url = info.results_url
        if url.startswith("/"):
            url = self.base + url
        for raw in self.http.iter_lines(url):
            item = parse_result_line(raw)
            if item is not None:
                yield item

    def first_result(self, info: BatchInfo) -> ItemResult | None:
        stream = self.results(info)
        try:
            return next(stream, None)
        finally:
            stream.close()

    def delete_files(self, info: BatchInfo, input_file_id: str | None) -> None:
        """Anthropic keeps no files: the analogue is deleting the ended batch (and its results)."""
        try:
            self.http.request("DELETE", f"{self.url}/{info.id}")
        except BatchAPIError as exc:
            if exc.status not in (404, 405):
                raise
