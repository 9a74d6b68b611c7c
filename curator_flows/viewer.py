"""``curator-flows view RUN_URI``: a local, read-only web page of one run while it runs and
after: progress (per shard: counts, pending, in flight, cost), statistics, failures by reason,
and its rows a page at a time (see :mod:`curator_flows.report`).

Invariants:
- the server listens on 127.0.0.1 only and answers only requests addressed to it by that name
  or ``localhost`` with its port (``Host``), so a web page elsewhere cannot read it through a
  DNS name pointed at 127.0.0.1; it answers GET and HEAD only;
- it never writes to the run directory: the run is opened without merging spilled answers
  (which :func:`curator_flows.runs.open_run` would do), and progress is the engine's
  ``status`` (:func:`curator_flows.batch.status.run_status`, what ``steps.status`` returns)
  read from the files, plus whether a worker holds each shard's lease;
- the progress part reads every response file, so it is read again at most every
  ``refresh_seconds`` (at least :data:`MIN_REFRESH_SECONDS`, and at least
  :data:`REFRESH_FACTOR` times what the last read took), however many pages poll it;
- every answer says ``no-store``, ``nosniff``, ``no-referrer`` and the page's Content Security
  Policy (nothing loaded from elsewhere; requests only to this server).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .report.cells import dumps, shown
from .report.reader import PAGE_SIZE, RunView
from .report.render import content_security_policy, page_html

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MIN_REFRESH_SECONDS = 3
REFRESH_FACTOR = 5.0


class Viewer:
    """The page server of one run; ``url`` is where it answers. Use as a context manager, or
    :meth:`serve_forever` until interrupted."""

    def __init__(
        self, run_uri: str, storage_options: dict[str, Any] | None = None, port: int = 0
    ) -> None:
        self.view = RunView(run_uri, storage_options)
        self.server = ThreadingHTTPServer((HOST, port), _Handler)
        self.server.daemon_threads = True
        self.server.viewer = self  # type: ignore[attr-defined]
        self.port = int(self.server.server_address[1])
        self.url = f"http://{HOST}:{self.port}/"
        self.hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        self._lock = threading.Lock()
        self._overview: dict[str, Any] | None = None
        self._overview_until = 0.0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what it answers
    def page(self) -> str:
        data = {"mode": "live", "facts": self.view.facts(), "refresh_seconds": MIN_REFRESH_SECONDS}
        return page_html(data, live=True)

    def overview(self) -> dict[str, Any]:
        """Progress, statistics and failures, read at most every ``refresh_seconds``."""
        with self._lock:  # one read at a time; pages polling meanwhile get its result
            if self._overview is None or time.monotonic() >= self._overview_until:
                started = time.monotonic()
                overview = self._read_overview()
                took = time.monotonic() - started
                refresh = max(MIN_REFRESH_SECONDS, math.ceil(REFRESH_FACTOR * took))
                overview["refresh_seconds"] = refresh
                self._overview = overview
                self._overview_until = time.monotonic() + refresh
            return self._overview

    def _read_overview(self) -> dict[str, Any]:
        from .batch.status import run_status

        view = self.view
        status = run_status(view.store, view.manifest)
        leases = _active_leases(view.store)
        in_flight = 0
        for shard in status["shards"]:
            lease = leases.get(shard["shard"])
            busy = shard["state"] == "in_flight" or (lease is not None and shard["pending"] > 0)
            shard["in_flight"] = shard["pending"] if busy else 0
            if lease is not None:
                shard["lease"] = lease
            in_flight += shard["in_flight"]
        status["totals"]["in_flight"] = in_flight
        status["read_at"] = time.time()
        return {
            "facts": view.facts(),
            "status": shown(status),
            "finalized": view.finalized(),
            "published": None,
            "failures": view.failures(),
        }

    def rows(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """A page of rows: ``page``, ``size`` and, to search, ``q``."""
        page = _int_param(query, "page", 1)
        size = _int_param(query, "size", PAGE_SIZE)
        text = (query.get("q") or [""])[0].strip()
        if text:
            return self.view.search(text, page, size)
        return self.view.page(page, size)

    # ------------------------------------------------------------------ serving
    def start(self) -> Viewer:
        """Serve on a background thread (returns at once)."""
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="curator-flows-viewer", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.server.serve_forever()
        finally:
            self.server.server_close()

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server.server_close()

    def __enter__(self) -> Viewer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class BadRequest(ValueError):
    """A query parameter the viewer cannot use."""


def _int_param(query: dict[str, list[str]], name: str, default: int) -> int:
    raw = (query.get(name) or [""])[0]
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise BadRequest(f"{name} must be at least 1, got {value}")
    return value


def _active_leases(store: Any) -> dict[str, dict[str, Any]]:
    """Per shard, the lease a worker holds now (``{"host", "expires_in"}``), from one listing
    of ``leases/``; a released or expired lease is no lease."""
    latest: dict[str, str] = {}
    for rel in store.glob("leases/*/*.json"):
        parts = rel.split("/")
        if len(parts) == 3 and ".tmp-" not in rel:
            latest[parts[1]] = max(latest.get(parts[1], ""), rel)
    now = time.time()
    out: dict[str, dict[str, Any]] = {}
    for shard, rel in latest.items():
        try:
            holder = store.read_json(rel)
        except (OSError, ValueError):
            continue  # being written, or gone: no lease to show
        expires = float(holder.get("expires_at") or 0.0)
        if not holder.get("released") and expires > now:
            out[shard] = {"host": str(holder.get("host") or "?"), "expires_in": expires - now}
    return out


class _Handler(BaseHTTPRequestHandler):
    server_version = "curator-flows-viewer"
    protocol_version = "HTTP/1.1"

    @property
    def viewer(self) -> Viewer:
        return self.server.viewer  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        viewer = self.viewer
        if self.headers.get("Host") not in viewer.hosts:
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"not this server\n", "text/plain", head)
            return
        url = urlsplit(self.path)
        try:
            if url.path == "/":
                body, kind = viewer.page().encode("utf-8"), "text/html; charset=utf-8"
            elif url.path == "/api/overview":
                body, kind = dumps(viewer.overview()), "application/json"
            elif url.path == "/api/rows":
                body, kind = dumps(viewer.rows(parse_qs(url.query))), "application/json"
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head)
                return
        except BadRequest as exc:
            self._send(HTTPStatus.BAD_REQUEST, dumps({"error": str(exc)}), "application/json", head)
            return
        except Exception as exc:  # noqa: BLE001 - the page shows what went wrong, as text
            log.warning("viewer: %s failed: %s: %s", url.path, type(exc).__name__, exc)
            error = {"error": f"{type(exc).__name__}: {exc}"}
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, dumps(error), "application/json", head)
            return
        self._send(HTTPStatus.OK, body, kind, head)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", content_security_policy(live=True))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the hook's name
        log.debug("viewer: " + format, *args)
