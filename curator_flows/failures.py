"""Why a request failed, as a short stable key, and the one line that reports a run's failures.

A key is the provider's error code or status where the failure came from the provider
(``http_400``, ``http_500``, ``invalid_request_error``, ``token_limit_exceeded``), else our
kind: ``timeout``, ``connection_error``, ``malformed_response``, ``refusal``, ``rate_limited``,
``schema_invalid``, ``finish_reason_<reason>`` (e.g. ``finish_reason_length``), ``batch_expired``,
``batch_cancelled``, ``batch_rejected``, ``batch_failed``, ``batch_mismatch``,
``batch_no_result``, ``cancelled`` (a user's ``cancel()``), ``vllm_rejected``, ``parse_error``
(``parse()`` raised), ``not_sent`` (no answer yet), ``taken_back`` (a stored answer the current
model refuses); ``error`` when nothing more is known.

Invariants:
- :func:`reason_of` is a pure function of a failure line: its ``reason`` field when a writer
  set one, else read from its ``error`` text (the runners' and the batch steps' wording, which
  the tests pin), so lines written by any version of the library get a key;
- :func:`failure_summary` is the one WARNING line a run ending with failed requests logs: how
  many, by reason, and where they are listed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

NOT_SENT, TAKEN_BACK, PARSE_ERROR = "not_sent", "taken_back", "parse_error"

#: (pattern on the error text, key or ``None`` to take the pattern's first group), in order
_PATTERNS: tuple[tuple[re.Pattern[str], str | None], ...] = tuple(
    (re.compile(pattern), key)
    for pattern, key in (
        (r"^HTTP (\d{3})\b", "http_{0}"),
        (r"^rate limited \d+ times", "rate_limited"),
        (r"^timeout\b", "timeout"),
        (r"^connection error\b", "connection_error"),
        (r"^malformed response", "malformed_response"),
        (r"^refusal:", "refusal"),
        (r"^invalid finish_reason '([A-Za-z0-9_]+)'", "finish_reason_{0}"),
        (r"^content does not match\b", "schema_invalid"),
        (r"^cancelled: ", "cancelled"),
        (r"^batch \S+ expired before\b|^batch item expired", "batch_expired"),
        (r"^batch \S+ was cancelled before\b|^batch item cancel", "batch_cancelled"),
        (r"^the provider rejected the batch input", "batch_rejected"),
        (r"^batch \S+ failed: ([a-z][a-z0-9_]+): ", None),
        (r"^batch \S+ failed\b", "batch_failed"),
        (r"did not hold this request", "batch_mismatch"),
        (r"returned no result for this request", "batch_no_result"),
        (r"^vLLM rejected\b", "vllm_rejected"),
        (r"^parse\(\) raised\b", PARSE_ERROR),
        (r"^([a-z][a-z0-9]*(?:_[a-z0-9]+)+): ", None),
    )
)


def reason_of(line: Mapping[str, Any]) -> str:
    """The reason key of a failure line (see the module docstring)."""
    reason = line.get("reason")
    if isinstance(reason, str) and reason:
        return reason
    text = str(line.get("error") or "")
    for pattern, key in _PATTERNS:
        match = pattern.search(text)
        if match is not None:
            return key.format(*match.groups()) if key is not None else match.group(1)
    return "error"


def describe_reasons(by_reason: Mapping[str, int]) -> str:
    """``"http_500: 3, timeout: 1"``, most frequent first."""
    ordered = sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{key}: {count}" for key, count in ordered)


def failure_summary(failed: int, total: int, by_reason: Mapping[str, int], where: str) -> str:
    """The WARNING line of a run that ends with ``failed`` of ``total`` requests failed."""
    return (
        f"{failed} of {total} requests failed ({describe_reasons(by_reason)}); they are listed "
        f"in {where}"
    )
