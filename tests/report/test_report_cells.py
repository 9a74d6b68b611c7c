"""Values made safe to show: exact JSON for a browser, cut texts, and JSON that cannot close the
``<script>`` element it is embedded in."""

from __future__ import annotations

import datetime
import decimal
import json
import re

from curator_flows.report.cells import MAX_ITEMS, clip, embed_json, shown, text_of


def test_shown_makes_any_value_plain_json_a_browser_holds_exactly():
    value = {
        "when": datetime.datetime(2026, 12, 4, 2, 0, tzinfo=datetime.UTC),
        "price": decimal.Decimal("1.10"),
        "big": 2**70,
        "safe": 2**53 - 1,
        "nan": float("nan"),
        "raw": b"\x00\x01",
        "tuple": (1, "a"),
        1: "a non-string key",
    }
    out = shown(value)
    assert out == {
        "when": "2026-12-04T02:00:00+00:00",
        "price": "1.10",
        "big": str(2**70),
        "safe": 2**53 - 1,
        "nan": "nan",
        "raw": "b'\\x00\\x01'",
        "tuple": [1, "a"],
        "1": "a non-string key",
    }
    json.dumps(out, allow_nan=False)  # plain JSON


def test_texts_are_cut_and_say_so_and_long_lists_are_summarised():
    assert clip("abcdef", 4) == "abcd… [2 more characters]"
    assert shown({"t": "x" * 10}, limit=3) == {"t": "xxx… [7 more characters]"}
    items = shown(list(range(MAX_ITEMS + 5)))
    assert len(items) == MAX_ITEMS + 1 and items[-1] == "… [5 more items]"


def test_embedded_json_cannot_close_its_script_element_and_reads_back_the_same():
    value = {"a": "</script><script>alert(1)</script>", "b": "<!-- -->", "c": "&amp; \u2028"}
    text = embed_json(value)
    assert not re.search(r"[<>&\u2028]", text)
    assert json.loads(text) == value


def test_lone_surrogates_are_written_as_escapes():
    text = embed_json({"t": "bad \ud800 text"})
    assert json.loads(text) == {"t": "bad \ud800 text"}


def test_text_of_collects_every_string_and_number():
    assert text_of({"a": ["x", {"b": 2}], "c": None}) == "x\n2"
