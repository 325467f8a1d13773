"""Closed values are JSON-typed and matched by one rule every language implements.

The rule (featsieve_client.mask.closed_value_matches, docs/mask-format.md): strings match equal
strings, booleans equal booleans, numbers (not booleans) numerically equal numbers; never across
types; null matches nothing. The daemon carries each value's JSON type into the mask.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featsieve_client import apply
from featsieve_client.mask import (
    FieldEntry,
    MaskFormatError,
    MaskMessage,
    changes,
    closed_value,
    closed_value_key,
    closed_value_matches,
    decode,
    encode,
)

SETTINGS = settings(max_examples=200, deadline=None)


def entry(closed: list[Any] | None) -> FieldEntry:
    return FieldEntry(keep=True, score=1e-3, reason="score_above_enter", closed_values=closed)


def mask(closed: list[Any] | None, **fields: FieldEntry) -> MaskMessage:
    return MaskMessage(model_id="m", version=1, epoch=1, created_at=0, watermark=0,
                       fields={"f": entry(closed), **fields})


# one case per branch of the rule
RULE = [
    ("x", "x", True),  # strings, equal
    ("x", "y", False),  # strings, different
    ("", "", True),
    (True, True, True),  # booleans, equal
    (False, False, True),
    (True, False, False),  # booleans, different
    (3, 3, True),  # integers
    (3, 4, False),
    (3.0, 3, True),  # numbers by value: an integral float equals the integer
    (3, 3.0, True),
    (2.5, 2.5, True),  # non-integral numbers
    (2.5, 2.50000001, False),
    (-0.0, 0, True),
    (2**53 + 1, 2.0**53, False),  # compared exactly, not through a double
    (2**63 - 1, 2**63 - 1, True),
    ("3", 3, False),  # never across types: string vs number
    (3, "3", False),
    ("true", True, False),  # string vs boolean
    (True, "true", False),
    (True, 1, False),  # boolean vs number
    (1, True, False),
    (False, 0, False),
    (0.0, False, False),
    (None, "null", False),  # null matches nothing
    (None, 0, False),
    (None, False, False),
    (None, "", False),
    (float("nan"), 1.5, False),
    ([1], 1, False),  # a list or object is no closed value's type
    ({"a": 1}, "a", False),
]


@pytest.mark.parametrize(("value", "closed", "expected"), RULE)
def test_the_rule(value: object, closed: Any, expected: bool) -> None:
    assert closed_value_matches(value, closed) is expected
    # a mask applies the same rule, and so does one that went through JSON
    m = mask([closed])
    assert entry([closed]).is_closed(value) is expected
    assert decode(encode(m)).fields["f"].is_closed(value) is expected
    assert (apply(m, {"f": value}) == {"f": None}) is (expected or value is None)


@SETTINGS
@given(value=st.text() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False))
def test_every_value_the_daemon_can_carry_is_closed_by_its_carried_form(value: object) -> None:
    carried = closed_value(value)
    if carried is None:  # infinities only, among these
        assert isinstance(value, float)
        return
    m = decode(encode(mask([carried])))
    assert apply(m, {"f": value}) == {"f": None}
    assert closed_value_matches(value, carried)


@SETTINGS
@given(
    value=st.text(max_size=4) | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False),
    closed=st.text(max_size=4) | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False),
)
def test_the_mask_agrees_with_the_rule(value: object, closed: object) -> None:
    carried = closed_value(closed)
    assert carried is not None
    assert entry([carried]).is_closed(value) == closed_value_matches(value, carried)


def test_carried_forms() -> None:
    assert closed_value("a") == "a"
    assert closed_value(True) is True and closed_value(False) is False
    assert closed_value(3) == 3
    three = closed_value(3.0)
    assert three == 3 and type(three) is int  # an integral float travels as an integer
    assert closed_value(1e16) == 10**16 and type(closed_value(1e16)) is int
    half = closed_value(2.5)
    assert half == 2.5 and type(half) is float
    assert closed_value(1e300) == 1e300 and type(closed_value(1e300)) is float  # past 64 bits: a number
    for nothing in (None, float("nan"), float("inf"), [1], {"a": 1}, 2**64, -(2**63) - 1):
        assert closed_value(nothing) is None


def test_the_json_carries_the_types() -> None:
    m = mask(["3", 3, 3.0, 2.5, True, "true"])
    doc = orjson.loads(encode(m))
    assert doc["fields"]["f"]["closed_values"] == ["3", 3, 3, 2.5, True, "true"]
    assert b'"closed_values":["3",3,3,2.5,true,"true"]' in encode(m)


def test_keys_order_and_identify_values() -> None:
    values = ["b", 2, True, 1.5, "a", False, 3.0]
    assert sorted(values, key=closed_value_key) == [False, True, 1.5, 2, 3.0, "a", "b"]
    assert closed_value_key(3) == closed_value_key(3.0)
    assert closed_value_key(1) != closed_value_key(True)
    assert closed_value_key("1") != closed_value_key(1)


def test_changing_a_closed_value_type_is_a_change() -> None:
    before, after = mask(["1"]), mask([1])
    delta = changes(before, after)
    assert delta and delta.fields[0].closed_added == (1,) and delta.fields[0].closed_removed == ("1",)
    assert delta.lines() == ["f: closed values +1 -1"]
    assert not changes(mask([3]), mask([3.0]))  # the same value


def test_old_masks_with_string_closed_values_parse_and_match_strings_only() -> None:
    # a mask of a writer before typed values: it spelled 3 as "3" and True as "true"
    old = decode(b'{"schema":1,"model_id":"m","version":1,"epoch":1,"created_at":0,"watermark":0,'
                 b'"fields":{"f":{"keep":true,"score":0.1,"reason":"r","closed_values":["x","3","true"]}}}')
    assert old.fields["f"].closed_values == ("x", "3", "true")
    assert apply(old, {"f": "x"}) == {"f": None}
    assert apply(old, {"f": "3"}) == {"f": None}
    # numbers and booleans it closed pass until the writer republishes with typed values
    assert apply(old, {"f": 3}) == {"f": 3}
    assert apply(old, {"f": True}) == {"f": True}


@pytest.mark.parametrize("bad", [[None], [[1]], [{"a": 1}], ["a", None]])
def test_other_items_are_rejected(bad: list[Any]) -> None:
    with pytest.raises(MaskFormatError, match="closed_values items"):
        entry(bad)
