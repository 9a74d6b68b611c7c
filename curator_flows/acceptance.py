"""The acceptance rule of a response, the same for online, batch and offline runs and for
finalize: the finish reason must not be one of ``invalid_finish_reasons``, and the content must
validate against ``response_format`` (when there is one).

Invariants:
- a response is stored as a success only if :meth:`Acceptance.problem` is ``None``;
- finalize judges stored successes again with :meth:`Acceptance.accept` (the model may have
  tightened since), so a row is never parsed from content the current model refuses; such a
  success is taken back (an invalidation line, :mod:`curator_flows.pending`) and sent again;
- :meth:`Acceptance.fingerprint` changes whenever the rule may judge differently: the
  invalid finish reasons, and ``response_format``'s JSON schema, class source and validator
  code (its own and those of every model and validator function it nests), so a finished
  output is re-finalized, never returned stale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fingerprint import canonical, code_fingerprint, digest

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

    def accept(self, finish_reason: str | None, content: str) -> tuple[Any, str | None]:
        """Like :meth:`validate`, the finish reason judged first."""
        if finish_reason in self.invalid:
            return None, f"invalid finish_reason {finish_reason!r}"
        return self.validate(content)

    def problem(self, finish_reason: str | None, content: str | None) -> str | None:
        """Why :meth:`accept` refuses the answer, or ``None``."""
        return self.accept(finish_reason, content or "")[1]

    def fingerprint(self) -> str:
        """What the rule depends on (see the module's invariants)."""
        parts: list[str | bytes] = [canonical(sorted(r for r in self.invalid if r is not None))]
        parts.append(str(None in self.invalid))
        if self.model is not None:
            parts.append(canonical(self.model.model_json_schema()))
            parts.extend(model_code(self.model))
        return digest(*parts)


def model_code(model: type) -> list[str]:
    """Fingerprints of the code a pydantic model runs when it validates: each model class's
    source (or its validators' code when there is no source) and every validator function,
    for ``model`` and every model nested in its fields, in a stable order."""
    seen: set[type] = set()
    found: list[str] = []
    pending = [model]
    while pending:
        cls = pending.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        found.append(f"{cls.__module__}.{cls.__qualname__}:{_class_source(cls)}")
        for func in _validator_functions(cls):
            found.append(code_fingerprint(func))
        for info in getattr(cls, "model_fields", {}).values():
            for item in _walk(info.annotation, *info.metadata):
                if isinstance(item, type) and hasattr(item, "model_fields"):
                    pending.append(item)
                elif callable(getattr(item, "func", None)):  # AfterValidator(f) & co
                    found.append(code_fingerprint(item.func))
    return found


def _class_source(cls: type) -> str:
    import inspect

    try:
        return digest("src", inspect.getsource(cls))
    except (OSError, TypeError):
        return "no-source"


def _validator_functions(cls: type) -> list[Any]:
    decorators = getattr(cls, "__pydantic_decorators__", None)
    if decorators is None:
        return []
    funcs = []
    for group in (
        "validators",
        "field_validators",
        "root_validators",
        "model_validators",
        "field_serializers",
        "model_serializers",
    ):
        for name in sorted(getattr(decorators, group, {}) or {}):
            funcs.append(getattr(decorators, group)[name].func)
    return funcs


def _walk(*roots: Any) -> list[Any]:
    """Everything named in a field's annotation and metadata, depth first (``list[Step]``,
    ``A | None``, ``Annotated[int, AfterValidator(f)]``)."""
    import typing

    found = []
    stack = list(reversed(roots))
    while stack:
        item = stack.pop()
        found.append(item)
        stack.extend(reversed(typing.get_args(item)))
    return found
