"""The output schema a user declares, as an Arrow schema: what a published asset's contract is
made of when the code says it (see docs/architecture.md, "Published outputs").

Where a declaration comes from, first found wins:

1. ``output_schema`` (an ``LLM`` class attribute or constructor argument): a ``pyarrow.Schema``
   as is, or a pydantic model / ``TypedDict`` class;
2. ``parse()``'s return annotation: a pydantic model or ``TypedDict`` (or a list of one, or
   either or ``None``);
3. the class of the pydantic models ``parse()`` returned, when every row of the run came from
   one class (finalize observes it);
4. the default ``parse()`` with a ``response_format``: the model's fields as
   ``model_dump(mode="json")`` gives them (dates, decimals, UUIDs, bytes as strings);

else nothing is declared and the first publish infers the contract from the data.

Types map as the row's values are stored (:mod:`curator_flows.columns`): ``int`` → int64,
``float`` → float64, ``str``/``UUID``/``Literal`` of strings → string, ``bool``, ``bytes`` →
binary, ``datetime`` → ``timestamp[us]`` (``AwareDatetime`` → UTC), ``date``, ``time``,
``timedelta`` → duration, ``Decimal`` → decimal (``max_digits``/``decimal_places`` when given,
else 38 digits, scale 9), an ``Enum`` → its values' type, lists/sets/tuples → list, nested
models and ``TypedDict`` → struct. What has no one type (``Any``, a union of types, a ``dict``
with free keys) is a JSON text column (:data:`~curator_flows.columns.JSON_TEXT`). A field that
is required and not ``Optional`` is non-nullable.

Invariant: the schema depends only on the code (classes and annotations), never on data.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import inspect
import logging
import types
import typing
import uuid
from typing import Any

from .columns import JSON_TEXT
from .errors import ConfigError

log = logging.getLogger(__name__)

#: ``parse()``'s own declaration wins over a model merely observed
SOURCES = ("output_schema", "parse annotation", "parse returns", "response_format")
_DECIMAL_DEFAULT = (38, 9)


def is_arrow_schema(value: Any) -> bool:
    return type(value).__name__ == "Schema" and type(value).__module__.startswith("pyarrow")


def _is_model(value: Any) -> bool:
    if not isinstance(value, type):
        return False
    from pydantic import BaseModel

    return issubclass(value, BaseModel)


def check_output_schema(value: Any) -> None:
    """Refuse an ``output_schema`` that is neither an Arrow schema, a pydantic model nor a
    ``TypedDict`` (:class:`~curator_flows.errors.ConfigError`)."""
    if value is None or is_arrow_schema(value) or _is_model(value) or typing.is_typeddict(value):
        return
    raise ConfigError(
        f"output_schema must be a pyarrow.Schema, a pydantic BaseModel subclass or a TypedDict, "
        f"got {value!r}"
    )


def declared_schema(llm: Any, returned_model: type | None = None) -> tuple[Any, str] | None:
    """``(Arrow schema, where it was declared)`` of ``llm``'s output, or ``None`` when the code
    declares none. ``returned_model``: the one pydantic class every parsed row came from."""
    explicit = getattr(llm, "output_schema", None)
    if explicit is not None:
        check_output_schema(explicit)
        if is_arrow_schema(explicit):
            return explicit, "output_schema"
        return schema_of_class(explicit), f"output_schema {_name(explicit)}"
    annotated = _parse_annotation(type(llm).parse)
    if annotated is not None:
        return schema_of_class(annotated), f"parse() -> {_name(annotated)}"
    if returned_model is not None:
        return schema_of_class(returned_model), f"parse() returns {_name(returned_model)}"
    response_format = getattr(llm, "response_format", None)
    if (
        _is_default_parse(type(llm).parse)
        and response_format is not None
        and not getattr(llm, "return_completions_object", False)
    ):
        return (
            schema_of_class(response_format, json_mode=True),
            f"response_format {_name(response_format)} (default parse)",
        )
    return None


def _is_default_parse(parse: Any) -> bool:
    """Whether ``parse`` is ``LLM.parse`` itself (not overridden)."""
    return parse.__module__ == "curator_flows.llm" and parse.__qualname__ == "LLM.parse"


def _name(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _parse_annotation(parse: Any) -> type | None:
    """The model or ``TypedDict`` that ``parse``'s return annotation names (inside ``list``,
    ``Optional`` or ``X | list[X]``), or ``None``."""
    try:
        hint = typing.get_type_hints(parse).get("return")
    except Exception as exc:  # noqa: BLE001 - an unresolvable annotation declares nothing
        log.debug("parse() annotation not resolved: %s", exc)
        return None
    found: set[type] = set()

    def visit(node: Any) -> None:
        origin = typing.get_origin(node)
        if origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(node):
                visit(arg)
        elif origin in (list, tuple, set, frozenset) or (
            origin is not None and inspect.isclass(origin) and _is_sequence(origin)
        ):
            for arg in typing.get_args(node):
                if arg is not Ellipsis:
                    visit(arg)
        elif typing.get_origin(node) is typing.Annotated:
            visit(typing.get_args(node)[0])
        elif _is_model(node) or typing.is_typeddict(node):
            found.add(node)

    if hint is None:
        return None
    visit(hint)
    return found.pop() if len(found) == 1 else None


def _is_sequence(origin: type) -> bool:
    import collections.abc as abc

    return issubclass(origin, abc.Sequence | abc.Set) and not issubclass(origin, str | bytes)


# ----------------------------------------------------------------------------- class → Arrow
def schema_of_class(cls: Any, *, json_mode: bool = False):
    """The Arrow schema of the rows a pydantic model (``model_dump()``, or
    ``model_dump(mode="json")`` with ``json_mode``) or a ``TypedDict`` gives."""
    import pyarrow as pa

    return pa.schema(_fields_of(cls, json_mode, seen=()))


def _fields_of(cls: Any, json_mode: bool, seen: tuple) -> list[Any]:
    import pyarrow as pa

    if cls in seen:
        raise _Recursive
    seen = (*seen, cls)
    fields = []
    if _is_model(cls):
        for name, info in cls.model_fields.items():
            nullable, type_, json_text = _arrow_of(info.annotation, json_mode, seen, info)
            fields.append(
                pa.field(
                    name,
                    type_,
                    nullable=nullable or not info.is_required(),
                    metadata=JSON_TEXT if json_text else None,
                )
            )
        return fields
    hints = typing.get_type_hints(cls, include_extras=True)
    required = getattr(cls, "__required_keys__", frozenset(hints))
    for name, hint in hints.items():
        nullable, type_, json_text = _arrow_of(hint, json_mode, seen, None)
        fields.append(
            pa.field(
                name,
                type_,
                nullable=nullable or name not in required,
                metadata=JSON_TEXT if json_text else None,
            )
        )
    return fields


class _Recursive(Exception):
    pass


def _arrow_of(hint: Any, json_mode: bool, seen: tuple, info: Any) -> tuple[bool, Any, bool]:
    """``(nullable, Arrow type, stored as JSON text)`` of an annotation."""
    import pyarrow as pa

    metadata: list[Any] = list(getattr(info, "metadata", None) or [])
    while typing.get_origin(hint) is typing.Annotated:
        hint, *extra = typing.get_args(hint)
        metadata.extend(extra)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(hint))
        if len(args) == 1:
            _, type_, json_text = _arrow_of(args[0], json_mode, seen, None)
            return nullable, type_, json_text
        kinds = {_arrow_of(a, json_mode, seen, None)[1:] for a in args}
        if len(kinds) == 1:
            type_, json_text = kinds.pop()
            return nullable, type_, json_text
        return nullable, pa.string(), True
    if hint is type(None):
        return True, pa.null(), False
    if hint is typing.Any or hint is object:
        return True, pa.string(), True
    try:
        return False, *_plain(hint, origin, json_mode, seen, metadata)
    except _Recursive:  # a model that contains itself has no fixed depth
        return False, pa.string(), True


def _plain(hint: Any, origin: Any, json_mode: bool, seen: tuple, metadata: list) -> tuple:
    """``(Arrow type, JSON text)`` of a non-union annotation."""
    import pyarrow as pa

    json_text = (pa.string(), True)
    if hint is typing.Any or hint is object:
        return json_text
    if origin is typing.Literal:
        values = typing.get_args(hint)
        kinds = {_value_type(v) for v in values}
        return (kinds.pop(), False) if len(kinds) == 1 and None not in kinds else json_text
    if origin in (list, set, frozenset, tuple) or (
        origin is not None and inspect.isclass(origin) and _is_sequence(origin)
    ):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if origin is tuple and len(set(args)) > 1:
            return json_text
        if not args:
            return json_text
        _, item, item_json = _arrow_of(args[0], json_mode, seen, None)
        if item_json:
            return json_text
        return pa.list_(item), False
    if origin is dict or hint is dict or origin is not None:
        return json_text
    if not inspect.isclass(hint):
        return json_text
    if issubclass(hint, enum.Enum):
        kinds = {_value_type(member.value) for member in hint}
        return (kinds.pop(), False) if len(kinds) == 1 and None not in kinds else json_text
    if _is_model(hint) or typing.is_typeddict(hint):
        fields = _fields_of(hint, json_mode, seen)
        return (pa.struct(fields), False) if fields else json_text
    return _scalar(hint, json_mode, metadata)


def _scalar(hint: type, json_mode: bool, metadata: list) -> tuple:
    import pyarrow as pa

    if issubclass(hint, bool):
        return pa.bool_(), False
    if issubclass(hint, int):
        return pa.int64(), False
    if issubclass(hint, float):
        return pa.float64(), False
    if issubclass(hint, str) or issubclass(hint, uuid.UUID):
        return pa.string(), False
    as_text = (pa.string(), False)
    if issubclass(hint, bytes):
        return as_text if json_mode else (pa.binary(), False)
    if issubclass(hint, dt.datetime):
        if json_mode:
            return as_text
        return pa.timestamp("us"), False
    if issubclass(hint, dt.date):
        return as_text if json_mode else (pa.date32(), False)
    if issubclass(hint, dt.time):
        return as_text if json_mode else (pa.time64("us"), False)
    if issubclass(hint, dt.timedelta):
        return as_text if json_mode else (pa.duration("us"), False)
    if hint.__module__.startswith("pydantic") and hint.__name__.endswith(("Datetime", "Date")):
        if json_mode:  # AwareDatetime, NaiveDatetime, PastDate, FutureDatetime, ...
            return as_text
        if hint.__name__.endswith("Date"):
            return pa.date32(), False
        return pa.timestamp("us", tz="UTC" if hint.__name__ == "AwareDatetime" else None), False
    if issubclass(hint, decimal.Decimal):
        if json_mode:
            return as_text
        digits, places = _decimal_bounds(metadata)
        return (pa.decimal128 if digits <= 38 else pa.decimal256)(digits, places), False
    return pa.string(), True


def _decimal_bounds(metadata: list) -> tuple[int, int]:
    """``(precision, scale)`` from a field's ``max_digits`` / ``decimal_places``."""
    digits = next((m.max_digits for m in metadata if getattr(m, "max_digits", None)), None)
    places = next(
        (m.decimal_places for m in metadata if getattr(m, "decimal_places", None) is not None),
        None,
    )
    if digits is None:
        return _DECIMAL_DEFAULT
    return digits, places if places is not None else 0


def _value_type(value: Any):
    import pyarrow as pa

    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    return None


# ----------------------------------------------------------------------------- JSON form
def schema_to_json(schema) -> str:
    """``schema`` as base64 text (Arrow IPC): exact, field metadata included."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_json(text: str):
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def describe(schema) -> list[dict[str, Any]]:
    """The fields of ``schema`` for people: ``name``, ``type``, ``nullable`` and ``json`` (the
    column holds JSON text)."""
    from .columns import is_json_text

    return [
        {
            "name": field.name,
            "type": str(field.type),
            "nullable": field.nullable,
            "json": is_json_text(field),
        }
        for field in schema
    ]
