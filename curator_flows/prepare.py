"""The prepare step: input rows → request shards + manifest.

Invariants:
- a run is what it sends: rows are rendered once (``prompt()`` on every row) into local request
  shards, and the run id hashes the family (model, generation params, schema, output-affecting
  backend params, ``run_key``), the mode and the exact bytes of every request line (id, row,
  messages, input row). Any change to what is sent (a constant, a helper, an instance attribute
  read by ``prompt()``) or to the input gives a new run; nothing stale comes back;
- rows stream through once (``curator_flows.inputs``: any dataset, a one-shot generator too)
  and request shards are spooled on local disk; ``prompt()`` and ``parse()`` receive the row
  decoded from its stored bytes (``curator_flows.rowcodec``), so both see the same values;
- memory: a chunk of input rows, one request line, and 8-16 bytes per request for the ids
  seen (``RequestIds``); reusing a sibling run's responses (only when one exists) adds 24 to
  40 bytes per request in numpy arrays (``curator_flows.reuse``);
- the manifest is written last: a run directory with a manifest is fully prepared, and a
  prepare that crashed is simply redone (shard files are replaced whole, the responses copied
  from sibling runs are removed and copied again);
- the LLM's ``system_prompt`` is rendered into every request (the first message); a row's
  ``generation_params`` (a dict or its JSON string) is validated and carried by its request
  line (``params``) and covered by its request id, since both change what is sent;
- a bad row fails with an error that names the row (and column), before any request is sent;
- shards respect the mode's limits on requests and bytes per shard: ``shard_size`` in every
  mode (in batch mode with ``batch_size``, both capped by the provider's per-batch limits, which
  are the default there), and at most ``max_shards`` shards (what an orchestrator can fan out
  to): when the rows need more, shards grow to hold them (never past a batch provider's
  per-batch limits: then a ``ConfigError``), and the log says so. Sharding never changes a
  run's id (the id hashes the request lines, not where the shards split them);
- a batch run's shards carry their estimated input tokens (``input_tokens``), what they hold of
  the provider's batch queue (see ``curator_flows.batch.queue``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import shutil
import tempfile
import time
from array import array
from typing import TYPE_CHECKING, Any

import orjson

from .credentials import Credentials, check_storage_credentials
from .errors import ConfigError, InputError, NotSupportedError, PromptError
from .fingerprint import RequestIds, digest
from .inputs import iter_rows
from .pending import run_pending
from .results import PrepareResult, make
from .reuse import SpooledIds, reuse_sibling_responses, sibling_runs
from .rowcodec import encode_row
from .runs import read_manifest, shard_sizes
from .store import MANIFEST, RunStore, default_working_dir, join_uri, shard_name

if TYPE_CHECKING:
    from .llm import LLM

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2
_BATCH_LINE_OVERHEAD = 160  # custom_id, method, url and JSON punctuation of one batch line


def to_messages(index: int, value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value
        )
    ):
        return value
    raise PromptError(
        f"prompt() on row {index} returned {type(value).__name__}: expected a string or a "
        "non-empty list of {'role': ..., 'content': ...} messages"
    )


def shard_limits(llm: LLM) -> tuple[int, int]:
    """(max requests, max bytes) per shard for the LLM's mode: ``shard_size``; in batch mode
    also ``batch_size`` (the smaller of the two given), capped by the provider's per-batch
    limits, which are the default there."""
    params = llm.config.params
    if llm.mode == "batch":
        max_requests, max_bytes = provider_batch_limits(llm)
        asked = [params.batch_size] if params.batch_size else []
        if "shard_size" in params.model_fields_set:
            asked.append(params.shard_size)
        if asked and min(asked) > max_requests:
            log.warning(
                "%s batches hold at most %d requests: shards of %d requests would not fit, so "
                "shards hold %d",
                llm.backend,
                max_requests,
                min(asked),
                max_requests,
            )
        return min([max_requests, *asked]), max_bytes
    return params.shard_size, 1 << 62


def provider_batch_limits(llm: LLM) -> tuple[int, int]:
    """(requests, bytes) one provider batch may hold."""
    from .batch.sizing import BATCH_LIMITS

    return BATCH_LIMITS[llm.backend]


def run_id_for(family: str, content_fp: str, mode: str) -> str:
    return f"{family[:12]}-{digest(family, content_fp, mode)[:20]}"


#: the input column whose value overrides the LLM's generation params for its row (Curator's)
ROW_PARAMS_COLUMN = "generation_params"


class _Renderer:
    """Renders rows into request lines with content-addressed ids."""

    def __init__(self, llm: LLM, family: str) -> None:
        self.llm = llm
        self.takes_input = bool(inspect.signature(llm.prompt).parameters)
        self.ids = RequestIds(family)
        self.checked_params: set[bytes] = set()
        #: the estimated input tokens of the last request (batch mode only, else 0)
        self.last_tokens = 0
        self._tokens = None
        if llm.mode == "batch":
            from .batch.queue import request_tokens

            self._tokens = request_tokens

    def row_params(self, index: int, row: Any) -> bytes | None:
        """The row's own generation params as canonical JSON (``None``: the LLM's apply)."""
        if not isinstance(row, dict) or row.get(ROW_PARAMS_COLUMN) is None:
            return None
        value = row[ROW_PARAMS_COLUMN]
        where = f"row {index}, column {ROW_PARAMS_COLUMN!r}"
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise InputError(
                    f"{where}: not a JSON object ({exc}); give the row's generation params as a "
                    "dict or its JSON string"
                ) from None
        if not isinstance(value, dict):
            raise InputError(
                f"{where}: expected a dict of generation params (or its JSON string), got "
                f"{type(value).__name__}"
            )
        if not value:
            return None
        try:
            encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise InputError(f"{where}: not JSON-serialisable: {exc}") from None
        if encoded not in self.checked_params:
            self._check_params(where, value)
            self.checked_params.add(encoded)
        return encoded

    def _check_params(self, where: str, params: dict[str, Any]) -> None:
        llm = self.llm
        merged = {**llm.generation_params, **params}
        try:
            if llm.mode == "offline":
                from .backends.vllm import validate_params
                from .offline import engine_arguments

                _, sampling = engine_arguments(llm)
                validate_params({}, {**sampling, **params})
            else:
                from .genparams import validate_generation_params

                validate_generation_params(
                    llm.backend,
                    merged,
                    custom_endpoint=llm.config.params.base_url is not None
                    or llm.provider != llm.backend,
                )
        except (ValueError, ConfigError) as exc:
            raise InputError(f"{where}: {exc}") from None

    def messages(self, index: int, value: Any) -> list[dict[str, Any]]:
        """``prompt()``'s answer as chat messages, with the LLM's system prompt first."""
        messages = to_messages(index, value)
        system_prompt = self.llm.system_prompt
        if system_prompt is None:
            return messages
        if any(m.get("role") in ("system", "developer") for m in messages):
            raise PromptError(
                f"prompt() on row {index} returned a system message while the LLM has "
                "system_prompt set: give the system prompt in one place (as Curator, this is "
                "refused rather than sending two)"
            )
        return [{"role": "system", "content": system_prompt}, *messages]

    def request(self, index: int, row: Any) -> tuple[bytes, str, int]:
        """``(request line, request id, bytes the request adds to the body: its messages and
        its own params)`` of row ``index``."""
        row_json, row = encode_row(index, row)  # prompt() and parse() see the same stored row
        llm = self.llm
        try:
            value = llm.prompt(row) if self.takes_input else llm.prompt()
        except NotSupportedError as exc:  # a Curator feature left out (types.Image, ...)
            raise NotSupportedError(f"prompt() on row {index}: {exc}") from exc
        except Exception as exc:
            raise PromptError(
                f"prompt() raised on row {index}: {type(exc).__name__}: {exc}"
            ) from exc
        messages = self.messages(index, value)
        if self._tokens is not None:
            self.last_tokens = self._tokens(messages)
        try:
            messages_json = orjson.dumps(messages)
        except TypeError as exc:
            raise PromptError(_unencodable_messages(index, messages, exc)) from None
        params_json = self.row_params(index, row)
        if params_json is None:
            request_id = self.ids.next_id(messages_json)
            params_part = b""
        else:
            request_id = self.ids.next_id(messages_json + b"\x00" + params_json)
            params_part = b',"params":' + params_json
        line = b"".join(
            (
                b'{"id":"',
                request_id.encode(),
                b'","row":',
                str(index).encode(),
                b',"messages":',
                messages_json,
                params_part,
                b',"input":',
                row_json,
                b"}\n",
            )
        )
        return line, request_id, len(messages_json) + len(params_part)


def _unencodable_messages(index: int, messages: list[dict[str, Any]], exc: TypeError) -> str:
    """What in ``prompt()``'s messages for row ``index`` cannot be sent as JSON, and why."""
    where = ""
    for position, message in enumerate(messages):
        for key, value in message.items():
            try:
                orjson.dumps({key: value})
            except TypeError:
                where = f" (message {position}, {key!r})"
                break
        if where:
            break
    if "surrogates" in str(exc):
        return (
            f"prompt() on row {index} returned text that is not valid Unicode{where}: it holds "
            "a lone surrogate (half of a UTF-16 pair, often from bad decoding); clean it, e.g. "
            "text.encode('utf-8', 'replace').decode('utf-8')"
        )
    return f"prompt() on row {index} returned messages that cannot be encoded as JSON{where}: {exc}"


def _render_shards(
    llm: LLM,
    dataset: Any,
    family: str,
    spool_dir: str,
    storage_options: dict[str, Any],
    max_shards: int | None = None,
) -> tuple[list[dict[str, Any]], str, int]:
    """Render every row into ``spool_dir/<shard>.jsonl``; return ``(shards, content
    fingerprint, rows)``. Each spooled shard has a ``<shard>.meta`` next to it: per request its
    batch-line bytes and estimated input tokens (``uint32`` pairs), for regrouping."""
    max_requests, max_bytes = shard_limits(llm)
    overhead = _line_overhead(llm)
    renderer = _Renderer(llm, family)
    hasher = hashlib.blake2b(digest_size=16)
    rows = 0
    with _ShardPacker(llm, spool_dir, max_requests, max_bytes) as packer:
        for index, row in enumerate(iter_rows(dataset, storage_options)):
            rows += 1
            line, _, messages_size = renderer.request(index, row)
            packer.add(line, messages_size + overhead, renderer.last_tokens)
            hasher.update(line)
    shards = packer.shards
    if max_shards is not None and len(shards) > max_shards:
        shards = _regroup(llm, spool_dir, shards, max_shards, max_requests, max_bytes)
    return shards, hasher.hexdigest(), rows


class _ShardPacker:
    """Writes request lines into ``<directory>/<shard>.jsonl`` in order, starting the next shard
    when the current one holds ``max_requests`` or the next line would pass ``max_bytes``; each
    shard gets a ``<shard>.meta`` beside it (per request its batch-line bytes and estimated
    input tokens, ``uint32`` pairs), so its shards can be regrouped without rendering again."""

    def __init__(self, llm: LLM, directory: str, max_requests: int, max_bytes: int) -> None:
        self.llm, self.directory = llm, directory
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.shards: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.handle: Any = None
        self.meta = array("I")

    def add(self, line: bytes, size: int, tokens: int) -> None:
        current = self.current
        if (
            current is None
            or current["requests"] >= self.max_requests
            or (current["requests"] and current["bytes"] + size > self.max_bytes)
        ):
            current = self._next_shard()
        self.handle.write(line)
        current["requests"] += 1
        current["bytes"] += size
        self.meta.append(size)
        self.meta.append(tokens)
        if "input_tokens" in current:
            current["input_tokens"] += tokens

    def _next_shard(self) -> dict[str, Any]:
        self._close_shard()
        shard: dict[str, Any] = {"name": shard_name(len(self.shards)), "requests": 0, "bytes": 0}
        if self.llm.mode == "batch":
            shard["input_tokens"] = 0
        self.shards.append(shard)
        self.current = shard
        self.handle = open(os.path.join(self.directory, f"{shard['name']}.jsonl"), "wb", 1 << 20)
        return shard

    def _close_shard(self) -> None:
        if self.handle is None:
            return
        self.handle.close()
        self.handle = None
        with open(os.path.join(self.directory, f"{self.current['name']}.meta"), "wb") as meta:
            self.meta.tofile(meta)
        del self.meta[:]

    def __enter__(self) -> _ShardPacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_shard()


def _regroup(
    llm: LLM,
    spool_dir: str,
    shards: list[dict[str, Any]],
    max_shards: int,
    max_requests: int,
    max_bytes: int,
) -> list[dict[str, Any]]:
    """The spooled ``shards`` (more than ``max_shards``) regrouped, in order, into at most
    ``max_shards`` larger ones; raises ``ConfigError`` when a batch provider's per-batch limits
    cannot hold the run in that many."""
    total = sum(s["requests"] for s in shards)
    target = math.ceil(total / max_shards)
    if llm.mode == "batch":
        cap_requests, cap_bytes = provider_batch_limits(llm)
        if target > cap_requests:
            raise ConfigError(
                f"{total:,} requests do not fit in max_shards={max_shards} batch shards: one "
                f"{llm.backend} batch holds at most {cap_requests:,} requests. Raise max_shards "
                "(Airflow: [core] max_map_length), or split the dataset into several runs"
            )
        max_bytes = cap_bytes
    log.warning(
        "%d requests make %d shards of up to %d requests, more than max_shards=%d (what the "
        "orchestrator can fan out to): shards grow to up to %d requests",
        total,
        len(shards),
        max_requests,
        max_shards,
        target,
    )
    out_dir = os.path.join(spool_dir, "regrouped")
    os.makedirs(out_dir)
    with _ShardPacker(llm, out_dir, target, max_bytes) as packer:
        for old in shards:
            sizes = array("I")
            with open(os.path.join(spool_dir, f"{old['name']}.meta"), "rb") as source:
                sizes.fromfile(source, 2 * old["requests"])
            with open(os.path.join(spool_dir, f"{old['name']}.jsonl"), "rb", 1 << 20) as lines:
                for position, line in enumerate(lines):
                    packer.add(line, sizes[2 * position], sizes[2 * position + 1])
    regrouped = packer.shards
    if len(regrouped) > max_shards:
        raise ConfigError(
            f"{total:,} requests ({sum(s['bytes'] for s in shards):,} bytes) do not fit in "
            f"max_shards={max_shards} batch shards: one {llm.backend} batch holds at most "
            f"{max_bytes:,} bytes. Raise max_shards (Airflow: [core] max_map_length), or "
            "split the dataset into several runs"
        )
    for old in shards:
        for suffix in (".jsonl", ".meta"):
            os.remove(os.path.join(spool_dir, old["name"] + suffix))
    for shard in regrouped:
        for suffix in (".jsonl", ".meta"):
            os.replace(
                os.path.join(out_dir, shard["name"] + suffix),
                os.path.join(spool_dir, shard["name"] + suffix),
            )
    os.rmdir(out_dir)
    return regrouped


def _line_overhead(llm: LLM) -> int:
    if llm.mode == "batch":  # the exact size of the provider's batch line (see batch.sizing)
        from .batch.sizing import line_overhead

        return line_overhead(llm)
    return _BATCH_LINE_OVERHEAD + len(
        orjson.dumps(
            {"model": llm.model_name, "params": llm.generation_params, "schema": llm.schema()}
        )
    )


def prepare_run(
    llm: LLM,
    dataset: Any,
    working_dir: str | None = None,
    *,
    run_key: str | None = None,
    credentials: Credentials | None = None,
    max_shards: int | None = None,
) -> tuple[RunStore, dict[str, Any], bool]:
    """Prepare (or re-open, when already prepared) the run of ``llm`` over ``dataset``;
    return ``(store, manifest, created)``. ``max_shards``: at most this many shards (a run
    prepared before keeps its shards)."""
    if run_key is not None and not isinstance(run_key, str):
        raise InputError(f"run_key must be a string, got {type(run_key).__name__}")
    check_max_shards(max_shards)
    credentials = credentials or Credentials()
    storage_options = credentials.storage_options
    working_dir = (working_dir or default_working_dir()).rstrip("/")
    check_storage_credentials(working_dir, storage_options)  # before reading any row
    family = llm.family_fingerprint(run_key)
    spool_dir = tempfile.mkdtemp(prefix="curator-flows-spool-")
    try:
        shards, content_fp, rows = _render_shards(
            llm, dataset, family, spool_dir, storage_options, max_shards
        )
        run_id = run_id_for(family, content_fp, llm.mode)
        store = RunStore(join_uri(working_dir, run_id), storage_options)
        prepared = read_manifest(store)
        if prepared is not None:
            if max_shards is not None and len(prepared["shards"]) > max_shards:
                raise ConfigError(
                    f"run {store.uri} was prepared before in {len(prepared['shards'])} shards, "
                    f"more than max_shards={max_shards}; its shards cannot change once prepared. "
                    "Prepare it under a new run_key or working_dir, or raise max_shards"
                )
            return store, prepared, False
        store.remove("responses")  # copies a prepare that crashed before its manifest left
        siblings = [s for s in sibling_runs(working_dir, family, storage_options) if s != run_id]
        ids = SpooledIds(spool_dir, shards) if siblings and shards else None
        for shard in shards:
            store.put_local_file(
                os.path.join(spool_dir, f"{shard['name']}.jsonl"), f"requests/{shard['name']}.jsonl"
            )
        reused = reuse_sibling_responses(store, working_dir, siblings, ids) if ids else 0
        del ids
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    now = time.time()
    manifest = {
        "version": MANIFEST_VERSION,
        "run_id": run_id,
        "run_uri": store.uri,
        "run_key": run_key,
        "working_dir": working_dir,
        "mode": llm.mode,
        "backend": llm.backend,
        "model_name": llm.model_name,
        "llm": llm.spec(),
        "config": llm.config.public_dict(),
        "fingerprints": {"family": family, "content": content_fp},
        "rows": rows,
        "requests": sum(s["requests"] for s in shards),
        "reused_responses": reused,
        "shards": shards,
        "created_at": now,
        "updated_at": now,
    }
    store.write_json(MANIFEST, manifest)
    return store, manifest, True


def check_max_shards(max_shards: Any) -> None:
    if max_shards is not None and (
        not isinstance(max_shards, int) or isinstance(max_shards, bool) or max_shards < 1
    ):
        raise ConfigError(f"max_shards must be a positive integer or None, got {max_shards!r}")


def prepare(
    llm: LLM,
    dataset: Any = None,
    working_dir: str | None = None,
    *,
    run_key: str | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
    max_shards: int | None = None,
) -> PrepareResult:
    """Write the request shards and manifest (idempotent); see ``steps.prepare``."""
    credentials = Credentials.coerce(credentials)
    store, manifest, created = prepare_run(
        llm, dataset, working_dir, run_key=run_key, credentials=credentials, max_shards=max_shards
    )
    return make(
        PrepareResult,
        run_uri=store.uri,
        run_id=manifest["run_id"],
        run_key=manifest.get("run_key"),
        mode=manifest["mode"],
        backend=manifest["backend"],
        model_name=manifest["model_name"],
        shards=[s["name"] for s in manifest["shards"]],
        rows=manifest["rows"],
        requests=manifest["requests"],
        reused_responses=manifest.get("reused_responses", 0),
        # a run created just now holds only the responses copied into it
        pending=manifest["requests"] - manifest["reused_responses"]
        if created
        else run_pending(store, shard_sizes(manifest)),
        created=created,
    )
