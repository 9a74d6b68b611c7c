"""The offline step: ``run_offline(run, shard)`` generates a shard's pending requests with vLLM.

Invariants:
- the engine is built once per step and fed chunks of ``batch_size`` prompts: never one prompt
  per call, never all of them in one call;
- the engine is topped up with the next chunk whenever no more than its capacity plus one
  chunk of requests are left in it, so it never drains between chunks: the chunk size sets how
  often results are stored, not the throughput;
- each chunk's responses are appended to the run directory as soon as the whole chunk is done
  (chunks finish in any order), so a killed GPU worker resumes at the last stored chunk (chunks
  that were still in the engine are generated again);
- pending requests are streamed from the request shards, so memory holds the queued chunks
  (plus the requests waiting for a retry), not the run;
- outputs that fail ``invalid_finish_reasons`` or the ``response_format`` schema are generated
  again in a later chunk, up to ``max_retries`` more times, then stored as final failures with
  the reason; a request vLLM rejects on its own (a prompt longer than the context) fails at
  once, without failing the rest of its chunk;
- every chunk is fenced: right before it is submitted, the worker checks (no I/O) that its
  shard leases are still certainly its own; once they are not, nothing more is submitted, the
  chunks already in the engine are stored, and the step raises
  :class:`~curator_flows.errors.LeaseLostError`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .acceptance import Acceptance
from .backends.openai import chat_completion_object
from .cost import Prices, resolve_prices
from .credentials import Credentials
from .errors import ConfigError, LeaseLostError
from .lease import ShardLeases
from .ledger import StepLedger
from .pending import WorkItem, count_pending, done_ids, pending_items
from .progress import Progress
from .results import ShardResult, make
from .runs import RunRef, llm_for, open_run, shard_names, shard_sizes
from .store import RunStore

if TYPE_CHECKING:
    from .llm import LLM

log = logging.getLogger("curator_flows.offline")

# backend_params with a name of their own; engine_kwargs must not set them a second time.
_DEDICATED_ENGINE_KEYS = {
    "tensor_parallel_size": "tensor_parallel_size",
    "enforce_eager": "enforce_eager",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "max_model_len": "max_model_length",
    "max_model_length": "max_model_length",
}


def engine_arguments(llm: LLM) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(engine_kwargs, sampling_kwargs)`` for the vLLM generator."""
    params = llm.config.params
    engine: dict[str, Any] = {
        "tensor_parallel_size": params.tensor_parallel_size,
        "enforce_eager": params.enforce_eager,
        "gpu_memory_utilization": params.gpu_memory_utilization,
    }
    if params.max_model_length is not None:
        engine["max_model_len"] = params.max_model_length
    for key in params.engine_kwargs:
        if key in _DEDICATED_ENGINE_KEYS:
            raise ConfigError(
                f"engine_kwargs[{key!r}]: set backend_params[{_DEDICATED_ENGINE_KEYS[key]!r}] "
                "instead"
            )
    engine.update(params.engine_kwargs)
    sampling = {"max_tokens": params.max_tokens, "min_tokens": params.min_tokens}
    sampling.update(llm.generation_params)
    return engine, sampling


def check_params(llm: LLM) -> None:
    """Validate the engine and sampling arguments of an offline ``llm`` without starting (or
    importing) vLLM; raise :class:`ConfigError` naming the bad parameter. Called at ``LLM``
    construction, so a DAG with a typo fails at parse time, not on the GPU worker."""
    from .backends.vllm import validate_params

    engine, sampling = engine_arguments(llm)
    try:
        validate_params(engine, sampling)
    except ValueError as exc:
        raise ConfigError(
            f"invalid vLLM parameters (backend_params / engine_kwargs / generation_params): {exc}"
        ) from None


def build_generator(llm: LLM) -> Any:
    """A :class:`~curator_flows.backends.vllm.VLLMGenerator` for ``llm`` (starts the engine)."""
    from .backends.vllm import VLLMGenerator

    engine, sampling = engine_arguments(llm)
    schema = llm.schema()
    try:
        return VLLMGenerator(llm.model_name, engine, sampling, schema[1] if schema else None)
    except ImportError as exc:  # vLLM not installed on this worker
        raise ConfigError(str(exc)) from exc
    except ValueError as exc:  # parameters the installed vLLM refuses
        raise ConfigError(f"vLLM refused the engine or sampling parameters: {exc}") from exc


class _Eager:
    """A generator with only ``generate()`` (a stand-in, a custom engine), seen through the
    queueing interface: each chunk is generated when submitted, one chunk at a time."""

    unfinished = 0

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def submit(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.generator.generate(requests)

    def done(self, outputs: Any) -> bool:
        return True

    def wait(self, submissions: list[Any], refill_below: int = 0) -> list[Any]:
        return submissions

    def collect(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return outputs

    def cancel(self, outputs: Any) -> None:
        pass


class _Chunk:
    __slots__ = ("items", "parts", "started")

    def __init__(self, items: list[WorkItem], parts: list[tuple[list[WorkItem], Any]]):
        self.items = items
        self.parts = parts  # (items, submission) or (items, "reason vLLM rejected them")
        self.started = time.monotonic()

    def submissions(self) -> list[Any]:
        return [sub for _, sub in self.parts if not isinstance(sub, str)]


class _OfflineRunner:
    """Feeds pending requests to the engine in chunks of ``batch_size`` and stores each
    chunk's responses as soon as the whole chunk is done.

    With a queueing generator (``submit`` / ``wait`` / ``collect``, like VLLMGenerator) the
    engine is topped up with the next chunk whenever fewer than its capacity plus one chunk
    of requests are left in it, and chunks are stored in the order they finish: a chunk with
    one long output never holds back the others, and freed slots never wait for a chunk
    boundary. A generator with only ``generate()`` runs one chunk at a time."""

    def __init__(self, store: RunStore, llm: LLM, generator: Any, prices: Prices, progress):
        params = llm.config.params
        self.store = store
        self.queueing = getattr(generator, "queues", True) and all(
            hasattr(generator, name) for name in ("submit", "wait", "collect", "done")
        )
        self.engine = generator if self.queueing else _Eager(generator)
        self.prices = prices
        self.progress = progress
        self.acceptance = Acceptance(llm)
        self.model_name = llm.model_name
        self.keep_completions = bool(llm.return_completions_object)
        self.max_retries = params.max_retries
        self.batch_size = params.batch_size
        capacity = getattr(generator, "capacity", None) or 0
        # Submit another chunk while no more than this many requests are left in the engine:
        # its capacity stays busy and a chunk's worth waits behind it.
        self.low_water = capacity + self.batch_size
        self.ledger: StepLedger | None = None
        self.leases: ShardLeases | None = None
        self.lease_lost: LeaseLostError | None = None
        self.retries: deque[WorkItem] = deque()
        self.appenders: dict[str, Any] = {}
        self.counts = {
            "sent": 0,
            "succeeded": 0,
            "failed": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost": 0.0,
            "chunks": 0,
            "latency_total": 0.0,
            "max_in_flight": 0,
        }

    def _next_chunk(self, fresh: Iterator[WorkItem]) -> list[WorkItem]:
        """Up to ``batch_size`` items: waiting retries first, then fresh pending requests."""
        size = self.batch_size
        chunk = [self.retries.popleft() for _ in range(min(size, len(self.retries)))]
        chunk.extend(itertools.islice(fresh, size - len(chunk)))
        if chunk:
            self.counts["chunks"] += 1
            self.counts["sent"] += len(chunk)
        return chunk

    def run(self, pending: Iterator[WorkItem]) -> None:
        active: list[_Chunk] = []
        try:
            self._run(pending, active)
            if self.lease_lost is not None:
                raise self.lease_lost  # after storing every chunk that was in the engine
        except BaseException:
            for chunk in active:  # leave nothing running in a caller's engine
                for submission in chunk.submissions():
                    self.engine.cancel(submission)
            raise
        finally:
            for appender in self.appenders.values():
                appender.close()
            self.progress.tick(force=True)

    def _run(self, pending: Iterator[WorkItem], active: list[_Chunk]) -> None:
        more = True  # pending requests (or retries) may be left
        while True:
            while (
                more
                and (self.engine.unfinished <= self.low_water if self.queueing else not active)
                and self._fenced()
            ):
                items = self._next_chunk(pending)
                if not items:
                    more = False
                    break
                active.append(_Chunk(items, self._submit(items)))
            if not active:
                return
            in_flight = self.engine.unfinished if self.queueing else len(active[0].items)
            self.counts["max_in_flight"] = max(self.counts["max_in_flight"], in_flight)
            submissions = [sub for chunk in active for sub in chunk.submissions()]
            self.engine.wait(submissions, refill_below=self.low_water + 1 if more else 0)
            for chunk in [c for c in active if all(map(self.engine.done, c.submissions()))]:
                outputs: list[dict[str, Any] | str] = []
                for items, submission in chunk.parts:
                    if isinstance(submission, str):
                        outputs.extend([submission] * len(items))
                    else:
                        outputs.extend(self.engine.collect(submission))
                active.remove(chunk)
                self._store(chunk, outputs)
                more = more or bool(self.retries)

    def _fenced(self) -> bool:
        """Right before a chunk is submitted: whether the shard leases are still certainly
        this worker's (no I/O). Once not, nothing more is submitted."""
        if self.leases is not None and self.lease_lost is None:
            try:
                self.leases.check()
            except LeaseLostError as exc:
                log.error("stopping: %s", exc)
                self.lease_lost = exc
        return self.lease_lost is None

    def _submit(self, items: list[WorkItem]) -> list[tuple[list[WorkItem], Any]]:
        """Queue the chunk. vLLM rejects a whole call when one request is invalid (a prompt
        longer than the context): then the chunk is bisected, so every other request is
        still generated and only the rejected ones fail, with vLLM's reason."""
        requests = [
            {"custom_id": item.id, "messages": item.messages, "params": item.params}
            for item in items
        ]
        try:
            return [(items, self.engine.submit(requests))]
        except ValueError as exc:
            if len(items) == 1:
                return [(items, f"rejected by vLLM: {exc}")]
            log.warning("vLLM rejected a chunk of %d requests (%s); bisecting", len(items), exc)
        half = len(items) // 2
        return self._submit(items[:half]) + self._submit(items[half:])

    def _store(self, chunk: _Chunk, outputs: list[dict[str, Any] | str]) -> None:
        """Record a finished chunk's responses and append them before anything else is stored."""
        latency = time.monotonic() - chunk.started
        if len(outputs) > 1 and not self.counts["succeeded"]:
            if all(isinstance(out, str) for out in outputs):
                raise ConfigError(
                    f"vLLM rejected each of the {len(outputs)} requests of a chunk on its "
                    "own before any request succeeded: a configuration problem, most "
                    f"likely. {outputs[0]}"
                )
        self.counts["latency_total"] += latency * len(chunk.items)
        lines: dict[str, list[dict[str, Any]]] = {}
        for item, out in zip(chunk.items, outputs, strict=True):
            record = self._record(item, out, latency)
            if record is not None:
                lines.setdefault(item.shard, []).append(record)
        self._append(lines)
        counters = self.progress.counters
        counters.input_tokens = self.counts["input_tokens"]
        counters.output_tokens = self.counts["output_tokens"]
        counters.cost = self.counts["cost"]
        self.record_ledger()
        self.progress.tick()

    def record_ledger(self, final: bool = False) -> None:
        if self.ledger is None:
            return
        self.ledger.set(**{k: v for k, v in self.counts.items() if k != "chunks"})
        if final:
            self.ledger.close()
        else:
            self.ledger.flush()

    def _record(self, item: WorkItem, out: dict[str, Any] | str, latency: float):
        """The response line for ``item``, or None when it goes back for a retry."""
        item.attempts += 1
        if isinstance(out, str):  # rejected before generation: retrying cannot help
            return self._failure(item, out, retryable=False)
        used_in = out["usage"]["prompt_tokens"]
        used_out = out["usage"]["completion_tokens"]
        cost = self.prices.cost(used_in, used_out)
        self.counts["input_tokens"] += used_in
        self.counts["output_tokens"] += used_out
        self.counts["cost"] += cost
        problem = self.acceptance.problem(out["finish_reason"], out["content"])
        if problem is not None:
            item.waste(used_in, used_out, cost)
            if item.attempts <= self.max_retries:
                self.retries.append(item)
                return None
            return self._failure(
                item, f"{problem} (after {item.attempts} attempts)", retryable=False
            )
        extra = None
        if self.keep_completions:
            usage = (used_in, used_out)
            completion = chat_completion_object(
                self.model_name, item.id, out["content"], out["finish_reason"], usage
            )
            extra = {"completion": completion}
        record = item.success_line(
            out["content"],
            out["finish_reason"],
            (used_in, used_out),
            cost,
            latency,
            item.attempts,
            extra,
        )
        self.counts["succeeded"] += 1
        self.progress.counters.done += 1
        return record

    def _failure(self, item: WorkItem, reason: str, *, retryable: bool) -> dict[str, Any]:
        record = item.failure_line(reason, retryable=retryable)
        self.counts["failed"] += 1
        self.progress.counters.failed += 1
        return record

    def _append(self, lines: dict[str, list[dict[str, Any]]]) -> None:
        for shard, records in lines.items():
            appender = self.appenders.get(shard)
            if appender is None:
                appender = self.appenders[shard] = self.store.appender(f"responses/{shard}")
            appender.append_many(records)
            appender.flush()


def run_offline(
    run: RunRef,
    shard: str | list[str] | None = None,
    *,
    llm: LLM | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
    generator: Any = None,
) -> ShardResult:
    """Generate the pending requests of ``shard`` (a name, a list, or all) on this worker.

    Needs only the run URI (the ``LLM`` is rebuilt from the manifest). Idempotent: requests with
    a stored response are skipped, so a re-run after a crash generates only what is missing.
    ``generator`` lets a caller reuse one open engine across several steps of one process (it
    is not closed here); otherwise the engine is built here and shut down at the end.

    ``details`` holds ``chunks``, ``engine_seconds`` (the engine start-up) and
    ``generate_seconds`` (the rest)."""
    credentials = Credentials.coerce(credentials)
    store, manifest = open_run(run, credentials.storage_options, mode="offline")
    llm = llm_for(manifest, llm)
    params = llm.config.params
    names = shard_names(manifest, shard)
    base = {"run_uri": store.uri, "run_id": manifest["run_id"], "shards": names}
    with ShardLeases(store, names, params.lease_seconds) as leases:
        done = done_ids(store, names)  # read under the lease: nobody else is appending now
        pending = count_pending(shard_sizes(manifest), done)
        if not pending:
            return make(ShardResult, **base)
        started = time.monotonic()
        own_generator = generator is None
        if own_generator:
            generator = build_generator(llm)
        engine_seconds = time.monotonic() - started
        runner = _OfflineRunner(
            store,
            llm,
            generator,
            resolve_prices(llm.model_name, params.in_mtok_cost, params.out_mtok_cost),
            Progress(
                f"{llm.model_name} {manifest['run_id']}", pending, params.progress, shards=names
            ),
        )
        runner.ledger = StepLedger(store, "run_offline", names)
        runner.leases = leases
        try:
            runner.run(pending_items(store, names, done))
            generate_seconds = time.monotonic() - started - engine_seconds
        finally:
            runner.record_ledger(final=True)
            if own_generator:
                generator.close()
    counts = dict(runner.counts)
    chunks = counts.pop("chunks")
    return make(
        ShardResult,
        **base,
        pending_before=pending,
        **counts,
        elapsed=time.monotonic() - started,
        details={
            "chunks": chunks,
            "engine_seconds": engine_seconds,
            "generate_seconds": generate_seconds,
        },
    )
