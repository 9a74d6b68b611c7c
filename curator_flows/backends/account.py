"""Answers about the account, not the request: out of credit or over a spend limit (nothing
helps until a person acts), or over a per-day limit (retry after the time the provider names).

Read from the providers' documented answers (never from the status alone: a 429 is also a
per-minute rate limit, a 400 also a bad request):
- OpenAI: ``429`` whose ``error.type`` or ``error.code`` is ``insufficient_quota`` ("You
  exceeded your current quota, ...") or a billing code (``credit_balance_exhausted``,
  ``organization_spend_limit_exceeded``, ``project_spend_limit_exceeded``,
  ``organization_usage_limit_exceeded``) → quota; ``429`` whose message names a per-day limit
  ("... on requests per day (RPD): Limit 200, Used 200, Requested 1. Please try again in
  7m12s. ...", likewise tokens per day) → daily limit, the wait read from "try again in";
- Anthropic: ``400 invalid_request_error`` "Your credit balance is too low ..." or "You have
  reached your specified (workspace) API usage limits ...", ``402 billing_error``, and a
  ``429`` whose ``error.details.error_code`` is ``enforced_spend_limit_reached`` → quota.

Invariant: a pure function of (status, body or text); no I/O; an answer it does not recognise
is ``None`` and keeps its usual classification.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import CuratorFlowsError, DailyLimitError, QuotaExceededError
from .base import parse_duration

QUOTA, DAILY_LIMIT = "quota", "daily_limit"

_OPENAI_QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    }
)
_QUOTA_TEXTS = (
    ("insufficient_quota", "insufficient_quota"),
    ("exceeded your current quota", "insufficient_quota"),
    ("credit balance is too low", "credit_balance_too_low"),
    ("reached your specified api usage limits", "spend_limit"),
    ("reached your specified workspace api usage limits", "spend_limit"),
    ("enforced_spend_limit_reached", "enforced_spend_limit_reached"),
)
_PER_DAY = re.compile(r"\b(requests|tokens) per day\b", re.IGNORECASE)
_TRY_AGAIN = re.compile(r"try again in ([0-9][0-9.hms]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class AccountRefusal:
    """``kind``: :data:`QUOTA` or :data:`DAILY_LIMIT`; ``code``: a short stable name of the
    refusal; ``message``: the provider's words; ``retry_after``: seconds (daily limits)."""

    kind: str
    code: str
    message: str
    retry_after: float | None = None


def _fields(body: Any) -> tuple[str, str, str, str]:
    """``(type, code, message, details error_code)`` of an error body (bytes, text or a parsed
    dict), the OpenAI and the Anthropic shape alike; the message is the whole text when the
    body is not an error object (litellm's exception text)."""
    data = body
    if isinstance(body, bytes | bytearray | str):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else str(body)
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", "", text, ""
    details = error.get("details")
    detail_code = details.get("error_code") if isinstance(details, dict) else None
    return (
        str(error.get("type") or ""),
        str(error.get("code") or ""),
        str(error.get("message") or text),
        str(detail_code or ""),
    )


def account_refusal(status: int | None, body: Any) -> AccountRefusal | None:
    """The account refusal an error answer (``status``, and its body, text or parsed JSON)
    stands for, or ``None``."""
    if status is not None and status not in (400, 402, 429):
        return None
    type_, code, message, detail_code = _fields(body)
    if code in _OPENAI_QUOTA_CODES or type_ == "insufficient_quota":
        return AccountRefusal(QUOTA, code or type_, message)
    if detail_code == "enforced_spend_limit_reached":
        return AccountRefusal(QUOTA, detail_code, message)
    if status == 402 or type_ == "billing_error":
        return AccountRefusal(QUOTA, "billing_error", message)
    lowered = message.lower()  # the error's own message (the whole text when not JSON)
    for needle, name in _QUOTA_TEXTS:
        if needle in lowered:
            return AccountRefusal(QUOTA, name, message)
    if status in (None, 429):
        per_day = _PER_DAY.search(message)
        if per_day is not None:
            wait = _TRY_AGAIN.search(message)
            retry_after = parse_duration(wait.group(1).rstrip(".")) if wait else None
            return AccountRefusal(
                DAILY_LIMIT, f"{per_day.group(1).lower()}_per_day", message, retry_after
            )
    return None


def refusal_error(
    kind: str,
    provider_message: str,
    *,
    status: int | None,
    endpoint: str,
    retry_after: float | None,
    consequence: str,
) -> CuratorFlowsError:
    """The error a refusal of ``kind`` raises: :class:`QuotaExceededError` (permanent) or
    :class:`DailyLimitError` (retryable, saying when). ``consequence``: what the step did
    about it (e.g. "nothing more was sent")."""
    if kind == QUOTA:
        return QuotaExceededError(
            f"{endpoint} refused the request because the account is out of credit or over a "
            f"spend limit (HTTP {status}: {provider_message}); {consequence}. Add credit or "
            "raise the limit, then run again: what is pending is sent then, nothing twice",
            status=status,
            endpoint=endpoint,
            provider_message=provider_message,
        )
    when = "later (a per-day limit refills over 24 hours)"
    if retry_after is not None:
        import time

        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + retry_after))
        when = f"after {stamp} (in {retry_after:.0f}s)"
    return DailyLimitError(
        f"{endpoint} refused the request because a per-day limit of the account is reached "
        f"(HTTP {status}: {provider_message}); {consequence}. Run again {when}: the "
        "orchestrator's retry or the next scheduled run resumes with what is pending",
        retry_after=retry_after,
        endpoint=endpoint,
        provider_message=provider_message,
    )
