"""What every batch provider client offers, in provider-neutral types.

Invariant: a provider client classifies and transports; it holds no run state. The steps own
the record, the rounds and the response files, so both providers get the same policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..backends.base import Attempt
from ..errors import CuratorFlowsError

#: how far a provider's clock may be behind ours when matching a batch to an intent
RECONCILE_SKEW = 900.0
#: most list pages read while reconciling (newest first)
RECONCILE_MAX_PAGES = 50


def paginate(http: Any, url: str, cursor_param: str, limit: int = 100) -> Iterator[dict[str, Any]]:
    """Every item of a provider's list endpoint, newest first, page by page; the next page
    starts after the page's ``last_id`` (``cursor_param``: OpenAI ``after``, Anthropic
    ``after_id``). At most ``RECONCILE_MAX_PAGES`` pages are read."""
    after = None
    for _ in range(RECONCILE_MAX_PAGES):
        query = f"limit={limit}" + (f"&{cursor_param}={after}" if after else "")
        page = http.request("GET", f"{url}?{query}") or {}
        items = page.get("data") or []
        yield from items
        if not page.get("has_more") or not items:
            return
        after = page.get("last_id") or items[-1]["id"]


@dataclass
class BatchInfo:
    """A provider batch, normalised. ``status`` is the provider's own word."""

    id: str
    status: str
    ended: bool
    created_at: float | None = None
    request_counts: dict[str, int] = field(default_factory=dict)
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    results_url: str | None = None
    errors: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: how reconciliation found this batch ("metadata", "input_file", "results", "count")
    matched_by: str | None = None

    @property
    def total(self) -> int:
        return int(self.request_counts.get("total") or 0)

    def record_fields(self) -> dict[str, Any]:
        """What a round of the batch record keeps of this batch."""
        out: dict[str, Any] = {
            "batch_id": self.id,
            "status": self.status,
            "request_counts": self.request_counts,
        }
        if self.created_at is not None:
            out["created_at"] = self.created_at
        for key in ("input_file_id", "output_file_id", "error_file_id", "results_url"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.errors:
            out["errors"] = self.errors[:20]
        return out


@dataclass(slots=True)
class ItemResult:
    """One result line: ``kind`` is ``ok`` (``attempt`` holds content and usage), ``retry``
    (worth another round) or ``fatal`` (the request itself is bad: fail now)."""

    id: str
    kind: str
    attempt: Attempt | None = None
    error: str | None = None


@dataclass
class RoundIntent:
    """What reconciliation knows about a round whose create call may have happened."""

    run_id: str
    shard: str
    round: int
    requests: int
    intent_at: float
    input_file_id: str | None = None


class Ambiguous(CuratorFlowsError):
    """Several provider batches could be the one a crashed submit created; wait and retry."""

    def __init__(self, candidates: list[str]) -> None:
        super().__init__(
            f"cannot tell which of {candidates} this round created yet", retryable=True
        )
        self.candidates = candidates


class BatchProvider(Protocol):
    name: str
    #: the input goes up as a file first (OpenAI) rather than in the create call (Anthropic)
    uploads_files: bool

    def write_input(self, handle: Any, requests: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Write the provider's batch input for ``requests`` to ``handle``; (count, bytes)."""
        ...

    def upload(self, path: str, filename: str) -> str | None: ...

    def create(self, path: str, input_file_id: str | None, intent: RoundIntent) -> BatchInfo:
        """Create the batch; raises :class:`~.transport.BatchAPIError` (never retried inside)."""
        ...

    def get(self, batch_id: str) -> BatchInfo: ...

    def cancel(self, batch_id: str) -> BatchInfo: ...

    def find(self, intent: RoundIntent, claimed: set[str], belongs: Any) -> BatchInfo | None:
        """The batch a crashed submit created for ``intent``, if any (may raise Ambiguous)."""
        ...

    def results(self, info: BatchInfo) -> Iterator[ItemResult]:
        """Every result line of an ended batch, streamed (output, then errors)."""
        ...

    def delete_files(self, info: BatchInfo, input_file_id: str | None) -> None: ...
