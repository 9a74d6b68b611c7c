"""Reading requests: the prompt key and an approximate token count.

Invariants:
- `prompt_key` is the text of the LAST ``user`` message: its string content, or its text parts
  concatenated with no separator. Without a user message it is ``""``.
- `system_text` is the system prompt of a request: Anthropic's top-level ``system``, else the
  ``system``/``developer`` messages' text joined by a blank line; ``None`` when there is none.
- `estimate_tokens` is ``ceil(len(text) / 4)`` and never negative; `count_prompt_tokens` adds
  4 per message plus 3 and is always >= 1.
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKENS = 85


def estimate_tokens(text: str) -> int:
    """Approximate tokens of `text` (ceil of a quarter of its length)."""
    return (len(text) + 3) // 4


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list, concatenated."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def prompt_key(messages: Any) -> str:
    """Text of the last user message of `messages` ("" when there is none)."""
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return content_text(message.get("content"))
    return ""


def system_text(messages: Any, system: Any = None) -> str | None:
    """The request's system prompt (see the module invariants)."""
    if system is not None:
        return content_text(system) or None
    if not isinstance(messages, list):
        return None
    parts = [
        content_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and m.get("role") in ("system", "developer")
    ]
    return "\n\n".join(parts) if parts else None


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return (len(content) + 3) // 4
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += (len(text) + 3) // 4
                elif part.get("type") in ("image", "image_url", "input_image"):
                    total += IMAGE_TOKENS
    return total


def count_prompt_tokens(messages: Any, system: Any = None) -> int:
    """Approximate prompt tokens of a request: per message its text + 4, plus 3 (>= 1)."""
    total = 3
    if system is not None:
        total += _content_tokens(system) + 4
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _content_tokens(message.get("content")) + 4
    return max(total, 1)
