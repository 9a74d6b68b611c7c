"""The acceptance rule of a response, the same for online, batch and offline runs and for
finalize: the finish reason must not be one of ``invalid_finish_reasons``, and the content must
validate against ``response_format`` (when there is one).

Invariant: a response is stored as a success only if :meth:`Acceptance.problem` is ``None``;
finalize validates stored content again with :meth:`Acceptance.validate` (the model may have
tightened since), so a row is never parsed from content the current model refuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .llm import LLM


class Acceptance:
    """``problem(finish_reason, content)`` → the reason to refuse, or ``None``."""

    def __init__(self, llm: LLM) -> None:
        self.invalid = frozenset(llm.config.params.invalid_finish_reasons)
        self.model = llm.response_format

    def validate(self, content: str) -> tuple[Any, str | None]:
        """``(model instance, None)``, or ``(None, reason)`` when ``content`` does not match
        ``response_format``; without one, ``(content, None)``."""
        if self.model is None:
            return content, None
        from pydantic import ValidationError

        try:
            return self.model.model_validate_json(content), None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "response"
            return None, (
                f"content does not match {self.model.__name__}: {where}: {first.get('msg')}"
            )

    def problem(self, finish_reason: str | None, content: str | None) -> str | None:
        if finish_reason in self.invalid:
            return f"invalid finish_reason {finish_reason!r}"
        if self.model is not None:
            return self.validate(content or "")[1]
        return None
