"""Input rows as deterministic, type-tagged JSON: what ``prompt()`` and ``parse()`` see.

A row is stored in ``requests/<shard>.jsonl`` (the ``"input"`` of its request line) and read
back by ``finalize``; ``prepare`` hands ``prompt()`` the row as decoded from those same bytes.

Invariants:
- ``decode(orjson.loads(encode(value)))`` equals ``value`` for every supported value, and keeps
  its type: ``datetime`` (naive, or aware with its zone or fixed offset), ``date``, ``time``,
  ``timedelta``, ``Decimal``, ``UUID``, ``bytes``, ``bytearray``, ``complex``, ``tuple``,
  ``set``, ``frozenset``, integers beyond 64 bits, NaN and infinities, strings with lone
  surrogates, dicts with non-string keys, numpy scalars and arrays (dtype, shape and bytes),
  pandas ``Timestamp`` (unit and zone), ``Timedelta``, ``NaT`` and ``NA``;
- plain JSON (``str``, ``int``, finite ``float``, ``bool``, ``None``, lists, dicts with string
  keys) encodes as itself, so ordinary rows read as ordinary JSON;
- the bytes are a pure function of the value (no ``id()``, no hash-seeded set order: set members
  are sorted by their encoding), so they can be hashed into the run id;
- a few values are stored by what they mean rather than by their Python class, documented here
  because they come back as something else: an ``Enum`` member as its ``value`` (the class is
  code, not data; ``StrEnum``/``IntEnum`` members already are their values), a pydantic model or
  a dataclass as a dict of its fields, any other mapping as a ``dict``, a subclass of ``str``,
  ``int``, ``float`` or ``list`` as the base type;
- any other value, a value that contains itself (a circular reference) and one nested too
  deep for JSON (past about 250 levels) raise :class:`~curator_flows.errors.InputError`
  naming the row, the column and the path inside it, at prepare (before anything is sent).

Format: a tagged value is a JSON object whose first key is ``"$cf"`` (the tag) with its data in
``"v"`` (and ``"tz"``, ``"fold"``, ``"dtype"``, ``"shape"``, ``"unit"`` where needed). A user
dict that itself has a ``"$cf"`` key, or any non-string key, is stored as ``{"$cf": "map", "v":
[[key, value], ...]}``, so a tag can never be confused with data.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from .errors import InputError

TAG = "$cf"
_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1
_PLAIN_FLOAT_SPECIALS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
#: the depth an error names for a row nested too deep to store (orjson writes at most 255
#: levels, and a tag adds one)
MAX_DEPTH = 200
_CONTAINERS = (dict, list, tuple, set, frozenset)


class _Unencodable(Exception):
    """A value with no encoding; ``path`` is where it sits inside the row."""

    def __init__(self, value: Any, path: list[Any]) -> None:
        super().__init__(type(value).__name__)
        self.value_type = f"{type(value).__module__}.{type(value).__qualname__}"
        self.path = path


# ----------------------------------------------------------------------------- encoding
_FLAT = frozenset({str, int, bool, type(None)})


def encode(value: Any) -> bytes:
    """The value's bytes; raises ``_Unencodable`` (with ``.path``) for a value with no
    encoding."""
    return _encode(value)[0]


def _encode(value: Any) -> tuple[bytes, bool]:
    """``(bytes, flat)``: ``flat`` when ``value`` is a string or a dict of strings, integers,
    finite floats, booleans and ``None`` under string keys (encoded by orjson as it is)."""
    kind = type(value)
    if kind is dict and TAG not in value:
        for key, item in value.items():
            item_kind = type(item)
            if type(key) is not str or (
                item_kind not in _FLAT and (item_kind is not float or item - item != 0.0)
            ):
                break
        else:
            try:
                return orjson.dumps(value), True
            except TypeError:  # an integer beyond 64 bits, or a lone surrogate
                pass
    elif kind is str:
        try:
            return orjson.dumps(value), True
        except TypeError:
            pass
    try:
        return orjson.dumps(_Encoder(check_strings=False).convert(value)), False
    except _Unencodable:
        raise
    except TypeError:
        # orjson refuses strings that are not valid UTF-8 (lone surrogates): tag them
        return orjson.dumps(_Encoder(check_strings=True).convert(value)), False


def encode_row(index: int, row: Any) -> tuple[bytes, Any]:
    """The bytes of row ``index`` and the row as ``loads`` of those bytes returns it (for a
    flat row, a shallow copy: the same values without decoding). A value with no encoding
    raises :class:`InputError` naming the row, the column and the path inside it."""
    try:
        data, flat = _encode(row)
    except _Unencodable as exc:
        raise InputError(_unencodable_message(index, row, exc)) from None
    except RecursionError:
        raise InputError(_nesting_message(index, row)) from None
    except (TypeError, ValueError) as exc:  # orjson's own depth limit, or not expected
        if "recursion" in str(exc).lower():
            raise InputError(_nesting_message(index, row)) from None
        raise InputError(f"row {index}: cannot be stored in the run directory: {exc}") from None
    if flat:
        return data, dict(row) if type(row) is dict else row
    return data, loads(data)


def _where(index: int, row: Any, path: list[Any]) -> str:
    where = f"row {index}"
    if isinstance(row, dict) and path:
        where += f", column {path[0]!r}"
        path = path[1:]
    if path:
        where += " at " + "".join(f"[{step!r}]" for step in path)
    return where


def _nesting_message(index: int, row: Any) -> str:
    """Where ``row`` contains itself, or is nested too deep (walked without recursion)."""
    stack: list[tuple[Any, list[Any], frozenset[int]]] = [(row, [], frozenset())]
    while stack:
        value, path, above = stack.pop()
        if not isinstance(value, _CONTAINERS):
            continue
        if id(value) in above:
            return (
                f"{_where(index, row, path)}: the value contains itself (a circular reference), "
                "which cannot be stored in the run directory; pass a copy without the cycle"
            )
        if len(path) > MAX_DEPTH:
            return (
                f"{_where(index, row, path[:3])} ...: the value is nested more than {MAX_DEPTH} "
                "levels deep, more than the run directory stores; flatten it or pass it as a "
                "JSON string"
            )
        above = above | {id(value)}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend((item, [*path, step], above) for step, item in items)
    return f"row {index}: nested too deeply to be stored in the run directory"


def _unencodable_message(index: int, row: Any, exc: _Unencodable) -> str:
    where = _where(index, row, exc.path)
    return (
        f"{where}: a value of type {exc.value_type} cannot be stored in the run directory "
        "(supported: JSON values, datetime/date/time/timedelta, Decimal, UUID, bytes, tuples, "
        "sets, Enum, numpy and pandas scalars and arrays, pydantic models, dataclasses); "
        "convert it (for example to str) before calling the LLM"
    )


class _Encoder:
    """Converts a value into plain JSON values and tags. The fast path tracks no path: when a
    value has no encoding, each container on the way up adds its key to the error's path."""

    __slots__ = ("check_strings",)

    def __init__(self, check_strings: bool) -> None:
        self.check_strings = check_strings

    def convert(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return self._string(value) if self.check_strings else value
        if kind is int:
            return value if _I64_MIN <= value <= _U64_MAX else {TAG: "int", "v": str(value)}
        if value is None or kind is bool:
            return value
        if kind is float:
            return value if value - value == 0.0 else _special_float(value)
        if kind is dict:
            return self._dict(value)
        if kind is list:
            return self._list(value)
        return self._other(value)

    def _string(self, text: str) -> Any:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
            return {TAG: "str", "v": base64.b64encode(raw).decode("ascii")}
        return text

    def _dict(self, value: Mapping[Any, Any]) -> Any:
        convert = self.convert
        plain_keys = TAG not in value and all(type(key) is str for key in value)
        if plain_keys and self.check_strings:
            plain_keys = all(self._string(key) is key for key in value)
        try:
            if plain_keys:
                return {key: convert(item) for key, item in value.items()}
            return {TAG: "map", "v": [[convert(k), convert(v)] for k, v in value.items()]}
        except _Unencodable:
            for key, item in value.items():
                self._locate(key, key)
                self._locate(item, key)
            raise

    def _list(self, value: list[Any] | tuple[Any, ...]) -> list[Any]:
        convert = self.convert
        try:
            return [convert(item) for item in value]
        except _Unencodable:
            for index, item in enumerate(value):
                self._locate(item, index)
            raise

    def _locate(self, item: Any, step: Any) -> None:
        """Re-convert ``item`` (on the error path only), adding ``step`` to a failure's path."""
        try:
            self.convert(item)
        except _Unencodable as exc:
            exc.path.insert(0, step)
            raise

    def _other(self, value: Any) -> Any:
        module = type(value).__module__
        if module == "numpy" or module.startswith("numpy."):
            return self._numpy(value)
        if module.startswith("pandas"):
            encoded = self._pandas(value)
            if encoded is not None:
                return encoded
        if isinstance(value, enum.Enum):
            return self.convert(value.value)
        if isinstance(value, datetime.datetime):
            return _datetime(value)
        if isinstance(value, datetime.date):
            return {TAG: "date", "v": value.isoformat()}
        if isinstance(value, datetime.time):
            encoded = {TAG: "time", "v": value.replace(tzinfo=None).isoformat()}
            if value.tzinfo is not None:
                encoded["tz"] = _tz_of(value.tzinfo, None, value)
            if value.fold:
                encoded["fold"] = 1
            return encoded
        if isinstance(value, datetime.timedelta):
            return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
        if isinstance(value, decimal.Decimal):
            return {TAG: "decimal", "v": str(value)}
        if isinstance(value, uuid.UUID):
            return {TAG: "uuid", "v": str(value)}
        if isinstance(value, bytes):
            return {TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
        if isinstance(value, bytearray):
            return {TAG: "bytearray", "v": base64.b64encode(value).decode("ascii")}
        if isinstance(value, tuple):
            return {TAG: "tuple", "v": self._list(value)}
        if isinstance(value, set | frozenset):
            items = self._list(list(value))
            items.sort(key=orjson.dumps)
            return {TAG: "set" if isinstance(value, set) else "frozenset", "v": items}
        if isinstance(value, str):
            return self.convert(str(value))
        if isinstance(value, int):
            return self.convert(int(value))
        if isinstance(value, float):
            return self.convert(float(value))
        if isinstance(value, complex):
            return {TAG: "complex", "v": [self.convert(value.real), self.convert(value.imag)]}
        if isinstance(value, Mapping):
            return self._dict(dict(value))
        if isinstance(value, list):
            return self._list(value)
        if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):
            return self._dict(value.model_dump())
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self._dict({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
        raise _Unencodable(value, [])

    def _numpy(self, value: Any) -> Any:
        import numpy as np

        if isinstance(value, np.ndarray):
            dtype = value.dtype
            if dtype.kind == "O":
                flat = self._list(list(value.flat))
                return {TAG: "ndarray", "dtype": "|O", "shape": list(value.shape), "v": flat}
            if dtype.fields is None and dtype.subdtype is None:
                raw = np.ascontiguousarray(value).tobytes()
                return {
                    TAG: "ndarray",
                    "dtype": dtype.str,
                    "shape": list(value.shape),
                    "b64": base64.b64encode(raw).decode("ascii"),
                }
        elif isinstance(value, np.generic):
            dtype = value.dtype
            if dtype.kind in "biuf" and dtype.itemsize <= 8:
                return {TAG: "np", "dtype": dtype.str, "v": self.convert(value.item())}
            if dtype.kind in "cmMUS":
                raw = base64.b64encode(value.tobytes()).decode("ascii")
                return {TAG: "np", "dtype": dtype.str, "b64": raw}
        raise _Unencodable(value, [])

    def _pandas(self, value: Any) -> Any:
        name = type(value).__name__
        if name == "NaTType":
            return {TAG: "pd.NaT"}
        if name == "NAType":
            return {TAG: "pd.NA"}
        if name == "Timestamp":
            encoded = {TAG: "pd.Timestamp", "v": int(value.asm8.view("i8")), "unit": value.unit}
            if value.tzinfo is not None:  # asm8 is UTC for an aware Timestamp
                encoded["tz"] = _tz_of(value.tzinfo, value, value)
            return encoded
        if name == "Timedelta":
            return {TAG: "pd.Timedelta", "v": int(value.asm8.view("i8")), "unit": value.unit}
        return None


def _special_float(value: float) -> dict[str, Any]:
    text = "nan" if value != value else ("inf" if value > 0 else "-inf")
    return {TAG: "float", "v": text}


def _datetime(value: datetime.datetime) -> dict[str, Any]:
    encoded: dict[str, Any] = {TAG: "datetime", "v": value.replace(tzinfo=None).isoformat()}
    if value.tzinfo is not None:
        encoded["tz"] = _tz_of(value.tzinfo, value, value)
    if value.fold:
        encoded["fold"] = 1
    return encoded


def _tz_of(tzinfo: datetime.tzinfo, moment: datetime.datetime | None, value: Any) -> str | int:
    """An IANA zone name when ``tzinfo`` has one (zoneinfo, pytz), else the offset at
    ``moment`` in microseconds (a fixed offset: the instant and its awareness are kept)."""
    key = getattr(tzinfo, "key", None) or getattr(tzinfo, "zone", None)
    if isinstance(key, str) and key:
        return key
    offset = tzinfo.utcoffset(moment)
    if offset is None:
        raise _Unencodable(value, [])
    return offset // datetime.timedelta(microseconds=1)


# ----------------------------------------------------------------------------- decoding
def decode(value: Any) -> Any:
    """The value :func:`encode` was given, from its JSON (as ``orjson.loads`` returns it).

    Containers that came from ``orjson.loads`` are rebuilt in place."""
    kind = type(value)
    if kind is dict:
        tag = value.get(TAG)
        if tag is not None:
            return _DECODERS[tag](value)
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                value[key] = decode(item)
        return value
    if kind is list:
        for i, item in enumerate(value):
            if type(item) is dict or type(item) is list:
                value[i] = decode(item)
        return value
    return value


def loads(data: bytes | str) -> Any:
    """:func:`decode` of JSON bytes."""
    return decode(orjson.loads(data))


def _tz(spec: str | int) -> datetime.tzinfo:
    if isinstance(spec, str):
        from zoneinfo import ZoneInfo

        return ZoneInfo(spec)
    return datetime.timezone(datetime.timedelta(microseconds=spec))


def _dec_datetime(obj: dict[str, Any]) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(obj["v"])
    tz = obj.get("tz")
    return value.replace(tzinfo=_tz(tz) if tz is not None else None, fold=obj.get("fold", 0))


def _dec_time(obj: dict[str, Any]) -> datetime.time:
    value = datetime.time.fromisoformat(obj["v"])
    tz = obj.get("tz")
    return value.replace(tzinfo=_tz(tz) if tz is not None else None, fold=obj.get("fold", 0))


def _dec_set(obj: dict[str, Any]) -> set[Any] | frozenset[Any]:
    items = (decode(item) for item in obj["v"])
    return set(items) if obj[TAG] == "set" else frozenset(items)


def _dec_np(obj: dict[str, Any]) -> Any:
    import numpy as np

    dtype = np.dtype(obj["dtype"])
    if "b64" in obj:
        return np.frombuffer(base64.b64decode(obj["b64"]), dtype=dtype)[0]
    return dtype.type(decode(obj["v"]))


def _dec_ndarray(obj: dict[str, Any]) -> Any:
    import numpy as np

    shape = tuple(obj["shape"])
    if obj["dtype"] == "|O":
        array = np.empty(len(obj["v"]), dtype=object)
        for i, item in enumerate(obj["v"]):
            array[i] = decode(item)
        return array.reshape(shape)
    raw = base64.b64decode(obj["b64"])
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(shape).copy()


def _dec_timestamp(obj: dict[str, Any]) -> Any:
    import numpy as np
    import pandas as pd

    value = pd.Timestamp(np.datetime64(obj["v"], obj["unit"]))
    tz = obj.get("tz")
    return value.tz_localize("UTC").tz_convert(_tz(tz)) if tz is not None else value


def _dec_timedelta64(obj: dict[str, Any]) -> Any:
    import numpy as np
    import pandas as pd

    return pd.Timedelta(np.timedelta64(obj["v"], obj["unit"]))


def _dec_pandas_missing(obj: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.NaT if obj[TAG] == "pd.NaT" else pd.NA


_DECODERS = {
    "map": lambda o: {decode(k): decode(v) for k, v in o["v"]},
    "str": lambda o: base64.b64decode(o["v"]).decode("utf-8", "surrogatepass"),
    "int": lambda o: int(o["v"]),
    "float": lambda o: _PLAIN_FLOAT_SPECIALS[o["v"]],
    "datetime": _dec_datetime,
    "date": lambda o: datetime.date.fromisoformat(o["v"]),
    "time": _dec_time,
    "timedelta": lambda o: datetime.timedelta(*o["v"]),
    "decimal": lambda o: decimal.Decimal(o["v"]),
    "uuid": lambda o: uuid.UUID(o["v"]),
    "bytes": lambda o: base64.b64decode(o["v"]),
    "bytearray": lambda o: bytearray(base64.b64decode(o["v"])),
    "tuple": lambda o: tuple(decode(item) for item in o["v"]),
    "set": _dec_set,
    "frozenset": _dec_set,
    "complex": lambda o: complex(decode(o["v"][0]), decode(o["v"][1])),
    "np": _dec_np,
    "ndarray": _dec_ndarray,
    "pd.Timestamp": _dec_timestamp,
    "pd.Timedelta": _dec_timedelta64,
    "pd.NaT": _dec_pandas_missing,
    "pd.NA": _dec_pandas_missing,
}
