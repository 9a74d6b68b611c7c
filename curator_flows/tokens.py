"""Token estimates: offline counts of a request's input (no tokenizer download, no tiktoken), and
what a run has observed of its answers.

Invariants:
- an input estimate is never below the true count by much for English text and JSON (about
  four characters a token, rounded up per message, plus per-message overhead), so TPM budgets
  err on the safe side;
- :class:`Observed` answers from what the run has seen: a high quantile (or the maximum) of the
  last ``window`` values, never above the cap it is asked for; until ``warm`` values arrived,
  never below its prior either (a few answers say little about the longest).
"""

from __future__ import annotations

import bisect
from collections import deque
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
    """Estimated input tokens of a chat request (each message's characters / 4, rounded up)."""
    tokens = _PER_REQUEST
    for message in messages:
        tokens += (_content_chars(message.get("content", "")) + 3) // 4 + _PER_MESSAGE
    return tokens


class Observed:
    """Values observed so far in a run (output tokens, or dollars, per answer): a quantile or
    the maximum of the last ``window``, bounded by a cap; ``prior`` before the first."""

    def __init__(
        self, prior: float, quantile: float = 0.95, window: int = 512, warm: int = 5
    ) -> None:
        self.prior = float(prior)
        self.quantile = quantile
        self.warm = warm
        self.recent: deque[float] = deque()
        self.ordered: list[float] = []
        self.window = window
        self.count = 0

    def observe(self, value: float) -> None:
        value = float(value)
        self.count += 1
        self.recent.append(value)
        bisect.insort(self.ordered, value)
        if len(self.recent) > self.window:
            old = self.recent.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, old)]

    def high(self, cap: float | None = None) -> float:
        """The ``quantile`` of what was observed (the prior before anything was), at most
        ``cap``."""
        if not self.ordered:
            value = self.prior
        else:
            index = min(len(self.ordered) - 1, int(self.quantile * len(self.ordered)))
            value = self.ordered[index]
        return self._bounded(value, cap)

    @property
    def largest(self) -> float | None:
        """The largest value observed in the window; ``None`` before the first."""
        return self.ordered[-1] if self.ordered else None

    def most(self, cap: float | None = None) -> float:
        """The largest value observed (the prior before anything was), at most ``cap``."""
        return self._bounded(self.ordered[-1] if self.ordered else self.prior, cap)

    def _bounded(self, value: float, cap: float | None) -> float:
        if self.count < self.warm:
            value = max(value, self.prior)
        return value if cap is None else min(value, cap)
