"""Whether a process another worker recorded is certainly gone.

A process id means something only inside one PID namespace of one boot of one machine: two
containers sharing a host's network share its hostname but not its PIDs, and a PID is reused
once its process exits. So a process is judged by its PID only when the recording process and
the judging one certainly share hostname, boot (``/proc/sys/kernel/random/boot_id``), PID
namespace and time namespace (``/proc/self/ns/pid``, ``/proc/self/ns/time``: the start time of
a process is read through the reader's time namespace), and a live PID whose start time (field
22 of ``/proc/<pid>/stat``) differs from the recorded one is another process.

Invariants:
- :func:`current` is ``None`` where ``/proc`` cannot tell (no ``/proc``; a ``/proc`` mounted for
  another PID namespace, i.e. ``/proc/self`` is not ``os.getpid()``); then nothing is judged by
  its PID;
- :func:`is_gone` answers ``True`` only when the process is certainly gone (no such PID, a
  zombie, or the PID now belongs to a process started at another time); every doubt is
  ``False``, so a live process is never judged dead.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcessId:
    """A process as another process of the same scope can check it."""

    #: digest of hostname, boot id, PID and time namespaces: equal scopes share PID numbers
    scope: str
    pid: int
    #: start time in clock ticks after boot (``/proc/<pid>/stat`` field 22)
    start: int


_cache: tuple[int, ProcessId | None] | None = None


def current() -> ProcessId | None:
    """This process, or ``None`` when ``/proc`` cannot identify it (see the module doc)."""
    global _cache
    pid = os.getpid()
    if _cache is None or _cache[0] != pid:  # a forked child is another process
        _cache = (pid, _identify(pid))
    return _cache[1]


def _identify(pid: int) -> ProcessId | None:
    try:
        if os.readlink("/proc/self") != str(pid):
            return None  # /proc belongs to another PID namespace: its numbers are not ours
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        namespaces = []
        for kind in ("pid", "time"):
            try:
                namespaces.append(os.readlink(f"/proc/self/ns/{kind}"))
            except FileNotFoundError:  # a kernel without time namespaces
                namespaces.append("")
        start = _stat(pid)[1]
    except (OSError, ValueError, IndexError):
        return None
    key = "\0".join([socket.gethostname(), boot, *namespaces])
    return ProcessId(hashlib.sha256(key.encode()).hexdigest()[:16], pid, start)


def _stat(pid: int) -> tuple[str, int]:
    """``(state, start time)`` of ``pid`` from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read().decode("ascii", "replace")
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[19])


def is_gone(scope: str, pid: int, start: int) -> bool:
    """Whether the process recorded as ``(scope, pid, start)`` has certainly ended."""
    here = current()
    if here is None or scope != here.scope or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists (another user's): /proc says whether it is the same process
    try:
        state, started = _stat(pid)
    except (OSError, ValueError, IndexError):
        return False  # exists, but /proc hides it (hidepid): cannot tell
    return state in ("Z", "X") or started != start
