"""What an online backend returns for one attempt, and how the runner treats it.

Invariant: a backend never retries and never sleeps; it classifies. The runner owns retries,
rate limits and persistence, so every backend gets the same policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Attempt:
    """The outcome of one HTTP attempt.

    ``kind`` is one of: ``"ok"``; ``"rate_limited"`` (429: pause, retry, not counted against
    ``max_retries``); ``"retryable"`` (5xx, timeout, dropped connection, unreachable endpoint,
    malformed body); ``"fatal"`` (any other 4xx: fail at once); ``"quota"`` (the account is
    out of credit or over a spend limit: stop the run, nothing is retried); ``"daily_limit"``
    (a per-day limit: stop the run, retry after ``retry_after`` seconds). See :mod:`.account`;
    for the last two ``error`` is the provider's message.
    """

    kind: str
    content: str | None = None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    retry_after: float | None = None
    headers: Any = None
    #: the HTTP status, when an HTTP answer arrived (``None``: no answer at all)
    status: int | None = None
    #: why no answer arrived, when none did: ``"unreachable"`` (no connection was ever made:
    #: refused, unknown host, connect timeout; the request never left), ``"timeout"`` (the
    #: endpoint took the request and gave no answer within ``request_timeout``: it may be
    #: billed) or ``"dropped"`` (the connection broke after the request was sent)
    transport: str | None = None
    #: the provider's whole answer body (a chat completion, a message), for
    #: ``return_completions_object``; the runner stores it only when asked
    raw: Any = None


@dataclass(slots=True)
class LearnedLimits:
    """Limits read from a provider's rate-limit headers (``None`` = not advertised).

    ``remaining_*`` never exceed what the provider holds (a header rounded by the provider is
    read down by its rounding), and the tokens ones fall short of it by less than
    ``tokens_rounding``; ``reset_*`` are the seconds until that bucket is full again, never
    below the truth, and at most ``reset_resolution`` seconds above it."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    remaining_input_tokens: int | None = None
    remaining_output_tokens: int | None = None
    #: the requests bucket's reset
    reset_seconds: float | None = None
    reset_tokens: float | None = None
    reset_input_tokens: float | None = None
    reset_output_tokens: float | None = None
    reset_resolution: float = 0.001
    tokens_rounding: float = 0.0


class OnlineBackend(Protocol):
    """One provider's chat endpoint, over a client pooled for the whole run."""

    name: str
    #: where requests go (a URL), for error messages; never holds a key
    endpoint: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def complete(
        self, messages: list[dict[str, Any]], params: dict[str, Any] | None = None
    ) -> Attempt:
        """Send one request; ``params`` (a row's own generation params) override the LLM's."""
        ...

    def learn(self, headers: Any) -> LearnedLimits | None:
        """Limits advertised by a response's headers, if any."""
        ...


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds form), else ``None``."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return None


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"120ms"``, ``"6m0s"``, ``"1h2m3.5s"``."""
    if not text:
        return None
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    i = 0
    try:
        while i < len(text):
            ch = text[i]
            if ch.isdigit() or ch == ".":
                number += ch
            elif text.startswith("ms", i):
                total += float(number) / 1000.0
                number = ""
                i += 1
            elif ch in units:
                total += float(number) * units[ch]
                number = ""
            else:
                return None
            i += 1
        if number:
            total += float(number)
    except ValueError:
        return None
    return total


def as_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None
