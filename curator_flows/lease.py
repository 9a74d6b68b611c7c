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
- the holder renews every ``ttl / 3`` seconds; a lease file never holds a secret.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

from .errors import LeaseHeldError, LeaseLostError
from .store import RunStore

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
        except (OSError, ValueError):  # being written right now: held
            return number, {"owner": "?", "expires_at": time.time() + self.ttl}

    def acquire(self) -> None:
        """Take every shard's lease, or raise :class:`LeaseHeldError` holding none."""
        try:
            for shard in self.shards:
                self._acquire(shard)
        except BaseException:
            self.release()
            raise
        self.renewed_at = time.monotonic()

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

    def due(self) -> bool:
        return bool(self.held) and time.monotonic() - self.renewed_at >= self.ttl / 3

    def renew(self) -> None:
        """Extend every held lease; raise :class:`LeaseLostError` when another worker took one
        over (this worker must stop sending)."""
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

    def maybe_renew(self) -> None:
        if self.due():
            self.renew()

    def release(self) -> None:
        """Give the leases back (the next worker takes over at once); never raises."""
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
