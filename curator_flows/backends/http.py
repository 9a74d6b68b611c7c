"""One pooled aiohttp client per run, and the classification shared by HTTP backends.

Invariants: one ``ClientSession`` (one connection pool) serves every request of a run; each
request is bounded by ``request_timeout``; transport failures come back as ``retryable``
attempts, never as exceptions, and say which they are (:attr:`Attempt.transport`): an endpoint
that never accepted a connection (refused, unknown host, connect timeout) is ``unreachable``;
a request that got a connection (the endpoint accepted it) and no answer within
``request_timeout`` is a ``timeout``, one whose connection broke is ``dropped``: the provider
may have taken, and billed, both.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import orjson

from .account import account_refusal
from .base import Attempt, parse_duration, parse_retry_after

MAX_RESET_WAIT = 60.0
#: longest wait for a TCP (and TLS) connection before the endpoint counts as unreachable
CONNECT_TIMEOUT = 30.0


class _Request:
    """Per request: whether a connection to the endpoint was made for it (opened, or taken
    from the pool), i.e. whether the endpoint accepted it."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


#: the request the current task is making (each runner worker is a task of its own)
_CURRENT: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "curator_flows_http_request", default=None
)


@functools.cache
def _connector_class() -> type:
    """A ``TCPConnector`` that marks the current request connected once it has a connection
    (well under a microsecond; aiohttp's request tracing costs tens of them per request)."""
    import aiohttp

    class NotingConnector(aiohttp.TCPConnector):
        async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
            connection = await super().connect(req, traces, timeout)
            request = _CURRENT.get()
            if request is not None:
                request.connected = True
            return connection

    return NotingConnector


def timeout_advice(request_timeout: float) -> str:
    """What to do about answers slower than ``request_timeout``."""
    return (
        f"raise backend_params['request_timeout'] (now {request_timeout:g}s) if the model is "
        "slow: reasoning models can take minutes"
    )


class HttpBackendBase:
    """Posts pre-encoded JSON bodies to one URL over a pooled session."""

    name = "http"

    def __init__(self, url: str, headers: dict[str, str], request_timeout: float, pool_size: int):
        self.url = url
        self.endpoint = url
        self.headers = {"content-type": "application/json", **headers}
        self.request_timeout = request_timeout
        self.pool_size = pool_size
        self.session: Any = None

    async def open(self) -> None:
        import aiohttp

        connector = _connector_class()(
            limit=self.pool_size, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self.request_timeout, sock_connect=min(CONNECT_TIMEOUT, self.request_timeout)
            ),
            headers=self.headers,
            skip_auto_headers=("User-Agent",),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        self._client_error = aiohttp.ClientError
        self._connect_errors = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def post(self, body: bytes) -> tuple[int, Any, bytes] | Attempt:
        """``(status, headers, raw body)``, or a retryable :class:`Attempt` on transport failure
        (its ``transport`` says which, see the module doc)."""
        request = _Request()
        token = _CURRENT.set(request)
        try:
            async with self.session.post(self.url, data=body) as response:
                raw = await response.read()
                return response.status, response.headers, raw
        except self._connect_errors as exc:
            return self._unreachable(exc)
        except TimeoutError as exc:
            if not request.connected:
                return self._unreachable(exc)
            return Attempt(
                "retryable",
                error=f"timeout: no answer within {self.request_timeout:g}s to a request the "
                f"endpoint accepted; {timeout_advice(self.request_timeout)}",
                transport="timeout",
            )
        except self._client_error as exc:
            if not request.connected:
                return self._unreachable(exc)
            return Attempt(
                "retryable",
                error=f"connection dropped after the request was sent: {type(exc).__name__}: {exc}",
                transport="dropped",
            )
        finally:
            _CURRENT.reset(token)

    def _unreachable(self, exc: BaseException) -> Attempt:
        reason = str(exc) or f"no connection within {min(CONNECT_TIMEOUT, self.request_timeout):g}s"
        return Attempt(
            "retryable",
            error=f"connection error: {type(exc).__name__}: {reason}",
            transport="unreachable",
        )

    @staticmethod
    def classify_status(status: int, headers: Any, raw: bytes) -> Attempt | None:
        """An Attempt for a non-2xx status, ``None`` for success."""
        if 200 <= status < 300:
            return None
        refusal = account_refusal(status, raw)
        if refusal is not None:  # out of credit, or a per-day limit: not a per-minute 429
            return Attempt(
                refusal.kind,
                error=refusal.message,
                retry_after=refusal.retry_after,
                headers=headers,
                status=status,
            )
        detail = raw[:300].decode("utf-8", "replace")
        if status == 429:
            retry_after = parse_retry_after(headers)
            if retry_after is None:  # OpenAI's reset headers say when the window refills
                resets = [
                    parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                    for kind in ("requests", "tokens")
                ]
                known = [r for r in resets if r is not None]
                retry_after = min(max(known), MAX_RESET_WAIT) if known else None
            return Attempt(
                "rate_limited",
                error=f"HTTP 429: {detail}",
                retry_after=retry_after,
                headers=headers,
                status=status,
            )
        kind = "retryable" if status >= 500 or status in (408, 409) else "fatal"
        return Attempt(kind, error=f"HTTP {status}: {detail}", headers=headers, status=status)
