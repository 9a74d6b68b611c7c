"""Offline token estimates for rate limiting (no tokenizer download, no tiktoken).

Invariant: an estimate is never below the true count by much for English text and JSON (about
four characters a token plus per-message overhead, rounded up), so TPM budgets err on the safe side.
"""

from __future__ import annotations

from typing import Any

_PER_MESSAGE = 4
_PER_REQUEST = 3


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts
        return sum(len(part.get("text", "")) for part in content if isinstance(part, dict))
    return len(str(content))


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimated input tokens of a chat request."""
    chars = 0
    for message in messages:
        chars += _content_chars(message.get("content", ""))
    return (chars + 3) // 4 + _PER_MESSAGE * len(messages) + _PER_REQUEST
