"""The shared context of the batch steps: the run, its LLM (built lazily from the manifest) and
the provider client (built from the manifest's public config plus an API key argument or the
environment, never from stored secrets), and the small result dicts the steps return.
"""

from __future__ import annotations

from typing import Any

from ..llm import LLM, llm_from_spec
from ..store import RunStore
from .base import BatchInfo, BatchProvider, RoundIntent
from .records import (
    COLLECTED,
    ENDED,
    BatchRecord,
)


class BatchStepError(RuntimeError):
    """A batch step was called in a state where it cannot act (the message says what to do)."""


class BatchNotEnded(BatchStepError):
    """``collect`` was called while the shard's batch is still running."""


class Context:
    """What one step needs: store, manifest, shard list and (lazily) LLM and provider client."""

    def __init__(
        self, store: RunStore, manifest: dict[str, Any], llm: LLM | None, api_key: str | None
    ):
        if manifest["mode"] != "batch":
            raise ValueError(f"run {manifest['run_id']} is a {manifest['mode']} run, not batch")
        self.store = store
        self.manifest = manifest
        self.run_id = manifest["run_id"]
        self.backend = manifest["backend"]
        self.shards = [s["name"] for s in manifest["shards"]]
        self.sizes = {s["name"]: s["requests"] for s in manifest["shards"]}
        self._llm = llm
        self.api_key = api_key
        self._clients: dict[bool, BatchProvider] = {}

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            self._llm = llm_from_spec(self.manifest["llm"])
        return self._llm

    def config(self, key: str, default: Any = None) -> Any:
        if self._llm is not None:
            return getattr(self._llm.config.params, key, default)
        return self.manifest.get("config", {}).get(key, default)

    def key(self) -> str | None:
        if self.api_key:
            return self.api_key
        return self._llm.config.api_key() if self._llm is not None else None

    def provider(self, for_input: bool = False) -> BatchProvider:
        """The provider client; ``for_input`` adds the request body template (needs the LLM)."""
        client = self._clients.get(for_input)
        if client is not None:
            return client
        base_url = self.config("base_url")
        timeout = float(self.config("request_timeout", 600))
        if self.backend == "openai":
            from .openai import OpenAIBatches

            template = None
            if for_input:
                from ..backends.openai import request_template

                llm = self.llm
                template = request_template(
                    llm.model_name,
                    llm.generation_params,
                    llm.schema(),
                    llm.config.params.max_tokens,
                )
            client = OpenAIBatches(
                base_url, self.key(), timeout, template, self.config("completion_window", "24h")
            )
        elif self.backend == "anthropic":
            from .anthropic import AnthropicBatches

            params = None
            structured = False
            if for_input:
                from ..backends.anthropic import anthropic_params

                llm = self.llm
                schema, max_tokens = llm.schema(), llm.config.params.max_tokens
                structured = schema is not None

                def params(messages: list[dict[str, Any]]) -> dict[str, Any]:
                    return anthropic_params(
                        llm.model_name, llm.generation_params, schema, max_tokens, messages
                    )

            client = AnthropicBatches(base_url, self.key(), timeout, params, structured)
        else:
            raise ValueError(f"backend {self.backend!r} has no batch API")
        self._clients[for_input] = client
        return client

    def record(self, shard: str) -> BatchRecord:
        if shard not in self.sizes:
            raise ValueError(f"unknown shard {shard!r}; this run has {self.shards}")
        return BatchRecord.load(self.store, shard, self.run_id, self.backend)

    def intent(self, record: BatchRecord, entry: dict[str, Any]) -> RoundIntent:
        return RoundIntent(
            self.run_id,
            record.shard,
            entry["round"],
            entry["requests"],
            entry["intent_at"],
            entry.get("input_file_id"),
        )


def info_of(entry: dict[str, Any]) -> BatchInfo:
    return BatchInfo(
        id=entry.get("batch_id") or "",
        status=entry.get("status") or "unknown",
        ended=entry["state"] in (ENDED, COLLECTED),
        created_at=entry.get("created_at"),
        request_counts=entry.get("request_counts") or {},
        input_file_id=entry.get("input_file_id"),
        output_file_id=entry.get("output_file_id"),
        error_file_id=entry.get("error_file_id"),
        results_url=entry.get("results_url"),
        errors=entry.get("errors") or [],
    )


def describe(ctx: Context, record: BatchRecord, state: str, **extra: Any) -> dict[str, Any]:
    entry = record.current or {}
    out = {
        "run_uri": ctx.store.uri,
        "run_id": ctx.run_id,
        "shard": record.shard,
        "state": state,
        "round": entry.get("round"),
        "attempt": entry.get("attempt"),
        "batch_id": entry.get("batch_id"),
        "status": entry.get("status"),
        "requests": entry.get("requests", 0),
    }
    out.update(extra)
    return out
