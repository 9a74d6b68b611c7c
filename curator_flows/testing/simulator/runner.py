"""`Simulator`: the server on 127.0.0.1 in a background thread with its own event loop.

Invariants:
- After `start` returns, the port is bound and requests are being served; `base_url` is
  ``http://127.0.0.1:PORT/v1`` and `url` ``http://127.0.0.1:PORT``.
- `stats` reads memory directly (no HTTP); `configure` and `reset` run on the server's loop and
  return once applied.
- `stop` is idempotent; pending requests (e.g. a ``hang`` fault) are cancelled quickly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from .config import SimulatorConfig
from .server import build_app
from .state import SimState

T = TypeVar("T")


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop's when installed and wanted, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task still pending on `loop` (e.g. hanging handlers), then close it."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to (host, port); port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def start_site(
    state: SimState, sock: socket.socket, shutdown_timeout: float = 0.25
) -> web.AppRunner:
    """Start serving the simulator app on `sock`; returns the runner to clean up."""
    runner = web.AppRunner(
        build_app(state),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    return runner


class Simulator:
    """An OpenAI/Anthropic-compatible server for tests, benchmarks and offline runs.

    ``Simulator(SimulatorConfig(...))`` or ``Simulator(rpm=3000, latency=0.5)``; use as a
    context manager or call `start` / `stop`.
    """

    def __init__(
        self, config: SimulatorConfig | None = None, /, *, use_uvloop: bool = True, **kwargs: Any
    ) -> None:
        if config is None:
            config = SimulatorConfig.from_dict(kwargs)
        elif kwargs:
            config = config.with_changes(**kwargs)
        self._state = SimState(config)
        self._use_uvloop = use_uvloop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ---- properties
    @property
    def config(self) -> SimulatorConfig:
        return self._state.config

    @property
    def state(self) -> SimState:
        return self._state

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def host(self) -> str:
        return self._state.config.host

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (Anthropic clients take this as base URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` (OpenAI clients take this as base URL)."""
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- lifecycle
    def start(self) -> Simulator:
        """Bind and serve in a background thread; returns self once requests are served."""
        if self.running:
            return self
        config = self._state.config
        sock = bind_socket(config.host, config.port)
        self._port = sock.getsockname()[1]
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = new_event_loop(self._use_uvloop)
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._runner = loop.run_until_complete(start_site(self._state, sock))
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                try:
                    if self._runner is not None:
                        loop.run_until_complete(self._runner.cleanup())
                finally:
                    close_loop(loop)

        self._thread = threading.Thread(target=serve, name="curator-flows-simulator", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            self._loop = None
            sock.close()
            raise
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (safe to call twice)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        self._thread = None
        self._loop = None
        self._runner = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- control
    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server loop (or inline when not running) and return its result."""
        loop = self._loop
        if loop is None or not self.running:
            return fn()
        if threading.current_thread() is self._thread:
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001
                done.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return done.result(timeout=30)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (see `Stats`)."""
        return self._state.stats.snapshot()

    def reset(self) -> None:
        """Clear the stats and per-prompt attempt counters and refill the rate limits."""
        self._on_loop(self._state.reset)

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change configuration at runtime (e.g. ``configure(rpm=60, faults={"500": 0.5})``)."""
        config = self._state.config.with_changes(**changes)
        self._on_loop(lambda: self._state.set_config(config))
        return config
