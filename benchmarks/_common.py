"""Shared benchmark helpers: a simulator in its own process, and resource readings."""

from __future__ import annotations

import contextlib
import resource
import sys
import time


@contextlib.contextmanager
def simulator_process(**config):
    """A simulator in a child process (its own core and GIL); yields its OpenAI base URL."""
    from curator_flows.testing.simulator import run_in_subprocess

    process, base_url = run_in_subprocess(**config)
    try:
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Clock:
    """Wall time and this process's CPU time over a block."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def report(name: str, figures: dict) -> None:
    print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    sys.stdout.flush()
