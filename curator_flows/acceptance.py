"""The acceptance rule of a response, the same for online, batch and offline runs and for
finalize: the finish reason must not be one of ``invalid_finish_reasons``, and the content must
validate against ``response_format`` (when there is one).

Invariants:
- a response is stored as a success only if :meth:`Acceptance.problem` is ``None``; a validator
  that raises something other than a validation error refuses the answer with that error as
  the reason (it never escapes into a runner, where it would drop answers in flight);
- every finalize judges the stored successes again with :meth:`Acceptance.accept` (the rule may
  have tightened since, through its code or through what its code reads: an environment
  variable, a module constant), so a row is never parsed from content the current rule
  refuses; such a success is taken back (an invalidation line, :mod:`curator_flows.pending`)
  and sent again;
- a finished output is reused without finalizing again only when the current rule, applied
  to every stored success, refuses none and makes of them exactly what the output was parsed
  from (:class:`Judged`, :func:`judge_stored`): judging is what decides, never a fingerprint
  of the rule's code, so a rule that changed without its source changing is always applied.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from .pending import SUCCESS, read_shard

if TYPE_CHECKING:
    from .llm import LLM
    from .store import RunStore


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
        except Exception as exc:  # noqa: BLE001 - a validator's own bug refuses the answer too
            return None, (
                f"validating the content with {self.model.__name__} raised "
                f"{type(exc).__name__}: {exc} (a bug in a validator?)"
            )

    def accept(self, finish_reason: str | None, content: str) -> tuple[Any, str | None]:
        """Like :meth:`validate`, the finish reason judged first."""
        if finish_reason in self.invalid:
            return None, f"invalid finish_reason {finish_reason!r}"
        return self.validate(content)

    def problem(self, finish_reason: str | None, content: str | None) -> str | None:
        """Why :meth:`accept` refuses the answer, or ``None``."""
        return self.accept(finish_reason, content or "")[1]


class Judged:
    """What the rule made of a run's stored successes: how many it accepted, and an order-free
    digest of ``(request id, what parse() receives)`` over them (a validated model as its JSON,
    else the content), so two judgings compare equal exactly when they accepted the same
    answers and made the same values of them."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def add(self, request_id: str, response: Any) -> None:
        self.count += 1
        value = hashlib.blake2b(digest_size=16)
        value.update(request_id.encode())
        value.update(b"\0")
        value.update(_value_bytes(response))
        self.total = (self.total + int.from_bytes(value.digest(), "little")) & _MASK

    def fingerprint(self) -> str:
        return f"{self.count}-{self.total:032x}"


_MASK = (1 << 128) - 1


def _value_bytes(response: Any) -> bytes:
    if isinstance(response, str):
        return response.encode("utf-8", "surrogatepass")
    try:
        return response.model_dump_json().encode("utf-8", "surrogatepass")
    except Exception:  # noqa: BLE001 - a value pydantic cannot serialise: compare by repr
        return repr(response).encode("utf-8", "surrogatepass")


def judge_stored(store: RunStore, shards: list[str], acceptance: Acceptance) -> str | None:
    """The :meth:`Judged.fingerprint` of the stored successes of ``shards`` under the current
    rule, or ``None`` as soon as the rule refuses one of them."""
    judged = Judged()
    for shard in shards:
        lines = read_shard(store, shard, keep=True)
        for request_id, kind in lines.kinds.items():
            if kind != SUCCESS:
                continue
            record = lines.lines[request_id]
            response, error = acceptance.accept(record.get("finish_reason"), record["content"])
            if error is not None:
                return None
            judged.add(request_id, response)
    return judged.fingerprint()
