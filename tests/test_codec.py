"""The event codec: every good type round-trips, every bad record gets its specific reason."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.codec import (
    REASONS,
    Click,
    Event,
    EventError,
    Features,
    Impression,
    Labeled,
    Limits,
    decode,
    decode_many,
    encode,
)

TS = 1_700_000_000_000
L = Limits()


def imp(**over: object) -> bytes:
    obj: dict[str, object] = {"type": "impression", "id": "imp-1", "ts": TS, "features": {"a": "x"}}
    obj.update(over)
    return orjson.dumps(obj)


def reason_of(raw: bytes | None, limits: Limits = L) -> str:
    with pytest.raises(EventError) as info:
        decode(raw, limits)
    assert info.value.reason in REASONS
    return info.value.reason


def test_good_events_of_each_type_round_trip() -> None:
    feats: Features = {"s": "v", "i": 3, "f": 0.5, "b": True, "n": None}
    events: list[Event] = [
        Impression("a", TS, feats),
        Click("a", TS + 5, None),
        Click("a", TS + 5, {"page": "home"}),
        Labeled(TS, feats, 1),
        Labeled(TS, {}, 0),
    ]
    for ev in events:
        assert decode(encode(ev), L) == ev
    assert decode(b'{"type":"click","id":"a","ts":1}') == Click("a", 1, None)


def test_unknown_top_level_keys_are_ignored() -> None:
    assert decode(imp(schema=1, extra={"x": [1]})) == Impression("imp-1", TS, {"a": "x"})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"{not json", "not_json"),
        (b'{"type": "impression"', "not_json"),
        (b'{"type":"impression","id":"x","ts":1,"features":{"a":NaN}}', "non_finite"),
        (b'{"type":"impression","id":"x","ts":1,"features":{"a":-Infinity}}', "non_finite"),
        (b'{"type":"impression","id":"x","ts":1,"features":{"a":1e999}}', "non_finite"),
        (b"[1, 2, 3]", "not_object"),
        (b'"impression"', "not_object"),
        (b'{"type": "view", "id": "x", "ts": 1}', "unknown_type"),
        (b'{"id": "x", "ts": 1}', "missing_field"),
        (imp(id=None), "missing_field"),
        (imp(id=""), "missing_field"),
        (imp(ts=None), "missing_field"),
        (orjson.dumps({"type": "impression", "id": "x", "ts": 1}), "missing_field"),
        (orjson.dumps({"type": "labeled", "ts": 1, "features": {}}), "missing_field"),
        (imp(id=17), "wrong_type"),
        (imp(ts="yesterday"), "wrong_type"),
        (imp(ts=True), "wrong_type"),
        (imp(ts=1.5), "wrong_type"),
        (imp(ts=-1), "wrong_type"),
        (imp(ts=2**53), "wrong_type"),
        (b'{"type":"impression","id":"x","ts":18446744073709551616,"features":{}}', "wrong_type"),
        (imp(features=[1, 2]), "wrong_type"),
        (imp(features=None), "wrong_type"),
        (orjson.dumps({"type": "labeled", "ts": 1, "features": {}, "label": 7}), "wrong_type"),
        (orjson.dumps({"type": "labeled", "ts": 1, "features": {}, "label": True}), "wrong_type"),
        (orjson.dumps({"type": "labeled", "ts": 1, "features": {}, "label": 1.0}), "wrong_type"),
        (imp(features={"a": {"nested": 1}}), "bad_feature_value"),
        (imp(features={"a": 1, "b": [1]}), "bad_feature_value"),
        (orjson.dumps({"type": "click", "id": "x", "ts": 1, "features": {"a": []}}), "bad_feature_value"),
    ],
)
def test_each_bad_record_gets_its_reason(raw: bytes | None, reason: str) -> None:
    assert reason_of(raw) == reason


def test_limits() -> None:
    small = Limits(max_message_bytes=200, max_fields=3, max_field_name_len=8, max_value_len=10)
    assert reason_of(imp(features={"a": "x" * 300}), small) == "too_large"
    assert reason_of(imp(features={k: 1 for k in "abcd"}), small) == "too_many_fields"
    assert reason_of(imp(features={"a_very_long_name": 1}), small) == "field_name_too_long"
    assert reason_of(imp(features={"a": "x" * 11}), small) == "value_too_long"
    assert reason_of(imp(id="i" * 11), small) == "value_too_long"
    assert decode(imp(features={"abcdefgh": "x" * 10, "b": 1, "c": None}), small)
    with pytest.raises(ValueError):
        Limits(max_fields=0)


def test_detail_names_the_field_never_the_value_or_id() -> None:
    secret = "SECRET-VALUE"
    for raw in (
        imp(id="SECRET-ID-1", features={"price": {"v": secret}}),
        imp(id="SECRET-ID-1", features={"price": secret * 200}),
        imp(id="SECRET-ID-1", type=secret),
    ):
        with pytest.raises(EventError) as info:
            decode(raw, Limits(max_value_len=100))
        assert secret not in info.value.detail and "SECRET-ID" not in info.value.detail
        assert secret not in str(info.value)
    with pytest.raises(EventError) as info:
        decode(imp(features={"price": {"v": 1}}))
    assert "price" in info.value.detail


def test_decode_many_keeps_good_events_around_bad_ones() -> None:
    raws = [imp(id="1"), b"{bad", None, imp(id="2"), imp(ts=True), imp(id="3")]
    good, bad = decode_many(raws, L)
    assert [e.id for e in good if isinstance(e, Impression)] == ["1", "2", "3"]
    assert [(i, e.reason) for i, e in bad] == [(1, "not_json"), (2, "empty"), (4, "wrong_type")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_event_error(raw: bytes) -> None:
    try:
        decode(raw, L)
    except EventError as err:
        assert err.reason in REASONS


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5) | (
    st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["impression", "click", "labeled", "x"]) | json_values,
            "id": st.text(max_size=4) | json_values,
            "ts": st.integers(-5, 2**60) | json_values,
            "features": st.dictionaries(st.text(max_size=4), json_values, max_size=5) | json_values,
            "label": st.integers(-1, 2) | json_values,
        },
    )
)
def test_arbitrary_json_objects_decode_or_raise_event_error(obj: dict[str, object]) -> None:
    raw = orjson.dumps(obj)
    try:
        ev = decode(raw, L)
    except EventError as err:
        assert err.reason in REASONS
        return
    assert decode(encode(ev), L) == ev  # whatever is accepted round-trips


def test_decode_many_gives_every_record_what_decode_gives_it() -> None:
    from connectors.codec import EventError, decode, decode_many

    ok = b'{"type":"impression","id":"a","ts":1,"features":{"f":"x","g":2}}'
    raws = [ok, b'{"type":"impression","id":"b","ts":1,"features":{"f":[1]}}', ok,
            b'{"type":"click","id":"c","ts":2,"features":{"' + b"n" * 200 + b'":1}}',
            b'{"type":"impression","id":"d","ts":1,"features":{"v":"' + b"x" * 2000 + b'"}}',
            b'{"type":"labeled","ts":1,"features":{"f":{}},"label":7}', b"", ok, b"{nope"]
    events, bad = decode_many(raws)
    expected_good, expected_bad = [], []
    for i, raw in enumerate(raws):
        try:
            expected_good.append(decode(raw))
        except EventError as err:
            expected_bad.append((i, err.reason, err.detail))
    assert events == expected_good and len(events) == 3
    assert [(i, e.reason, e.detail) for i, e in bad] == expected_bad
    assert {r for _, r, _ in expected_bad} >= {"bad_feature_value", "field_name_too_long", "value_too_long", "empty"}
