"""The batch record of a shard (``batches/<shard>.json``): what was asked of the provider, written
BEFORE it is asked.

Format::

    {"version": 1, "run_id": ..., "shard": "00000", "provider": "openai" | "anthropic",
     "campaign_start": 0,            # index of the first round of the current campaign
     "campaign_started_at": 1.7e9,
     "rounds": [
       {"round": 0, "attempt": 1, "state": "intent" | "uploaded" | "submitted" | "ended"
                                          | "collected",
        "intent_at": ..., "requests": 500, "input_bytes": 123456,
        "input_file_id": "file-..." (OpenAI, after upload), "batch_id": "batch_...",
        "created_at": <provider time, epoch s>, "submitted_at": ..., "reconciled": "metadata"|...,
        "status": <provider status>, "request_counts": {...}, "output_file_id", "error_file_id",
        "results_url", "errors": [...], "ended_at": ..., "collected_at": ...,
        "collected": {"succeeded": n, "failed": n, "retry": n}, "files_deleted": bool,
        "input_tokens": <estimated input tokens of its requests>,
        "admitted_under": {"tokens" | "requests": limit} (the queue limits it was admitted under),
        "refused": {"kind", "limit", "message"} (a batch queue limit refused it: see .queue),
        "adopted": "provider" | "lost" (rebuilt from the provider after the record was lost)}]}

Invariants:
- a round is appended in state ``intent`` (with its request count and time) and saved before any
  provider call that could bill; its batch id is saved the moment the create call returns;
- round ``n + 1`` holds exactly the requests of the shard without a success line and without a
  final failure in the current campaign, once round ``n`` is ``collected``; so every request of
  a round was in every earlier round of its campaign, and ``attempt`` (1-based, per campaign)
  is how often each of its requests was sent in this campaign; a round a batch queue limit
  refused (``refused``) ran nothing, so the round after it keeps its ``attempt``;
- a round in ``submitted``/``ended``/``collected`` state is never submitted again;
- a *campaign* is one series of rounds capped by ``max_retries``; a new one starts only when
  asked (``retry_failed=True``), after the previous one concluded;
- the record is written whole and atomically (``RunStore.write_json``); a record that cannot be
  read (torn, not JSON, not this shape) is a :class:`~curator_flows.errors.BatchStepError`
  naming the file, never a raw decoding error.

The cancel flag (``batches/_cancelled.json``, ``{"at": ts}``) is a separate file: cancelling
takes effect without rewriting any record, so a poller rewriting a record at the same time can
never lose it. It stops every campaign that started before it. ``cancel_run`` does rewrite a
record when it re-attaches an unsent round to the batch a crashed submit created (to save its
batch id before cancelling it).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..errors import BatchStepError, CorruptRunError
from ..store import RunStore

VERSION = 1
CANCEL_FLAG = "batches/_cancelled.json"

INTENT = "intent"
UPLOADED = "uploaded"
SUBMITTED = "submitted"
ENDED = "ended"
COLLECTED = "collected"
UNSENT = (INTENT, UPLOADED)
STATES = (INTENT, UPLOADED, SUBMITTED, ENDED, COLLECTED)


def record_path(shard: str) -> str:
    return f"batches/{shard}.json"


class BatchRecord:
    """The record of one shard; mutate through the methods, then :meth:`save`."""

    def __init__(
        self, store: RunStore, shard: str, data: dict[str, Any], stored: bool = True
    ) -> None:
        self.store = store
        self.shard = shard
        self.data = data
        self.loaded_updated_at = data.get("updated_at")
        #: whether the record was read from its file (``False``: the shard has none yet)
        self.stored = stored

    @classmethod
    def load(cls, store: RunStore, shard: str, run_id: str = "", provider: str = "") -> BatchRecord:
        path = record_path(shard)
        try:
            data = store.read_json_if_exists(path)
        except (orjson.JSONDecodeError, UnicodeDecodeError, CorruptRunError) as exc:
            raise corrupt(store, path, f"it is not JSON ({exc})") from None
        if data is not None:
            problem = shape_problem(data)
            if problem is not None:
                raise corrupt(store, path, problem)
            return cls(store, shard, data)
        data = {
            "version": VERSION,
            "run_id": run_id,
            "shard": shard,
            "provider": provider,
            "campaign_start": 0,
            "campaign_started_at": None,
            "rounds": [],
        }
        return cls(store, shard, data, stored=False)

    def save(self) -> None:
        self.data["updated_at"] = time.time()
        self.store.write_json(record_path(self.shard), self.data)
        self.stored = True

    def save_if_unchanged(self) -> bool:
        """Save unless another writer saved the record since this copy was loaded (then this
        copy is stale and must not overwrite newer rounds); whether it saved. For writers that
        hold no lease (a status poll): leased writers never race each other."""
        if BatchRecord.load(self.store, self.shard).data.get("updated_at") != (
            self.loaded_updated_at
        ):
            return False
        self.save()
        self.loaded_updated_at = self.data["updated_at"]
        return True

    # ------------------------------------------------------------ rounds
    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.data["rounds"]

    @property
    def current(self) -> dict[str, Any] | None:
        return self.rounds[-1] if self.rounds else None

    @property
    def campaign_start(self) -> int:
        return int(self.data.get("campaign_start") or 0)

    @property
    def campaign_submitted_at(self) -> float | None:
        """When the current campaign's first batch was submitted (``batch_timeout`` counts
        from here); ``None`` before it is."""
        for entry in self.rounds[self.campaign_start :]:
            if entry.get("submitted_at"):
                return float(entry["submitted_at"])
        return None

    @property
    def campaign_started_at(self) -> float:
        """When the current campaign was decided (0 before the first round: any cancel()
        already called applies to a shard not yet submitted)."""
        started = self.data.get("campaign_started_at")
        return float(started) if started is not None else 0.0

    def start_campaign(self, now: float) -> None:
        """The next round starts a new series of ``max_retries + 1`` attempts; ``now`` is when
        the caller decided so (before it checked the cancel flag)."""
        self.data["campaign_start"] = len(self.rounds)
        self.data["campaign_started_at"] = now

    def restart_campaign_with(self, entry: dict[str, Any], now: float) -> None:
        """Make the unsent current round the first of a new campaign."""
        self.data["campaign_start"] = entry["round"]
        self.data["campaign_started_at"] = now
        entry["attempt"] = 1

    def new_round(self, requests: int, input_bytes: int, now: float) -> dict[str, Any]:
        """Append a round in ``intent`` state (not saved)."""
        previous = self.current
        in_campaign = previous is not None and previous["round"] >= self.campaign_start
        if self.data.get("campaign_started_at") is None:
            self.data["campaign_started_at"] = now
        attempt = 1
        if in_campaign:  # a refused round ran nothing: it is not an attempt
            attempt = previous["attempt"] + (0 if previous.get("refused") else 1)
        entry = {
            "round": len(self.rounds),
            "attempt": attempt,
            "state": INTENT,
            "intent_at": time.time(),
            "requests": requests,
            "input_bytes": input_bytes,
        }
        self.rounds.append(entry)
        return entry

    def close_refused(self, entry: dict[str, Any], refusal: dict[str, Any]) -> None:
        """Close ``entry``, which a batch queue limit refused (nothing ran): no response line is
        written, every one of its requests is still owed (not saved)."""
        entry.update(
            state=COLLECTED,
            refused=refusal,
            collected_at=time.time(),
            collected={"succeeded": 0, "failed": 0, "retry": entry["requests"], "foreign": 0},
        )

    def batch_ids(self) -> set[str]:
        return {r["batch_id"] for r in self.rounds if r.get("batch_id")}


def shape_problem(data: Any) -> str | None:
    """What makes ``data`` not a batch record (``None``: it is one)."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    rounds = data.get("rounds")
    if not isinstance(rounds, list):
        return "it has no list of rounds"
    if not isinstance(data.get("campaign_start", 0), int):
        return "its campaign_start is not an integer"
    for index, entry in enumerate(rounds):
        if not isinstance(entry, dict):
            return f"round {index} is not an object"
        if entry.get("round") != index:
            return f"round {index} is numbered {entry.get('round')!r}"
        if entry.get("state") not in STATES:
            return f"round {index} has an unknown state {entry.get('state')!r}"
        for key in ("attempt", "requests"):
            if not isinstance(entry.get(key), int):
                return f"round {index} has no integer {key!r}"
        if not isinstance(entry.get("intent_at"), int | float):
            return f"round {index} has no intent time"
    return None


def corrupt(store: RunStore, path: str, problem: str) -> BatchStepError:
    """The error of an unreadable batch record: names the file, says what to do."""
    return BatchStepError(
        f"the batch record {store.path(path)} cannot be read: {problem}. Delete it and call "
        "submit (or advance) again: a shard without a record is looked up at the provider by "
        "its run and shard, and its batch is adopted rather than created again"
    )


def read_cancel_flag(store: RunStore) -> dict[str, Any] | None:
    return store.read_json_if_exists(CANCEL_FLAG)


def cancelled(store: RunStore, record: BatchRecord) -> bool:
    """Whether ``cancel()`` was called after the record's current campaign started."""
    flag = read_cancel_flag(store)
    return flag is not None and float(flag["at"]) >= record.campaign_started_at


def write_cancel_flag(store: RunStore) -> dict[str, Any]:
    flag = {"at": time.time()}
    store.write_json(CANCEL_FLAG, flag)
    return flag
