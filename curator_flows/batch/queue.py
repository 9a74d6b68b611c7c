"""The provider's batch queue: submit no more than it holds; a full queue means wait, not fail.

OpenAI limits the input tokens of one model's live batches per organization (the *enqueued
token limit*; ``max_tokens`` does not count): a batch past it is created, then fails validation
with ``token_limit_exceeded`` ("Enqueued token limit reached for <model> in organization <org>.
Limit: N enqueued tokens. Please try again once some in_progress batches have been
completed."). Anthropic limits the batch requests in its processing queue: a create past it is
answered 429 ``rate_limit_error``.

Invariants:
- a refusal is not an attempt: the refused round is closed without a response line
  (:meth:`~.records.BatchRecord.close_refused`), the round after it keeps its ``attempt`` (so
  ``max_retries`` never counts it), and the shard waits (state ``queued``) until it is admitted;
- a shard's next batch is created only once the shard is *admitted*: the run's live batches
  and its own stay within every known limit, ``max_enqueued_tokens`` / ``max_enqueued_requests``
  (backend params) and the limits refusals taught (``batches/_queue_limits.json``: OpenAI's
  message names its limit; otherwise what was live when the provider refused, less one, for
  :data:`LEARNED_TTL` seconds). While nothing of the run is live a shard is always admitted (a
  probe of the provider's queue), unless other work fills the queue (a batch admitted under a
  limit the refusal confirms, or refused with nothing of the run live): then the run backs off
  in time, doubling up to :data:`MAX_BACKOFF`. While no limit is known at all, the run starts
  slowly: at most :data:`SLOW_START` live batches plus two for each one the provider took (past
  validation), so the first burst of a many-shard run learns the limit from a few refusals;
- what is live is shared through the run directory, so every worker submitting shards of one
  run paces with the others: ``batches/_queue/<shard>.r<round>.json`` is a *claim* (tokens,
  requests, time) written before the round's intent and removed when the round leaves the
  provider's queue (it ended, or was refused). A claim whose round the shard's record shows
  ended, or that never became a round within ``lease_seconds``, is stale: it counts for nobody
  and the next admission removes it;
- racing admissions: a worker writes its claim as ``pending``, lists the claims, and counts
  every admitted claim and every pending claim ordered before its own (time, then shard); it is
  admitted when its own fits, else it withdraws its claim. The order makes racing workers agree,
  except when a claim ordered first becomes visible only after another worker listed (its write
  was slower than the other's write and listing): then both go, and the queue holds at most one
  shard more per worker racing within that window. A refusal then teaches the limit.

Estimates: a request's input tokens are estimated offline (:func:`request_tokens`: the run's
rate-limit estimate plus one token a message for rounding), so they err high, and a provider
that counts more than the estimate refuses, which only costs a wait.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import BatchStepError, ConfigError
from ..store import RunStore
from ..tokens import estimate_prompt_tokens

log = logging.getLogger(__name__)

QUEUE_DIR = "batches/_queue"
LIMITS_FILE = "batches/_queue_limits.json"
#: seconds a limit learned from a refusal holds before the queue is probed again
LEARNED_TTL = 600.0
#: the longest wait after refusals that came while nothing of the run was live
MAX_BACKOFF = 900.0
KINDS = ("tokens", "requests")
#: batches submitted at once while no queue limit is known, plus two for each live batch the
#: provider took: a first burst of a many-shard run learns the limit without paying for
#: (uploading, creating) a refused batch per shard
SLOW_START = 4
#: provider statuses of a batch not yet taken (OpenAI refuses at the end of validation)
PROBATION = ("validating", None)
PARAMS = {"tokens": "max_enqueued_tokens", "requests": "max_enqueued_requests"}
#: OpenAI's words for a batch its model's enqueued limit refused (an ``errors.data`` item)
_OPENAI_REFUSAL = re.compile(r"Enqueued (token|request) limit reached.*?Limit: ([\d,]+)", re.S)
_REFUSAL_CODES = {"token_limit_exceeded": "tokens", "request_limit_exceeded": "requests"}


def request_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimated input tokens of one request, as a batch queue limit counts them."""
    return estimate_prompt_tokens(messages) + len(messages)


class InputTally:
    """Counts the estimated input tokens of the requests that pass through :meth:`over`."""

    def __init__(self) -> None:
        self.tokens = 0

    def over(self, requests: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for request in requests:
            self.tokens += request_tokens(request["messages"])
            yield request


@dataclass(frozen=True)
class Load:
    """What a batch (or the run's live batches) holds of the provider's queue."""

    tokens: int = 0
    requests: int = 0

    def of(self, kind: str) -> int:
        return self.tokens if kind == "tokens" else self.requests


@dataclass(frozen=True)
class Verdict:
    """Whether a shard may create its batch now; if not, how long to wait and for what."""

    admitted: bool
    wait_seconds: float = 0.0
    waiting_for: str = ""
    #: the limits it was admitted under (``kind -> limit``): a refusal of a batch admitted
    #: under a limit the provider confirms means other work fills the queue
    limits: dict[str, int] | None = None


def refusal_of(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The queue limit that refused round ``entry`` (``{"kind", "limit", "message"}``), or
    ``None``: an OpenAI batch that failed validation with the enqueued limit's error, or a round
    already closed as refused."""
    if entry.get("refused"):
        return entry["refused"]
    if entry.get("status") != "failed":
        return None
    for error in entry.get("errors") or []:
        code = error.split(":", 1)[0].strip()
        match = _OPENAI_REFUSAL.search(error)
        if match is None and code not in _REFUSAL_CODES:
            continue
        kind = _REFUSAL_CODES.get(code, "tokens")
        limit = None
        if match is not None:
            kind = "tokens" if match.group(1) == "token" else "requests"
            limit = int(match.group(2).replace(",", ""))
        return {"kind": kind, "limit": limit, "message": error[:500]}
    return None


def claim_path(shard: str, round_index: int) -> str:
    return f"{QUEUE_DIR}/{shard}.r{round_index}.json"


def _claim_shape_ok(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("shard"), str)
        and isinstance(data.get("round"), int)
        and isinstance(data.get("tokens"), int)
        and isinstance(data.get("requests"), int)
        and isinstance(data.get("at"), int | float)
        and data.get("state") in ("pending", "admitted")
    )


class BatchQueue:
    """The run's view of the provider's batch queue (see the module doc)."""

    def __init__(
        self,
        store: RunStore,
        model: str,
        *,
        max_tokens: int | None,
        max_requests: int | None,
        lease_seconds: float,
        interval: float,
    ) -> None:
        self.store = store
        self.model = model
        self.params = {"tokens": max_tokens, "requests": max_requests}
        self.lease_seconds = lease_seconds
        self.interval = interval

    # ------------------------------------------------------------------ limits
    def learned(self) -> dict[str, Any]:
        """What refusals taught (``{}`` when nothing, or when the file cannot be read)."""
        try:
            data = self.store.read_json_if_exists(LIMITS_FILE)
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            log.warning("ignoring the unreadable %s", self.store.path(LIMITS_FILE))
            return {}
        return data if isinstance(data, dict) else {}

    def limits(self, learned: dict[str, Any], now: float) -> dict[str, tuple[int, str, bool]]:
        """``kind -> (limit, where it comes from, exact)``: the lower of the backend param and
        a limit learned within :data:`LEARNED_TTL`. ``exact``: the provider named it (or the
        user did), so a shard larger than it can never be admitted."""
        out: dict[str, tuple[int, str, bool]] = {}
        for kind in KINDS:
            param = self.params[kind]
            if param:
                out[kind] = (int(param), f"{PARAMS[kind]}={param:,}", True)
            item = learned.get(kind)
            if not isinstance(item, dict) or now - float(item.get("learned_at", 0)) > LEARNED_TTL:
                continue
            limit = int(item["limit"])
            if kind not in out or limit < out[kind][0]:
                exact = bool(item.get("exact"))
                source = "the provider's limit" if exact else "learned from a refusal"
                out[kind] = (limit, f"{limit:,} enqueued {kind} ({source})", exact)
        return out

    # ------------------------------------------------------------------ claims
    def claims(self) -> list[dict[str, Any]]:
        out = []
        for rel in self.store.glob(f"{QUEUE_DIR}/*.json"):
            if ".tmp-" in rel:
                continue
            try:
                data = self.store.read_json(rel)
            except (FileNotFoundError, orjson.JSONDecodeError, UnicodeDecodeError):
                continue  # released meanwhile, or torn: a stale claim counts for nobody
            if _claim_shape_ok(data):
                out.append(data)
        return out

    def _live(self, claim: dict[str, Any], now: float) -> tuple[bool, bool]:
        """``(live, proven)`` of an admitted claim: whether its round is still in the
        provider's queue, and whether the provider took it (created it, past validation)."""
        from .records import SUBMITTED, UNSENT, BatchRecord

        try:
            rounds = BatchRecord.load(self.store, claim["shard"]).rounds
        except BatchStepError:
            return True, False  # an unreadable record: count its claim (waiting errs safe)
        if claim["round"] < len(rounds):
            entry = rounds[claim["round"]]
            proven = bool(entry.get("batch_id")) and entry.get("status") not in PROBATION
            return entry["state"] in (*UNSENT, SUBMITTED), proven
        return now - float(claim["at"]) < self.lease_seconds, False

    def _load(
        self,
        shard: str,
        claims: list[dict[str, Any]],
        now: float,
        mine: dict[str, Any] | None = None,
    ) -> tuple[Load, list[str], list[dict[str, Any]], int]:
        """``(load, shards, stale claims, proven)``: what the run's live batches other than
        ``shard``'s hold, and how many of them the provider took. Pending claims count only
        when ordered before ``mine``."""
        tokens = requests = proven = 0
        names: list[str] = []
        stale: list[dict[str, Any]] = []
        for claim in claims:
            if claim["shard"] == shard:
                continue
            if claim["state"] == "pending":
                if mine is None or (claim["at"], claim["shard"]) > (mine["at"], shard):
                    continue
                if now - float(claim["at"]) > self.lease_seconds:
                    stale.append(claim)
                    continue
            else:
                live, taken = self._live(claim, now)
                if not live:
                    stale.append(claim)
                    continue
                proven += taken
            tokens += claim["tokens"]
            requests += claim["requests"]
            names.append(claim["shard"])
        return Load(tokens, requests), sorted(names), stale, proven

    # ------------------------------------------------------------------ deciding
    def _verdict(
        self, shard: str, own: Load, load: Load, names: list[str], now: float, proven: int = 0
    ) -> Verdict:
        learned = self.learned()
        limits = self.limits(learned, now)
        for kind, (limit, source, exact) in limits.items():
            if exact and own.of(kind) > limit:
                raise ConfigError(
                    f"shard {shard} needs {own.of(kind):,} enqueued {kind} but the provider's "
                    f"batch queue holds {source}: it can never be submitted. Prepare the run "
                    "with smaller shards (backend_params shard_size or batch_size)"
                )
        if not names:  # nothing of the run is live: probe, unless a backoff holds the queue
            probe_after = float(learned.get("probe_after") or 0)
            if now < probe_after:
                return Verdict(
                    False,
                    probe_after - now,
                    "the provider's batch queue to drain (it refused the run's last batch while "
                    f"nothing of this run was live); trying again in {probe_after - now:.0f}s",
                )
            return Verdict(True, limits={kind: item[0] for kind, item in limits.items()})
        if not limits and len(names) >= SLOW_START + 2 * proven:
            return Verdict(
                False,
                self.interval,
                f"the provider to take the run's {len(names)} live batches (no queue limit is "
                f"known: at most {SLOW_START} + twice those it took are submitted at once)",
            )
        for kind, (limit, source, _) in limits.items():
            if load.of(kind) + own.of(kind) > limit:
                return Verdict(
                    False,
                    self.interval,
                    f"room for its {own.of(kind):,} {kind} in the provider's batch queue "
                    f"({source}; {load.of(kind):,} held by the live batches of shard(s) "
                    f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''})",
                )
        return Verdict(True, limits={kind: item[0] for kind, item in limits.items()})

    def check(self, shard: str, own: Load, now: float | None = None) -> Verdict:
        """Whether ``shard`` would be admitted now (reads only; for ``poll``)."""
        now = time.time() if now is None else now
        load, names, _, proven = self._load(shard, self.claims(), now)
        return self._verdict(shard, own, load, names, now, proven)

    def admit(self, shard: str, round_index: int, own: Load) -> Verdict:
        """Claim room for ``shard``'s round ``round_index`` holding ``own``; admitted or not
        (then the claim is withdrawn). A round admitted before (a retried submit) stays so."""
        path = claim_path(shard, round_index)
        existing = self._read_claim(path)
        if existing is not None and existing["state"] == "admitted":
            return Verdict(True)
        now = time.time()
        mine = {
            "shard": shard,
            "round": round_index,
            "tokens": own.tokens,
            "requests": own.requests,
            "at": now,
            "state": "pending",
        }
        self.store.write_json(path, mine)
        claims = self.claims()
        load, names, stale, proven = self._load(shard, claims, now, mine)
        try:
            verdict = self._verdict(shard, own, load, names, now, proven)
        except ConfigError:
            self._discard(path)
            raise
        if not verdict.admitted:
            self._discard(path)
            return verdict
        self.store.write_json(path, {**mine, "state": "admitted"})
        older = [c for c in claims if c["shard"] == shard and c["round"] != round_index]
        for claim in stale + older:
            self._discard(claim_path(claim["shard"], claim["round"]))
        return verdict

    def claim(self, shard: str, round_index: int, own: Load) -> None:
        """Record round ``round_index`` as live whatever the queue holds (an unsent round that
        may exist at the provider already, or a batch adopted from it)."""
        self.store.write_json(
            claim_path(shard, round_index),
            {
                "shard": shard,
                "round": round_index,
                "tokens": own.tokens,
                "requests": own.requests,
                "at": time.time(),
                "state": "admitted",
            },
        )

    def release(self, shard: str, round_index: int) -> None:
        """Round ``round_index`` of ``shard`` left the provider's queue."""
        self._discard(claim_path(shard, round_index))

    def _discard(self, rel: str) -> None:
        """Remove ``rel`` if it is there (another worker may remove the same stale claim)."""
        try:
            self.store.remove(rel)
        except FileNotFoundError:
            pass

    def _read_claim(self, path: str) -> dict[str, Any] | None:
        try:
            data = self.store.read_json_if_exists(path)
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if _claim_shape_ok(data) else None

    # ------------------------------------------------------------------ learning
    def learn(
        self,
        shard: str,
        round_index: int,
        own: Load,
        refusal: dict[str, Any],
        retry_after: float | None = None,
        admitted_under: dict[str, int] | None = None,
    ) -> Verdict:
        """The provider refused round ``round_index`` of ``shard``: release its claim, learn the
        limit, warn, and say how long the shard waits.

        The limit: the one the provider named (OpenAI), else what the run's live batches held
        when it refused, plus the shard, less one (Anthropic answers at once, so the run's load
        now is its load then). Other work fills the queue (so the shard backs off in time)
        when the round was admitted under a limit the refusal does not lower, or when nothing of
        the run is live and no limit was named."""
        self.release(shard, round_index)
        now = time.time()
        load, names, _, _ = self._load(shard, self.claims(), now)
        kind, named = refusal.get("kind"), refusal.get("limit")
        data = self.learned()
        if kind in KINDS:
            limit = int(named) if named else (load.of(kind) + own.of(kind) - 1 if names else 0)
            if limit > 0:
                data[kind] = {
                    "limit": limit,
                    "exact": bool(named),
                    "learned_at": now,
                    "message": str(refusal.get("message") or "")[:500],
                }
        under = (admitted_under or {}).get(kind) if kind in KINDS else None
        crowded = (under is not None and (not named or int(named) >= under)) or (
            not named and not names
        )
        wait = max(self.interval, retry_after or 0.0)
        if crowded:
            refusals = int(data.get("refusals_in_a_row") or 0) + 1
            wait = max(wait, min(MAX_BACKOFF, self.interval * 2 ** (refusals - 1)))
            data["refusals_in_a_row"] = refusals
            data["probe_after"] = now + wait
            waits = f"{wait:.0f}s (other work than this run's fills the queue)"
        else:
            data["refusals_in_a_row"] = 0
            data.pop("probe_after", None)
            holding = (
                f"the live batches of shard(s) {', '.join(names[:10])}"
                f"{' ...' if len(names) > 10 else ''}"
                if names
                else "the run's live batches"
            )
            waits = f"room under the limit: {holding} to finish"
        self.store.write_json(LIMITS_FILE, data)
        log.warning(
            "shard %s round %d: the provider's batch queue for %s is full (%s). Not counted as "
            "an attempt; the shard waits for %s, then is submitted again",
            shard,
            round_index,
            self.model,
            refusal.get("message") or "refused",
            waits,
        )
        return Verdict(False, wait if crowded else self.interval, waits)

    def settled(self) -> None:
        """A batch of the run ran: the provider's queue took it, so no backoff holds."""
        data = self.learned()
        if data.get("refusals_in_a_row") or data.get("probe_after"):
            data["refusals_in_a_row"] = 0
            data.pop("probe_after", None)
            self.store.write_json(LIMITS_FILE, data)
