"""Counters of what the simulator saw, readable from any thread.

Invariants:
- ``requests`` counts every HTTP request to an API path (``/v1/...``), whatever its outcome.
- ``by_prompt[key]`` counts *admitted* requests and batch items with that prompt key: those that
  passed auth, validation and rate limits (fault-injected ones included). It doubles as the
  attempt counter: an attempt's number is ``by_prompt[key]`` before it is counted.
- ``by_system[text]`` counts the same admitted requests and items by their system prompt (those
  without one are not counted).
- ``status_counts`` counts responses by HTTP status (as a string); a dropped connection has no
  status and is only counted in ``faults["drop"]``.
- ``refused`` counts what the account refused (``insufficient_quota``, ``credit_balance``,
  ``rpd``, ``tpd``: see `account`); those 429s are not in ``rate_limited``.
- ``batch_queue_refusals[api]`` counts batches refused by a batch queue limit (OpenAI's enqueued
  token limit, Anthropic's processing queue); ``peak_enqueued_tokens`` (OpenAI, one model) and
  ``peak_queued_batch_requests`` (Anthropic) are the most the queue held right after a create.
- `snapshot` returns deep copies; mutating them does not affect the simulator.
"""

from __future__ import annotations

import threading
from typing import Any


class Stats:
    """Thread-safe counters; every mutation holds one short lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.chat_completions = 0
            self.messages = 0
            self.rate_limited = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.status_counts: dict[str, int] = {}
            self.faults: dict[str, int] = {}
            self.refused: dict[str, int] = {}
            self.by_prompt: dict[str, int] = {}
            self.by_system: dict[str, int] = {}
            self.batch_items_by_prompt: dict[str, int] = {}
            self.batch_items = 0
            self.batches_created = 0
            self.batches_created_by_api: dict[str, int] = {}
            self.batches_by_run_shard: dict[str, int] = {}
            self.batches_cancelled = 0
            self.batch_queue_refusals: dict[str, int] = {}
            self.peak_enqueued_tokens = 0
            self.peak_queued_batch_requests = 0
            self.files_created = 0

    # ---- request lifecycle
    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def admit(self, endpoint: str, key: str, system: str | None = None) -> int:
        """Count an admitted request of `endpoint` for prompt `key` (and its system prompt);
        return its attempt number."""
        with self._lock:
            if system is not None:
                self.by_system[system] = self.by_system.get(system, 0) + 1
            if endpoint == "chat_completions":
                self.chat_completions += 1
            elif endpoint == "messages":
                self.messages += 1
            attempt = self.by_prompt.get(key, 0)
            self.by_prompt[key] = attempt + 1
            return attempt

    def record(
        self,
        status: int | None,
        fault: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        refused: str | None = None,
    ) -> None:
        """Count one response (``status=None`` for a dropped connection) and its fault, or
        what the account ``refused``."""
        with self._lock:
            if status is not None:
                name = str(status)
                self.status_counts[name] = self.status_counts.get(name, 0) + 1
                if status == 429 and fault is None and refused is None:
                    self.rate_limited += 1
            if refused is not None:
                self.refused[refused] = self.refused.get(refused, 0) + 1
            if fault is not None:
                self.faults[fault] = self.faults.get(fault, 0) + 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def count_fault(self, fault: str) -> None:
        with self._lock:
            self.faults[fault] = self.faults.get(fault, 0) + 1

    # ---- batches
    def admit_batch_items(
        self, keys: list[str], systems: list[str | None] | None = None
    ) -> list[int]:
        """Count batch items by prompt key (and system prompt); return each item's attempt
        number."""
        attempts = []
        with self._lock:
            for system in systems or ():
                if system is not None:
                    self.by_system[system] = self.by_system.get(system, 0) + 1
            by_prompt = self.by_prompt
            batch = self.batch_items_by_prompt
            for key in keys:
                attempt = by_prompt.get(key, 0)
                by_prompt[key] = attempt + 1
                batch[key] = batch.get(key, 0) + 1
                attempts.append(attempt)
            self.batch_items += len(keys)
        return attempts

    def batch_created(self, api: str, run_shard: str | None) -> None:
        with self._lock:
            self.batches_created += 1
            self.batches_created_by_api[api] = self.batches_created_by_api.get(api, 0) + 1
            if run_shard is not None:
                self.batches_by_run_shard[run_shard] = (
                    self.batches_by_run_shard.get(run_shard, 0) + 1
                )

    def batch_queue(self, api: str, level: int, refused: bool) -> None:
        """A create met a batch queue limit: the queue holds ``level`` (tokens for OpenAI,
        requests for Anthropic) after it; ``refused``: the limit refused it."""
        with self._lock:
            if refused:
                self.batch_queue_refusals[api] = self.batch_queue_refusals.get(api, 0) + 1
            elif api == "openai":
                self.peak_enqueued_tokens = max(self.peak_enqueued_tokens, level)
            else:
                self.peak_queued_batch_requests = max(self.peak_queued_batch_requests, level)

    def batch_cancelled(self) -> None:
        with self._lock:
            self.batches_cancelled += 1

    def file_created(self) -> None:
        with self._lock:
            self.files_created += 1

    # ---- reading
    def snapshot(self) -> dict[str, Any]:
        """A deep copy of all counters."""
        with self._lock:
            return {
                "requests": self.requests,
                "chat_completions": self.chat_completions,
                "messages": self.messages,
                "rate_limited": self.rate_limited,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "status_counts": dict(self.status_counts),
                "faults": dict(self.faults),
                "refused": dict(self.refused),
                "by_prompt": dict(self.by_prompt),
                "by_system": dict(self.by_system),
                "batch_items_by_prompt": dict(self.batch_items_by_prompt),
                "batch_items": self.batch_items,
                "batches_created": self.batches_created,
                "batches_created_by_api": dict(self.batches_created_by_api),
                "batches_by_run_shard": dict(self.batches_by_run_shard),
                "batches_cancelled": self.batches_cancelled,
                "batch_queue_refusals": dict(self.batch_queue_refusals),
                "peak_enqueued_tokens": self.peak_enqueued_tokens,
                "peak_queued_batch_requests": self.peak_queued_batch_requests,
                "files_created": self.files_created,
            }
