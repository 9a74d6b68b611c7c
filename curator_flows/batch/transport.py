"""A small synchronous HTTP client for the batch APIs (the steps are synchronous functions).

Invariants:
- ``request`` retries transport failures, 5xx and 429 with capped backoff only when the caller
  says the call is safe to repeat (``retry=True``); a call that creates something (a batch) is
  never retried blindly: the caller reconciles first, so a lost reply never bills twice;
- response bodies of file downloads are streamed in blocks and split into lines: memory holds
  one block, never a whole output file;
- uploads stream from a local file (``body_parts`` yields byte chunks) with an exact
  ``Content-Length``;
- requests to loopback hosts never go through an environment proxy.
"""

from __future__ import annotations

import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from ..backends.account import account_refusal
from ..backends.base import parse_retry_after
from ..errors import ProviderError

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 5
BACKOFF_BASE = 0.5
BACKOFF_CAP = 20.0
STREAM_BLOCK = 1 << 20
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class BatchAPIError(ProviderError):
    """The provider answered with an error status (after any retries), or not at all."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message, status=status)
        self.body = body

    @property
    def transient(self) -> bool:
        """5xx, 408, 409, 429 or no status at all (transport failure): maybe worth repeating;
        never an account refusal (out of credit, a per-day limit: :mod:`..backends.account`)."""
        if self.status in (400, 402, 429) and account_refusal(self.status, self.body):
            return False
        return self.status is None or self.status >= 500 or self.status in (408, 409, 429)


class TransportError(BatchAPIError):
    """No HTTP answer at all (connection refused or dropped, timeout): outcome unknown."""


def backoff(attempt: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)


class Http:
    """Sends requests with fixed headers; every method raises :class:`BatchAPIError`."""

    def __init__(self, headers: dict[str, str], timeout: float, attempts: int = DEFAULT_ATTEMPTS):
        self.headers = dict(headers)
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._default = urllib.request.build_opener()

    def _opener(self, url: str) -> urllib.request.OpenerDirector:
        host = urllib.parse.urlsplit(url).hostname or ""
        return self._direct if host in _LOOPBACK else self._default

    def _open(
        self,
        method: str,
        url: str,
        data: bytes | Iterable[bytes] | None,
        headers: dict[str, str] | None,
    ) -> Any:
        request = urllib.request.Request(url, data=data, method=method)
        for key, value in {**self.headers, **(headers or {})}.items():
            request.add_header(key, value)
        try:
            return self._opener(url).open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            body = exc.read() if exc.fp is not None else b""
            error = BatchAPIError(
                f"{method} {url}: HTTP {exc.code}: {body[:500].decode('utf-8', 'replace')}",
                exc.code,
                body,
            )
            error.retry_after = parse_retry_after(exc.headers)  # type: ignore[attr-defined]
            raise error from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {reason}") from None

    def _with_retries(self, retry: bool, call: Callable[[], Any]) -> Any:
        attempts = self.attempts if retry else 1
        for attempt in range(attempts):
            try:
                return call()
            except BatchAPIError as exc:
                if attempt + 1 >= attempts or not exc.transient:
                    raise
                delay = getattr(exc, "retry_after", None)
                delay = backoff(attempt) if delay is None else min(delay, BACKOFF_CAP)
                log.warning("%s; retrying in %.1fs", exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        body: Callable[[], Iterable[bytes]] | None = None,
        length: int | None = None,
        headers: dict[str, str] | None = None,
        retry: bool = True,
    ) -> Any:
        """Send one request and decode its JSON answer (``None`` for an empty body).

        ``body`` is a factory of byte chunks (called again on each retry) of ``length`` bytes."""
        extra = dict(headers or {})
        payload: bytes | Iterable[bytes] | None = None
        if json is not None:
            payload = orjson.dumps(json)
            extra.setdefault("content-type", "application/json")

        def call() -> Any:
            data = payload
            if body is not None:
                data = body()
                extra["content-length"] = str(length)
            with self._open(method, url, data, extra) as response:
                raw = response.read()
            if not raw.strip():
                return None
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise BatchAPIError(
                    f"{method} {url}: answer is not JSON: {raw[:200]!r}", 502, raw
                ) from None

        return self._with_retries(retry, call)

    def iter_lines(self, url: str) -> Iterator[bytes]:
        """The lines (without newline) of a downloaded file, streamed; empty lines skipped."""
        response = self._with_retries(True, lambda: self._open("GET", url, None, None))
        with response:
            tail = b""
            while True:
                try:
                    block = response.read(STREAM_BLOCK)
                except (OSError, ValueError) as exc:
                    raise TransportError(f"GET {url}: download interrupted: {exc}") from None
                if not block:
                    break
                lines = (tail + block).split(b"\n")
                tail = lines.pop()
                for line in lines:
                    if line.strip():
                        yield line
            if tail.strip():
                yield tail


def multipart_file(
    fields: dict[str, str], file_field: str, filename: str, path: str, content_type: str
) -> tuple[Callable[[], Iterator[bytes]], int, str]:
    """``(chunk factory, content length, content-type header)`` of a multipart/form-data body
    that streams the file at ``path``."""
    import os

    boundary = f"curatorflows{random.getrandbits(64):016x}"
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + os.path.getsize(path) + len(tail)

    def chunks() -> Iterator[bytes]:
        yield head
        with open(path, "rb") as handle:
            while True:
                block = handle.read(STREAM_BLOCK)
                if not block:
                    break
                yield block
        yield tail

    return chunks, length, f"multipart/form-data; boundary={boundary}"


def file_chunks(path: str) -> tuple[Callable[[], Iterator[bytes]], int]:
    """``(chunk factory, length)`` streaming a local file as a request body."""
    import os

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as handle:
            while True:
                block = handle.read(STREAM_BLOCK)
                if not block:
                    break
                yield block

    return chunks, os.path.getsize(path)
