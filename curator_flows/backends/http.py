"""One pooled aiohttp client per run, and the classification shared by HTTP backends.

Invariants: one ``ClientSession`` (one connection pool) serves every request of a run; each
request is bounded by ``request_timeout``; transport failures come back as ``retryable``
attempts, never as exceptions.
"""

from __future__ import annotations

from typing import Any

import orjson

from .account import account_refusal
from .base import Attempt, parse_duration, parse_retry_after

MAX_RESET_WAIT = 60.0


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

        connector = aiohttp.TCPConnector(
            limit=self.pool_size, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            headers=self.headers,
            skip_auto_headers=("User-Agent",),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        self._client_error = aiohttp.ClientError

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def post(self, body: bytes) -> tuple[int, Any, bytes] | Attempt:
        """``(status, headers, raw body)``, or a retryable :class:`Attempt` on transport failure."""
        try:
            async with self.session.post(self.url, data=body) as response:
                raw = await response.read()
                return response.status, response.headers, raw
        except TimeoutError:
            return Attempt("retryable", error=f"timeout after {self.request_timeout:g}s")
        except self._client_error as exc:
            return Attempt("retryable", error=f"connection error: {type(exc).__name__}: {exc}")

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
