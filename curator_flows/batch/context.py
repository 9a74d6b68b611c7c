"""The shared context of the batch steps: the run, its LLM (built lazily from the manifest) and
the provider client (built from the manifest's public config plus an API key argument or the
environment, never from stored secrets), and the small result dicts the steps return.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..credentials import Credentials, resolve_endpoint
from ..errors import ConfigError, RunModeError, UnknownShardError
from ..lease import ShardLeases
from ..rebuild import llm_from_spec
from ..results import BatchShardState, make
from ..runs import RunRef, open_run
from ..store import RunStore
from .base import BatchInfo, BatchProvider, RoundIntent
from .queue import BatchQueue
from .records import (
    COLLECTED,
    ENDED,
    BatchRecord,
)

if TYPE_CHECKING:
    from ..llm import LLM

__all__ = ["Context", "describe", "info_of", "open_context"]


class Context:
    """What one step needs: store, manifest, shard list and (lazily) LLM and provider client."""

    def __init__(
        self,
        store: RunStore,
        manifest: dict[str, Any],
        llm: LLM | None,
        credentials: Credentials | None = None,
    ):
        if manifest["mode"] != "batch":
            raise RunModeError(f"run {manifest['run_id']} is a {manifest['mode']} run, not batch")
        self.store = store
        self.manifest = manifest
        self.run_id = manifest["run_id"]
        self.backend = manifest["backend"]
        self.shards = [s["name"] for s in manifest["shards"]]
        self.sizes = {s["name"]: s["requests"] for s in manifest["shards"]}
        self._llm = llm
        self.credentials = credentials or Credentials()
        self._clients: dict[bool, BatchProvider] = {}
        self._leases: dict[str, ShardLeases] = {}
        self._queue: BatchQueue | None = None
        #: shards this context already reported waiting for room in the provider's queue
        self.reported_waiting: set[str] = set()

    @contextlib.contextmanager
    def leased(self, shard: str) -> Iterator[None]:
        """Hold ``shard``'s lease for the block (re-entrant within this context): two workers
        never submit or collect the same shard at once."""
        if shard in self._leases:
            yield
            return
        leases = ShardLeases(self.store, [shard], float(self.config("lease_seconds", 60.0)))
        leases.acquire()
        self._leases[shard] = leases
        try:
            yield
        finally:
            del self._leases[shard]
            leases.release()

    def check_leases(self) -> None:
        """Raise :class:`~curator_flows.errors.LeaseLostError` when another worker took a held
        lease over (their own thread keeps them alive during long work)."""
        for leases in self._leases.values():
            leases.check()

    @property
    def queue(self) -> BatchQueue:
        """The run's view of the provider's batch queue (:mod:`.queue`)."""
        if self._queue is None:
            self._queue = BatchQueue(
                self.store,
                self.manifest["model_name"],
                max_tokens=self.config("max_enqueued_tokens"),
                max_requests=self.config("max_enqueued_requests"),
                lease_seconds=float(self.config("lease_seconds", 60.0)),
                interval=float(self.config("batch_check_interval", 60.0)),
            )
        return self._queue

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            self._llm = llm_from_spec(self.manifest["llm"])
        return self._llm

    def config(self, key: str, default: Any = None) -> Any:
        if self._llm is not None:
            return getattr(self._llm.config.params, key, default)
        return self.manifest.get("config", {}).get(key, default)

    def endpoint(self):
        """The provider's batch endpoint and key (credentials, then backend_params, then
        environment); the provider is the LLM's (an OpenAI-compatible alias has its own)."""
        params = dict(self.manifest.get("config") or {})
        provider = (self.manifest.get("llm") or {}).get("provider") or self.backend
        if self._llm is not None:
            params = {**params, **self._llm.backend_params}
            provider = self._llm.provider
        return resolve_endpoint(provider, self.credentials, params, batch=True)

    def provider(self, for_input: bool = False) -> BatchProvider:
        """The provider client; ``for_input`` adds the request body template (needs the LLM)."""
        client = self._clients.get(for_input)
        if client is not None:
            return client
        endpoint = self.endpoint()
        base_url, key = endpoint.base_url, endpoint.api_key
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
                base_url, key, timeout, template, self.config("completion_window", "24h")
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

                def params(
                    messages: list[dict[str, Any]], own: dict[str, Any] | None = None
                ) -> dict[str, Any]:
                    generation = {**llm.generation_params, **own} if own else llm.generation_params
                    return anthropic_params(
                        llm.model_name, generation, schema, max_tokens, messages
                    )

            client = AnthropicBatches(base_url, key, timeout, params, structured)
        else:
            raise ConfigError(f"backend {self.backend!r} has no batch API")
        self._clients[for_input] = client
        return client

    def record(self, shard: str) -> BatchRecord:
        if shard not in self.sizes:
            raise UnknownShardError(f"unknown shard {shard!r}; this run has {self.shards}")
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


def describe(ctx: Context, record: BatchRecord, state: str, **extra: Any) -> BatchShardState:
    """The shard's :class:`~curator_flows.results.BatchShardState` (``extra`` overrides)."""
    entry = record.current or {}
    values: dict[str, Any] = {
        "run_uri": ctx.store.uri,
        "run_id": ctx.run_id,
        "shard": record.shard,
        "state": state,
        "round": entry.get("round"),
        "attempt": entry.get("attempt"),
        "batch_id": entry.get("batch_id"),
        "status": entry.get("status"),
        "requests": entry.get("requests", 0),
        "request_counts": entry.get("request_counts") or {},
        "submitted_at": record.campaign_submitted_at,
        "round_submitted_at": entry.get("submitted_at"),
    }
    values.update(extra)
    return make(BatchShardState, **values)


def open_context(
    run: RunRef, llm: LLM | None, credentials: Credentials | dict[str, Any] | None
) -> Context:
    """The :class:`Context` of a batch run, opened with the credentials' storage options."""
    credentials = Credentials.coerce(credentials)
    store, manifest = open_run(run, credentials.storage_options)
    return Context(store, manifest, llm, credentials)
