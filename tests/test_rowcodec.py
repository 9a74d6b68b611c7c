"""The row codec: input rows come back with their values and types, deterministically."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import math
import subprocess
import sys
import threading
import uuid
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pandas as pd
import pytest
from pydantic import BaseModel

from curator_flows import InputError
from curator_flows.rowcodec import decode, encode, encode_row, loads

PARIS = ZoneInfo("Europe/Paris")


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def round_trip(value):
    return loads(encode(value))


EXACT = {
    "naive datetime": datetime.datetime(2026, 1, 2, 3, 4, 5, 678901),
    "utc datetime": datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC),
    "fixed offset": datetime.datetime(
        2026, 1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    ),
    "date": datetime.date(2026, 2, 28),
    "time": datetime.time(23, 59, 59, 999999),
    "aware time": datetime.time(8, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))),
    "timedelta": datetime.timedelta(days=-2, seconds=7, microseconds=3),
    "decimal": decimal.Decimal("1.10"),
    "decimal exponent": decimal.Decimal("-1.5E+30"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "bytes": b"\x00\xff\x10",
    "bytearray": bytearray(b"ab"),
    "tuple": (1, ("a", 2.5), None),
    "set": {3, "b", (1, 2)},
    "frozenset": frozenset({1, 2}),
    "complex": complex(1.5, -2),
    "big int": 1 << 80,
    "big negative int": -(1 << 70),
    "inf": float("inf"),
    "minus inf": float("-inf"),
    "lone surrogate": "left\udc80right",
    "non-string keys": {1: "one", (2, 3): "pair", None: "none", 2.5: "float"},
    "tag-like key": {"$cf": "datetime", "v": "not a date"},
    "nested": {"a": [{"when": datetime.date(2020, 1, 1), "ids": {1, 2}}]},
    "float32": np.float32(1.1),
    "int8": np.int8(-3),
    "uint64": np.uint64(2**64 - 1),
    "numpy bool": np.bool_(True),
    "datetime64 ns": np.datetime64("2026-01-01T00:00:00.000000001"),
    "timedelta64": np.timedelta64(5, "ms"),
    "numpy str": np.str_("héllo"),
    "pandas timestamp seconds": pd.Timestamp("2026-01-01 12:00").as_unit("s"),
    "pandas timestamp ns": pd.Timestamp("2026-01-01 00:00:00.000000001"),
    "pandas timedelta": pd.Timedelta(1, "ns"),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_values_come_back_equal_and_of_the_same_type(name):
    value = EXACT[name]
    back = round_trip(value)
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, datetime.datetime | datetime.time):
        assert back.tzinfo == value.tzinfo and back.utcoffset() == value.utcoffset()
    if isinstance(value, pd.Timestamp | pd.Timedelta):
        assert back.unit == value.unit


def test_a_zoned_datetime_keeps_its_zone_and_fold():
    ambiguous = datetime.datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=1)  # the 2nd 02:30
    back = round_trip(ambiguous)
    assert back.tzinfo is PARIS and back.fold == 1
    assert back.utcoffset() == datetime.timedelta(hours=1)
    stamp = pd.Timestamp("2026-10-25 02:30:00.000000001").tz_localize(
        "Europe/Paris", ambiguous=True
    )
    again = round_trip(stamp)
    assert again == stamp and str(again.tz) == "Europe/Paris" and again.unit == "ns"


def test_missing_values_of_floats_and_pandas():
    back = round_trip(
        {"nan": float("nan"), "nat": pd.NaT, "na": pd.NA, "np_nat": np.datetime64("NaT")}
    )
    assert math.isnan(back["nan"])
    assert back["nat"] is pd.NaT and back["na"] is pd.NA
    assert np.isnat(back["np_nat"])


def test_numpy_arrays_keep_dtype_shape_and_bytes():
    arrays = [
        np.arange(6, dtype=">f4").reshape(2, 3),
        np.array([[1, 2], [3, 4]], dtype=np.int16).T,  # not contiguous
        np.array(["a", "bc"]),
        np.array(["2026-01-01", "NaT"], dtype="datetime64[ms]"),
        np.array([1, "a", None, datetime.date(2020, 1, 1)], dtype=object),
    ]
    for array in arrays:
        back = round_trip(array)
        assert back.dtype == array.dtype and back.shape == array.shape
        assert back.flags.writeable
        if array.dtype == object:
            assert list(back.flat) == list(array.flat)
        else:
            assert back.tobytes() == array.tobytes()


def test_plain_json_is_stored_as_itself():
    row = {"prompt": "hi", "n": 3, "x": 1.5, "ok": True, "none": None, "list": [1, {"a": "b"}]}
    assert encode(row) == orjson.dumps(row)
    assert encode("Mathematics") == b'"Mathematics"'
    assert round_trip(row) == row


def test_a_tag_can_never_be_confused_with_data():
    fake = {"$cf": "datetime", "v": "2026-01-01T00:00:00"}
    assert round_trip(fake) == fake
    assert round_trip([fake, {"nested": fake}]) == [fake, {"nested": fake}]


def test_meaning_over_class_where_documented():
    @dataclasses.dataclass
    class Point:
        x: int
        when: datetime.date

    class Model(BaseModel):
        name: str
        at: datetime.datetime
        color: Color

    at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    back = round_trip(
        {
            "enum": Color.RED,
            "int enum": Level.HIGH,
            "point": Point(1, datetime.date(2020, 5, 5)),
            "model": Model(name="m", at=at, color=Color.RED),
        }
    )
    assert back["enum"] == "red" and back["int enum"] == 3 and type(back["int enum"]) is int
    assert back["point"] == {"x": 1, "when": datetime.date(2020, 5, 5)}
    assert back["model"] == {"name": "m", "at": at, "color": "red"}


def test_the_encoding_is_deterministic_across_processes():
    code = (
        "import sys, datetime; from curator_flows.rowcodec import encode; "
        "row = {'s': {f'member-{i}' for i in range(50)}, 'f': frozenset({('a', 1), ('b', 2)}), "
        "'d': datetime.datetime(2026, 1, 1)}; sys.stdout.buffer.write(encode(row))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1


def test_encode_row_gives_prompt_what_parse_will_see():
    flat = {"prompt": "x", "n": 1}
    data, view = encode_row(0, flat)
    assert view == flat and view is not flat
    rich = {"when": datetime.date(2026, 1, 1), "tags": ("a",)}
    data, view = encode_row(1, rich)
    assert view == rich == decode(orjson.loads(data))


def test_a_value_without_encoding_names_row_column_and_path():
    with pytest.raises(InputError, match=r"row 7, column 'meta' at \['items'\]\[1\].*object"):
        encode_row(7, {"ok": 1, "meta": {"items": [1, object()]}})
    with pytest.raises(InputError, match=r"row 2 at \[0\]: a value of type _thread.lock"):
        encode_row(2, [threading.Lock()])


def test_a_value_containing_itself_or_nested_too_deep_names_row_column_and_path():
    looped: dict = {"a": 1}
    looped["again"] = looped
    with pytest.raises(InputError, match=r"row 3, column 'meta' at \['again'\]: .*contains itself"):
        encode_row(3, {"meta": looped})
    chain: list = []
    chain.append([1, chain])
    with pytest.raises(InputError, match=r"row 0 at \[0\]\[1\]: .*circular"):
        encode_row(0, chain)
    for depth in (300, 5000):  # past orjson's depth limit, past Python's recursion limit
        deep: dict = {}
        cursor = deep
        for _ in range(depth):
            cursor["d"] = {}
            cursor = cursor["d"]
        with pytest.raises(InputError, match=r"row 1, column 'tree' at \['d'\]\['d'\] .*deep"):
            encode_row(1, {"tree": deep})
    shallow: dict = {}
    cursor = shallow
    for _ in range(100):
        cursor["d"] = {}
        cursor = cursor["d"]
    assert decode(orjson.loads(encode_row(1, {"tree": shallow})[0])) == {"tree": shallow}
