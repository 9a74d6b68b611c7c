"""Shard leases: one worker sends a shard's requests at a time.

Orchestrators run the same task twice at once (a zombie worker and its retry, two flow runs).
Before sending, a step takes the lease of each of its shards; a second worker gets
:class:`~curator_flows.errors.LeaseHeldError` (retryable) and sends nothing.

Layout: ``leases/<shard>/<generation>.json`` = ``{"owner", "host", "pid", "acquired_at",
"expires_at", "released"}``. The lease of a shard is its highest generation.

Invariants:
- a generation file is created with an exclusive create (``O_EXCL`` locally, a conditional PUT
  on object stores), so of two workers racing for the same generation exactly one wins;
- a lease is taken over only when its holder released it, its expiry passed (the holder stopped
  renewing: it died), or its holder is a dead process on this host; the taker creates the next
  generation, so a holder that comes back sees a higher generation and stops
  (:class:`~curator_flows.errors.LeaseLostError`) before sending anything more;
- while held, a background thread renews every lease every ``ttl / 3`` seconds, whatever the
  step is doing (an engine start-up, a long create call, a large download); a lease that was
  taken over is reported by :meth:`ShardLeases.check`, which the sending loops call before they
  send or store more;
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

from .errors import LeaseHeldError, LeaseLostError
from .store import RunStore

log = logging.getLogger(__name__)

DEFAULT_TTL = 60.0
_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(holder: dict[str, Any], now: float) -> bool:
    if holder.get("released") or float(holder.get("expires_at") or 0) <= now:
        return True
    return holder.get("host") == _HOST and not _pid_alive(int(holder.get("pid") or 0))


class ShardLeases:
    """The leases of a step's shards: :meth:`acquire` all (or none), :meth:`renew` while
    working, :meth:`release` at the end."""

    def __init__(self, store: RunStore, shards: list[str], ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.shards = list(shards)
        self.ttl = ttl
        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: dict[str, int] = {}
        self.renewed_at = 0.0
        self.lost: LeaseLostError | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._keepalive: threading.Thread | None = None

    def _record(self, now: float, released: bool = False) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "host": _HOST,
            "pid": os.getpid(),
            "acquired_at": now,
            "expires_at": 0.0 if released else now + self.ttl,
            "released": released,
        }

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
        try:
            for shard in self.shards:
                self._acquire(shard)
        except BaseException:
            self.release()
            raise
        self.renewed_at = time.monotonic()
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
        """Raise :class:`LeaseLostError` when another worker took a lease of ours over."""
        if self.lost is not None:
            raise self.lost

    def _acquire(self, shard: str) -> None:
        now = time.time()
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

    def renew(self) -> None:
        """Extend every held lease; raise :class:`LeaseLostError` when another worker took one
        over (this worker must stop sending)."""
        with self._lock:
            self._renew()

    def _renew(self) -> None:
        now = time.time()
        for shard, generation in self.held.items():
            number, holder = self._latest(shard)
            if number != generation or (holder or {}).get("owner") != self.owner:
                raise LeaseLostError(
                    f"the lease of shard {shard} expired and {(holder or {}).get('owner')} took "
                    "it over; this worker stopped sending",
                    owner=str((holder or {}).get("owner")),
                )
            self.store.write_json(f"leases/{shard}/{generation:08d}.json", self._record(now))
        self.renewed_at = time.monotonic()

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
