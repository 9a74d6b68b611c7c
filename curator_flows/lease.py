"""Shard leases: one worker sends a shard's requests at a time.

Orchestrators run the same task twice at once (a zombie worker and its retry, two flow runs).
Before sending, a step takes the lease of each of its shards; a second worker gets
:class:`~curator_flows.errors.LeaseHeldError` (retryable) and sends nothing.

Layout: ``leases/<shard>/<generation>.json`` = ``{"owner", "host", "pid", "pid_scope",
"pid_start", "acquired_at", "expires_at", "released"}``. The lease of a shard is its highest
generation.

Invariants:
- a generation file is created with an exclusive create (``O_EXCL`` locally, a conditional PUT
  on object stores), so of two workers racing for the same generation exactly one wins;
- a lease is taken over only when its holder released it, its expiry passed (the holder stopped
  renewing: it died or froze), or its holder is certainly a dead process: same host, boot and
  PID namespace, and its PID is gone or now another process (:mod:`curator_flows.liveness`);
  a holder in another container, on another machine or of unknown scope is judged by its expiry
  alone. The taker creates the next generation, so a holder that comes back sees a higher
  generation and stops (:class:`~curator_flows.errors.LeaseLostError`);
- while held, a background thread renews every lease every ``ttl / 3`` seconds, whatever the
  step is doing (an engine start-up, a long create call, a large download); a renewal that
  finds the lease expired (the process was frozen or the store failed for a whole ``ttl``) does
  not renew it: the lease is lost, even if nobody took it yet;
- **the fence**: :meth:`ShardLeases.check` (no I/O) raises ``LeaseLostError`` when the lease
  was taken over, or when the last *confirmed* renewal is ``FENCE_FRACTION`` of ``ttl`` old
  (a boot-time clock, which keeps counting while the process is stopped or the machine
  suspended, so a frozen worker sees the jump the moment it wakes) or the written expiry is as
  near on the wall clock. Every send point calls it right before it sends, so a worker that
  may have lost its lease sends nothing more;
- a generation file that cannot be read (a crash between the exclusive create and its write)
  counts as held only until ``ttl`` after its modification time;
- a lease file never holds a secret.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from . import liveness
from .errors import LeaseHeldError, LeaseLostError
from .store import RunStore

log = logging.getLogger(__name__)

DEFAULT_TTL = 60.0
#: a worker stops sending once its last confirmed renewal is this fraction of the ttl old
FENCE_FRACTION = 0.9
_HOST = socket.gethostname()
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def _clock() -> float:
    """Seconds on a clock that never goes back and keeps counting while the process is
    stopped or the machine suspended (``CLOCK_BOOTTIME``; elsewhere the monotonic clock)."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


def _stale(holder: dict[str, Any], now: float) -> bool:
    if holder.get("released") or float(holder.get("expires_at") or 0) <= now:
        return True
    scope, pid, start = holder.get("pid_scope"), holder.get("pid"), holder.get("pid_start")
    if not isinstance(scope, str) or not isinstance(start, int) or not isinstance(pid, int):
        return False  # no way to tell whether its process lives: wait for the expiry
    return liveness.is_gone(scope, pid, start)


class ShardLeases:
    """The leases of a step's shards: :meth:`acquire` all (or none), :meth:`renew` while
    working, :meth:`release` at the end."""

    def __init__(self, store: RunStore, shards: list[str], ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.shards = list(shards)
        self.ttl = ttl
        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: dict[str, int] = {}
        #: ``_clock()`` when the last renewal that found every lease ours started
        self.confirmed_at = 0.0
        #: the wall-clock expiry that renewal wrote
        self.expires_at = 0.0
        self.lost: LeaseLostError | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._keepalive: threading.Thread | None = None

    def _record(self, now: float, released: bool = False) -> dict[str, Any]:
        record = {
            "owner": self.owner,
            "host": _HOST,
            "pid": os.getpid(),
            "acquired_at": now,
            "expires_at": 0.0 if released else now + self.ttl,
            "released": released,
        }
        process = liveness.current()
        if process is not None:
            record.update(pid_scope=process.scope, pid_start=process.start)
        return record

    def _latest(self, shard: str) -> tuple[int, dict[str, Any] | None]:
        generations = self.store.glob(f"leases/{shard}/*.json")
        if not generations:
            return -1, None
        rel = generations[-1]
        number = int(rel.rsplit("/", 1)[1].split(".", 1)[0])
        try:
            return number, self.store.read_json(rel)
        except (OSError, ValueError):  # being written right now, or its writer died mid-write
            return number, {"owner": "?", "expires_at": self._written_at(rel) + self.ttl}

    def _written_at(self, rel: str) -> float:
        try:
            modified = self.store.fs.modified(self.store.path(rel))
        except (OSError, NotImplementedError, ValueError):
            return time.time()
        return modified.timestamp() if hasattr(modified, "timestamp") else float(modified)

    def acquire(self) -> None:
        """Take every shard's lease, or raise :class:`LeaseHeldError` holding none."""
        started, now = _clock(), time.time()
        try:
            for shard in self.shards:
                self._acquire(shard, now)
        except BaseException:
            self.release()
            raise
        self.confirmed_at, self.expires_at = started, now + self.ttl
        self.lost = None
        self._stop.clear()
        self._keepalive = threading.Thread(
            target=self._renew_until_released, name="curator-flows-lease", daemon=True
        )
        self._keepalive.start()

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LeaseLostError as exc:
                self.lost = exc
                log.error("%s", exc)
                return
            except OSError as exc:  # the store hiccuped: try again at the next interval
                log.warning("could not renew the shard leases: %s", exc)

    def check(self) -> None:
        """The fence: raise :class:`LeaseLostError` unless every lease is still certainly ours
        (another worker took one over, or the last confirmed renewal is too old to be sure).
        Costs two clock reads: call it right before every send."""
        if self.lost is not None:
            raise self.lost
        if not self.held:
            return
        age = _clock() - self.confirmed_at
        margin = self.ttl * (1 - FENCE_FRACTION)
        if age >= self.ttl - margin or time.time() >= self.expires_at - margin:
            raise LeaseLostError(
                f"the lease of shard(s) {', '.join(self.held)} of {self.store.uri} was last "
                f"confirmed {age:.1f}s ago (lease_seconds={self.ttl:g}): this process was "
                "paused or could not renew it, so another worker may hold it now; this worker "
                "stopped sending (the shard's unanswered requests stay pending)",
                owner=self.owner,
            )

    def _acquire(self, shard: str, now: float) -> None:
        number, holder = self._latest(shard)
        if holder is not None and not _stale(holder, now):
            raise LeaseHeldError(
                f"shard {shard} of {self.store.uri} is being worked on by {holder.get('owner')} "
                f"(lease until {holder.get('expires_at', 0):.0f}); retry later",
                owner=str(holder.get("owner")),
                expires_at=float(holder.get("expires_at") or 0),
            )
        generation = number + 1
        rel = f"leases/{shard}/{generation:08d}.json"
        if not self.store.create_exclusive(rel, self._record(now)):
            raise LeaseHeldError(
                f"shard {shard} of {self.store.uri} was just taken by another worker; retry later"
            )
        self.held[shard] = generation
        self._prune(shard, generation)

    def _prune(self, shard: str, generation: int) -> None:
        """Remove the generations before ``generation``, which this worker now holds: only the
        newest decides, so a shard taken again and again (a batch shard advanced every few
        minutes for a day) keeps one file, not one per take. A worker that still reads an
        older one reads its removal as a lease being written (held), never as free."""
        for rel in self.store.glob(f"leases/{shard}/*.json"):
            try:
                older = int(rel.rsplit("/", 1)[1].split(".", 1)[0]) < generation
                if older:
                    self.store.remove(rel)
            except (OSError, ValueError):
                pass  # another worker pruned it first, or a name that is not a generation

    def renew(self) -> None:
        """Extend every held lease; raise :class:`LeaseLostError` when another worker took one
        over (this worker must stop sending)."""
        with self._lock:
            self._renew()

    def _renew(self) -> None:
        started, now = _clock(), time.time()
        for shard, generation in self.held.items():
            number, holder = self._latest(shard)
            if number != generation or (holder or {}).get("owner") != self.owner:
                raise LeaseLostError(
                    f"the lease of shard {shard} expired and {(holder or {}).get('owner')} took "
                    "it over; this worker stopped sending",
                    owner=str((holder or {}).get("owner")),
                )
        silent = started - self.confirmed_at
        if silent >= self.ttl or now >= self.expires_at:  # another worker may be taking it now
            raise LeaseLostError(
                f"the lease of shard(s) {', '.join(self.held)} of {self.store.uri} expired: not "
                f"renewed for {silent:.1f}s (lease_seconds={self.ttl:g}; the process was paused "
                "or the store failed); this worker stopped sending",
                owner=self.owner,
            )
        for shard, generation in self.held.items():
            self.store.write_json(f"leases/{shard}/{generation:08d}.json", self._record(now))
        self.confirmed_at, self.expires_at = started, now + self.ttl

    def release(self) -> None:
        """Stop renewing and give the leases back (the next worker takes over at once); never
        raises."""
        self._stop.set()
        if self._keepalive is not None and self._keepalive is not threading.current_thread():
            self._keepalive.join(timeout=5)
        with self._lock:
            self._release()

    def _release(self) -> None:
        now = time.time()
        for shard, generation in list(self.held.items()):
            try:
                number, holder = self._latest(shard)
                if number == generation and (holder or {}).get("owner") == self.owner:
                    rel = f"leases/{shard}/{generation:08d}.json"
                    self.store.write_json(rel, self._record(now, released=True))
            except OSError:
                pass  # it expires on its own
        self.held.clear()

    def __enter__(self) -> ShardLeases:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
