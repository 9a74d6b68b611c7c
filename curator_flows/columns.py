"""Parsed rows (Python dicts) → Arrow columns, under one type policy.

The policy: **widen the type, else store the column as JSON text.**

- Each value has a kind: ``None`` → null, ``bool``, ``int`` (int64), ``float`` (float64), ``str``,
  ``bytes``, ``Decimal`` and integers outside int64 → decimal (precision and scale wide enough,
  up to 76 digits), ``datetime`` (naive → ``timestamp[us]``, aware → ``timestamp[us, tz]``, kept
  aware), ``date``, ``time``, ``timedelta`` → duration, lists/tuples/sets → list, dicts with
  string keys → struct; an ``Enum`` is its value, a ``UUID`` its string, a pydantic model its
  ``model_dump()``, a numpy scalar its Python value, a numpy array its nested list, pandas'
  ``NaT`` and ``NA`` null.
- A column's type is the join of its values' kinds, over every row of every shard: null joins
  anything; int64 and float64 give float64; int64 and decimals give a wide enough decimal;
  timestamps of different time zones give ``timestamp[us, tz=UTC]`` (the same instants); lists
  and structs join element- and field-wise (a missing field is null).
- Anything else (a string and a number, naive and aware datetimes, a dict with non-string keys,
  a string holding a lone surrogate, at any depth, an empty dict, a number too wide for 76
  digits, ...) makes the **whole column JSON text**: every value of it is stored as its JSON
  encoding (strings quoted; ``Decimal`` as a string; ``bytes`` as base64; durations as
  seconds; non-ASCII escaped only when a lone surrogate needs it).
- A value that not even JSON can hold (an arbitrary object, a dict key that is not a string,
  number, bool or null, a value nested too deep or containing itself) raises
  :class:`~curator_flows.errors.OutputError` naming the row and the column, and so does a
  column name that is not valid text; nothing else fails.

Every shard of a run ends up with the same schema (:func:`join_schemas`, :func:`conform`), so
readers concatenate shard files without promotion. A column stored as JSON text carries the field
metadata :data:`JSON_TEXT` (``curator_flows.encoding: json``), so a later reader (the schema
contract of a published asset, :mod:`curator_flows.contract_cast`) tells JSON text from
strings. Common flat columns (str, int64, float64, bool) are built straight from buffers: no
pandas import, no per-value Python object churn.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import itertools
import json
import uuid
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from .errors import OutputError

Kind = tuple  # ("null",), ("int",), ("dec", int_digits, scale), ("list", Kind), ...

NULL: Kind = ("null",)
BOOL: Kind = ("bool",)
INT: Kind = ("int",)
FLOAT: Kind = ("float",)
STR: Kind = ("str",)
BYTES: Kind = ("bytes",)
DATE: Kind = ("date",)
TIME: Kind = ("time",)
DUR: Kind = ("dur",)
JSON: Kind = ("json",)

#: field metadata of a column whose values are JSON text (see the module docstring)
JSON_TEXT = {b"curator_flows.encoding": b"json"}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_DIGITS = 76  # decimal256
_FLAT = {
    frozenset({str}): STR,
    frozenset({int}): INT,
    frozenset({float}): FLOAT,
    frozenset({bool}): BOOL,
    frozenset({int, float}): FLOAT,
}


class _NotStorable(Exception):
    """A value JSON cannot hold either."""


# ----------------------------------------------------------------------------- kinds of values
def _tz_name(tzinfo: dt.tzinfo, value: dt.datetime) -> str:
    key = getattr(tzinfo, "key", None)  # zoneinfo.ZoneInfo
    if key:
        return key
    zone = getattr(tzinfo, "zone", None)  # pytz
    if zone:
        return zone
    offset = value.utcoffset() or dt.timedelta(0)
    if offset == dt.timedelta(0) and tzinfo in (dt.UTC,):
        return "UTC"
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _decimal_kind(value: decimal.Decimal) -> Kind:
    if not value.is_finite():
        return JSON
    sign, digits, exponent = value.as_tuple()
    scale = max(0, -exponent)
    int_digits = max(1, len(digits) + exponent)
    if int_digits + scale > _MAX_DIGITS:
        return JSON
    return ("dec", int_digits, scale)


def kind_of(value: Any) -> tuple[Kind, Any]:
    """``(kind, the value as Arrow takes it)``."""
    t = type(value)
    if value is None:
        return NULL, None
    if t is str:
        return (STR, value) if _utf8(value) else (JSON, value)
    if t is bool:
        return BOOL, value
    if t is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return INT, value
        digits = len(str(abs(value)))
        return (
            (("dec", digits, 0), decimal.Decimal(value)) if digits <= _MAX_DIGITS else (JSON, value)
        )
    if t is float:
        return FLOAT, value
    if t.__name__ in ("NaTType", "NAType") and t.__module__.startswith("pandas"):
        return NULL, None  # pandas' missing values (NaT is a datetime that has no value)
    if isinstance(value, enum.Enum):
        return kind_of(value.value)
    if isinstance(value, bool):
        return BOOL, bool(value)
    if isinstance(value, int):
        return kind_of(int(value))
    if isinstance(value, float):
        return FLOAT, float(value)
    if isinstance(value, str):
        return kind_of(str(value))
    if isinstance(value, dict):
        return _dict_kind(value)
    if isinstance(value, list | tuple | set | frozenset):
        return _list_kind(value)
    if isinstance(value, dt.datetime):
        tz = value.tzinfo
        if tz is None or value.utcoffset() is None:
            return ("ts", None), value
        return ("ts", _tz_name(tz, value)), value
    if isinstance(value, dt.date):
        return DATE, value
    if isinstance(value, dt.time):
        return (TIME, value) if value.tzinfo is None else (JSON, value)
    if isinstance(value, dt.timedelta):
        return DUR, value
    if isinstance(value, decimal.Decimal):
        kind = _decimal_kind(value)
        return kind, value
    if isinstance(value, bytes | bytearray | memoryview):
        return BYTES, bytes(value)
    if isinstance(value, uuid.UUID):
        return STR, str(value)
    if hasattr(value, "model_dump") and callable(value.model_dump):
        return kind_of(value.model_dump())
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return kind_of(value.tolist() if getattr(value, "ndim", 0) else value.item())
    raise _NotStorable(f"a value of type {type(value).__name__}")


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


def _dict_kind(value: dict) -> tuple[Kind, Any]:
    if not value or not all(type(k) is str and _utf8(k) for k in value):
        _json_text(value)  # raises _NotStorable for keys JSON cannot hold
        return JSON, value
    fields = []
    out = {}
    for key, item in value.items():
        kind, out[key] = kind_of(item)
        fields.append((key, kind))
    return ("struct", tuple(fields)), out


def _list_kind(value: Sequence | set | frozenset) -> tuple[Kind, Any]:
    kind: Kind = NULL
    out = []
    for item in value:
        item_kind, item = kind_of(item)
        kind = join(kind, item_kind)
        out.append(item)
    return ("list", kind), out


def join(a: Kind, b: Kind) -> Kind:
    """The narrowest kind holding both (``JSON`` when there is none)."""
    if a == b:
        return a
    if a == NULL:
        return b
    if b == NULL:
        return a
    if a == JSON or b == JSON:
        return JSON
    ta, tb = a[0], b[0]
    if {a, b} == {INT, FLOAT}:
        return FLOAT
    if ta == "dec" or tb == "dec":
        if (a == INT or ta == "dec") and (b == INT or tb == "dec"):
            ia, sa = (19, 0) if a == INT else a[1:]
            ib, sb = (19, 0) if b == INT else b[1:]
            int_digits, scale = max(ia, ib), max(sa, sb)
            return JSON if int_digits + scale > _MAX_DIGITS else ("dec", int_digits, scale)
        return JSON
    if ta == tb == "ts":
        return ("ts", "UTC") if a[1] is not None and b[1] is not None else JSON
    if ta == tb == "list":
        inner = join(a[1], b[1])
        return JSON if inner == JSON else ("list", inner)
    if ta == tb == "struct":
        fields = dict(a[1])
        for name, kind in b[1]:
            fields[name] = join(fields.get(name, NULL), kind)
            if fields[name] == JSON:
                return JSON
        return ("struct", tuple(fields.items()))
    return JSON


def arrow_type(kind: Kind):
    """The Arrow type of ``kind``."""
    import pyarrow as pa

    tag = kind[0]
    simple = {
        "null": pa.null(),
        "bool": pa.bool_(),
        "int": pa.int64(),
        "float": pa.float64(),
        "str": pa.string(),
        "json": pa.string(),
        "bytes": pa.binary(),
        "date": pa.date32(),
        "time": pa.time64("us"),
        "dur": pa.duration("us"),
    }
    if tag in simple:
        return simple[tag]
    if tag == "dec":
        precision = max(1, kind[1] + kind[2])
        if precision <= 38:
            return pa.decimal128(precision, kind[2])
        return pa.decimal256(precision, kind[2])
    if tag == "ts":
        return pa.timestamp("us", tz=kind[1])
    if tag == "list":
        return pa.list_(arrow_type(kind[1]))
    return pa.struct([pa.field(name, arrow_type(k)) for name, k in kind[1]])


def _storable(kind: Kind, nested: bool = False) -> bool:
    """Whether Arrow, Parquet and ``datasets`` all hold ``kind`` (no empty struct), and no part
    of it needs JSON text (a lone surrogate in a field: the whole column is JSON text)."""
    if kind[0] == "list":
        return _storable(kind[1], True)
    if kind[0] == "struct":
        return bool(kind[1]) and all(_storable(k, True) for _, k in kind[1])
    return not (nested and kind == JSON)


# ----------------------------------------------------------------------------- JSON text
def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "model_dump") and callable(value.model_dump):
        return value.model_dump()
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.tolist() if getattr(value, "ndim", 0) else value.item()
    raise TypeError(f"a value of type {type(value).__name__}")


_ORJSON_OPTS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _json_text(value: Any) -> str:
    """``value`` as JSON text (valid UTF-8); raises :class:`_NotStorable`."""
    if type(value) is str and _utf8(value):
        return orjson.dumps(value).decode()
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTS).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass  # integers past 64 bits, lone surrogates: the stdlib encoder
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=True)
    except RecursionError:
        raise _NotStorable("a value nested too deep, or containing itself,") from None
    except (TypeError, ValueError) as exc:
        raise _NotStorable(str(exc)) from None


# ----------------------------------------------------------------------------- arrays
def _validity(values: list[Any]):
    """``(bitmap buffer or None, null count)``."""
    import numpy as np
    import pyarrow as pa

    nulls = values.count(None)
    if not nulls:
        return None, 0
    mask = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    return pa.py_buffer(np.packbits(mask, bitorder="little").tobytes()), nulls


def _flat_array(kind: Kind, values: list[Any]):
    """A str/int64/float64/bool column straight from buffers (no per-value conversion call
    into Arrow, no pandas); ``None`` when a string is not valid UTF-8."""
    import pyarrow as pa

    validity, nulls = _validity(values)
    n = len(values)
    if kind == STR:
        try:
            encoded = [v.encode() if v is not None else b"" for v in values]
        except UnicodeEncodeError:
            return None
        data = b"".join(encoded)
        large = len(data) > 2**31 - 1
        offsets = array("q" if large else "i", itertools.accumulate(map(len, encoded), initial=0))
        return pa.Array.from_buffers(
            pa.large_string() if large else pa.string(),
            n,
            [validity, pa.py_buffer(offsets), pa.py_buffer(data)],
            null_count=nulls,
        )
    if kind == BOOL:
        import numpy as np

        bits = np.packbits(np.array([bool(v) for v in values], dtype=bool), bitorder="little")
        return pa.Array.from_buffers(
            pa.bool_(), n, [validity, pa.py_buffer(bits.tobytes())], null_count=nulls
        )
    code, arrow = ("q", pa.int64()) if kind == INT else ("d", pa.float64())
    data = array(code, (0 if v is None else v for v in values)) if nulls else array(code, values)
    return pa.Array.from_buffers(arrow, n, [validity, pa.py_buffer(data)], null_count=nulls)


def _json_array(values: list[Any], origin: Callable[[int], Any], column: str):
    texts = []
    for index, value in enumerate(values):
        if value is None:
            texts.append(None)
            continue
        try:
            texts.append(_json_text(value))
        except _NotStorable as exc:
            raise OutputError(
                f"row {origin(index)}, column {column!r}: {exc} cannot be stored (not even as "
                "JSON text); make parse() return JSON-compatible values for it"
            ) from None
    return _flat_array(STR, texts)


def json_text_array(column: str, values: list[Any]):
    """``values`` (Python values read back from Arrow) as a JSON text column."""
    return _json_array(values, str, column)


def json_text(value: Any) -> str:
    """``value`` as JSON text; raises ``ValueError`` for a value JSON cannot hold."""
    try:
        return _json_text(value)
    except _NotStorable as exc:
        raise ValueError(str(exc)) from None


def column_array(column: str, values: list[Any], origin: Callable[[int], Any]):
    """``(kind, Arrow array)`` of one column's values; ``origin(i)`` names the input row of
    value ``i`` in errors."""
    types = set(map(type, values))
    types.discard(type(None))
    if not types:
        import pyarrow as pa

        return NULL, pa.nulls(len(values))
    flat = _FLAT.get(frozenset(types))
    if flat is not None and int in types:
        ints = [v for v in values if type(v) is int]
        if min(ints) < _INT64_MIN or max(ints) > _INT64_MAX:
            flat = None
    if flat is not None:
        array_ = _flat_array(flat, values)
        if array_ is not None:
            return flat, array_
    return build(column, values, origin, None)


def build(column: str, values: list[Any], origin: Callable[[int], Any], target: Kind | None):
    """``(kind, Arrow array)`` of ``values`` as ``target`` (``None``: their joined kind)."""
    import pyarrow as pa

    kind: Kind = NULL
    converted = []
    for value in values:
        try:
            value_kind, value = kind_of(value)
        except (_NotStorable, RecursionError):
            value_kind = JSON  # _json_array names the row
        kind = join(kind, value_kind)
        converted.append(value)
    if target is not None:
        kind = join(kind, target)
    if not _storable(kind):
        kind = JSON
    if kind == JSON:
        return JSON, _json_array(values, origin, column)
    if kind in (STR, INT, FLOAT, BOOL):
        array_ = _flat_array(kind, converted)
        if array_ is not None:
            return kind, array_
    if kind == NULL:
        return NULL, pa.nulls(len(values))
    try:
        return kind, pa.array(converted, type=arrow_type(kind))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return JSON, _json_array(values, origin, column)


def rows_table(rows: list[dict[str, Any]], origins: list[Any]):
    """``(table, {column: kind})`` of one shard's parsed rows; ``origins[i]`` is the input row
    that produced ``rows[i]`` (for error messages)."""
    import pyarrow as pa

    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    for name in names:
        if not _utf8(name):
            first = next(i for i, row in enumerate(rows) if name in row)
            raise OutputError(
                f"row {origins[first]}: the column name {name!r} is not valid text (a lone "
                "surrogate); make parse() return column names that are"
            )
    kinds: dict[str, Kind] = {}
    arrays = []
    fields = []
    for name in names:
        values = [row.get(name) for row in rows]
        kinds[name], column = column_array(name, values, origins.__getitem__)
        arrays.append(column)
        fields.append(_field(name, kinds[name], column.type))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields)) if names else pa.table({})
    return table, kinds


def join_schemas(shards: list[dict[str, Kind]]) -> dict[str, Kind]:
    """The run's column kinds: every shard's columns (first-seen order), kinds joined."""
    joined: dict[str, Kind] = {}
    for kinds in shards:
        for name, kind in kinds.items():
            merged = join(joined.get(name, NULL), kind)
            joined[name] = merged if _storable(merged) else JSON
    return joined


def conform(table, kinds: dict[str, Kind], target: dict[str, Kind], origin: Callable[[int], Any]):
    """``table`` (a shard written with ``kinds``) with exactly the columns and types of
    ``target``: missing columns are null, widened columns converted, JSON columns encoded."""
    import pyarrow as pa

    arrays = []
    for name, want in target.items():
        have = kinds.get(name)
        if have == want:
            arrays.append(table.column(name).combine_chunks())
        elif have is None or have == NULL:
            arrays.append(pa.nulls(table.num_rows, type=arrow_type(want)))
        elif want == JSON:
            values = table.column(name).to_pylist()
            arrays.append(_json_array(values, origin, name))
        else:
            _, converted = build(name, table.column(name).to_pylist(), origin, want)
            if converted.type != arrow_type(want):
                converted = converted.cast(arrow_type(want))
            arrays.append(converted)
    return pa.Table.from_arrays(arrays, schema=schema_of(target))


def schema_of(kinds: dict[str, Kind]):
    import pyarrow as pa

    return pa.schema([_field(name, kind, arrow_type(kind)) for name, kind in kinds.items()])


def _field(name: str, kind: Kind, type_):
    """The Arrow field of a column (JSON text columns carry :data:`JSON_TEXT`)."""
    import pyarrow as pa

    return pa.field(name, type_, metadata=JSON_TEXT if kind == JSON else None)


def is_json_text(field) -> bool:
    """Whether the Arrow ``field`` holds JSON text (see :data:`JSON_TEXT`)."""
    metadata = field.metadata or {}
    return metadata.get(b"curator_flows.encoding") == b"json"
