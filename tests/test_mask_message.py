"""The mask message: codec round trip, strict decoding, ordering, applying, diff and table."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mask_message import (
    FieldEntry,
    MaskFormatError,
    MaskMessage,
    apply,
    decode,
    diff,
    encode,
    field_to_dict,
    from_dict,
    is_newer,
    render_table,
    to_dict,
)

SETTINGS = settings(max_examples=150, deadline=None)


def entry(keep: bool = True, score: float = 1e-3, **kw: Any) -> FieldEntry:
    return FieldEntry(keep=keep, score=score, reason=kw.pop("reason", "score_above_enter"), **kw)


def message(fields: dict[str, FieldEntry] | None = None, **kw: Any) -> MaskMessage:
    base: dict[str, Any] = {
        "model_id": "ctr",
        "version": 1,
        "epoch": 1,
        "created_at": 1_718_000_000_000,
        "watermark": 1_717_999_000_000,
        "fields": {"site": entry()} if fields is None else fields,
    }
    return MaskMessage(**{**base, **kw})


def valid_doc() -> dict[str, Any]:
    return {
        "schema": 1,
        "model_id": "ctr",
        "version": 42,
        "epoch": 3,
        "created_at": 1_718_000_000_000,
        "watermark": 1_717_999_000_000,
        "writer": "host-1:4242",
        "policy": {"mode": "both"},
        "fields": {
            "site": {
                "keep": True,
                "score": 0.0031,
                "gate_open": 0.97,
                "reason": "score_above_enter",
                "z": 12.5,
                "examples": 100_000,
                "positives": 2100,
                "closed_values": ["x", "y"],
            },
            "user_id": {"keep": False, "score": 0.0, "reason": "not_significant"},
        },
    }


# ------------------------------------------------------------------ strategies
names = st.text(min_size=1, max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(0, 2**63 - 1)
entries = st.builds(
    FieldEntry,
    keep=st.booleans(),
    score=finite,
    gate_open=st.none() | st.floats(0.0, 1.0),
    reason=st.text(max_size=30),
    z=st.none() | finite,
    examples=st.none() | counts,
    positives=st.none() | counts,
    closed_values=st.none()
    | st.lists(
        st.text(max_size=8) | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite, max_size=6
    ),
)
json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
messages = st.builds(
    MaskMessage,
    model_id=names,
    version=counts,
    epoch=counts,
    created_at=counts,
    watermark=counts,
    fields=st.dictionaries(names, entries, max_size=6),
    writer=st.none() | st.text(max_size=20),
    policy=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    incarnation=st.none() | st.text(min_size=1, max_size=32),
)


# ------------------------------------------------------------------- round trip
@SETTINGS
@given(msg=messages)
def test_encode_decode_round_trip(msg: MaskMessage) -> None:
    raw = encode(msg)
    again = decode(raw)
    assert again == msg
    assert encode(again) == raw  # deterministic bytes
    assert from_dict(to_dict(msg)) == msg
    assert decode(raw.decode()) == msg  # text is accepted too
    assert decode(bytearray(raw)) == msg and decode(memoryview(raw)) == msg


@SETTINGS
@given(fields=st.dictionaries(names, entries, min_size=1, max_size=6), seed=st.randoms())
def test_encoding_does_not_depend_on_field_order(fields: dict[str, FieldEntry], seed: Any) -> None:
    items = list(fields.items())
    seed.shuffle(items)
    assert encode(message(fields)) == encode(message(dict(items)))
    assert list(message(dict(items)).fields) == sorted(fields)


def test_wire_format_matches_the_documented_example() -> None:
    msg = from_dict(valid_doc())
    assert msg.fields["site"].closed_values == ("x", "y")
    assert msg.fields["user_id"].gate_open is None and msg.fields["user_id"].closed_values is None
    assert msg.kept() == ["site"]
    raw = encode(msg)
    assert raw.startswith(b'{"created_at":1718000000000,"epoch":3,"fields":{"site":{')
    assert orjson.loads(raw) == {
        **valid_doc(),
        "fields": {
            "site": valid_doc()["fields"]["site"],
            "user_id": {
                "keep": False,
                "score": 0.0,
                "reason": "not_significant",
                "gate_open": None,
                "z": None,
                "examples": None,
                "positives": None,
                "closed_values": None,
            },
        },
    }


def test_optional_message_keys_are_omitted_when_absent() -> None:
    doc = to_dict(message())
    assert "writer" not in doc and "policy" not in doc
    assert set(field_to_dict(entry())) == {
        "keep",
        "score",
        "gate_open",
        "reason",
        "z",
        "examples",
        "positives",
        "closed_values",
    }


def test_unknown_keys_are_ignored() -> None:
    doc = valid_doc()
    doc["future_key"] = {"anything": [1, 2]}
    doc["fields"]["site"]["future_field_key"] = 7
    assert decode(orjson.dumps(doc)) == from_dict(valid_doc())


def test_unencodable_content_raises_mask_format_error() -> None:
    with pytest.raises(MaskFormatError, match="cannot be encoded"):
        encode(message(policy={"x": object()}))
    with pytest.raises(MaskFormatError, match="cannot be encoded"):
        encode(message(version=2**64))


# ------------------------------------------------------------ strict decoding
@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"schema": NaN}', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"mask"', "JSON object"),
        (b"null", "JSON object"),
    ],
)
def test_non_json_or_non_object_is_rejected(raw: bytes, match: str) -> None:
    with pytest.raises(MaskFormatError, match=match):
        decode(raw)


def test_non_bytes_input_is_rejected() -> None:
    with pytest.raises(MaskFormatError, match="bytes"):
        decode(12)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key", ["schema", "model_id", "version", "epoch", "created_at", "watermark", "fields"]
)
def test_missing_top_level_key_is_named(key: str) -> None:
    doc = valid_doc()
    del doc[key]
    with pytest.raises(MaskFormatError, match=f"missing key '{key}'"):
        from_dict(doc)


@pytest.mark.parametrize("key", ["keep", "score", "reason"])
def test_missing_field_key_is_named(key: str) -> None:
    doc = valid_doc()
    del doc["fields"]["site"][key]
    with pytest.raises(MaskFormatError, match=rf"fields\['site'\] is missing '{key}'"):
        from_dict(doc)


@pytest.mark.parametrize("schema", [2, 0, "1", True, 1.0, None, [1]])
def test_unknown_schema_is_rejected(schema: object) -> None:
    doc = valid_doc()
    doc["schema"] = schema
    with pytest.raises(MaskFormatError, match="unsupported schema"):
        decode(orjson.dumps(doc))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model_id", 1),
        ("model_id", ""),
        ("model_id", None),
        ("version", -1),
        ("version", "1"),
        ("version", 1.5),
        ("version", True),
        ("epoch", None),
        ("created_at", 1.0),
        ("watermark", -5),
        ("fields", []),
        ("fields", "site"),
        ("writer", 7),
        ("policy", []),
        ("policy", "both"),
    ],
)
def test_wrong_top_level_type_is_rejected(key: str, value: object) -> None:
    doc = valid_doc()
    doc[key] = value
    with pytest.raises(MaskFormatError, match=key):
        decode(orjson.dumps(doc))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("keep", "yes"),
        ("keep", 1),
        ("keep", None),
        ("score", "0.1"),
        ("score", None),
        ("score", True),
        ("gate_open", 1.5),
        ("gate_open", -0.1),
        ("gate_open", "open"),
        ("reason", 1),
        ("reason", None),
        ("z", "high"),
        ("examples", -1),
        ("examples", 1.5),
        ("examples", True),
        ("positives", "3"),
        ("closed_values", "abc"),
        ("closed_values", [[1], 2]),
        ("closed_values", [{"a": 1}]),
        ("closed_values", {"a": 1}),
        ("closed_values", ["a", None]),
    ],
)
def test_wrong_field_type_is_rejected_and_located(key: str, value: object) -> None:
    doc = valid_doc()
    doc["fields"]["site"][key] = value
    with pytest.raises(MaskFormatError, match=rf"fields\['site'\]: {key}"):
        decode(orjson.dumps(doc))


def test_integers_beyond_64_bits_are_rejected() -> None:
    # The JSON reader parses them as floats; the version check then refuses them.
    raw = orjson.dumps(valid_doc()).replace(b'"version":42', b'"version":18446744073709551616')
    with pytest.raises(MaskFormatError, match="version must be an integer"):
        decode(raw)


def test_field_entry_must_be_an_object_and_named() -> None:
    doc = valid_doc()
    doc["fields"]["site"] = [True, 0.1]
    with pytest.raises(MaskFormatError, match=r"fields\['site'\] must be an object"):
        from_dict(doc)
    doc = valid_doc()
    doc["fields"][""] = doc["fields"].pop("site")
    with pytest.raises(MaskFormatError, match="field names must be non-empty"):
        from_dict(doc)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_rejected_on_construction(value: float) -> None:
    with pytest.raises(MaskFormatError, match="finite"):
        entry(score=value)
    with pytest.raises(MaskFormatError, match="finite"):
        entry(z=value)


def test_message_fields_must_be_entries() -> None:
    with pytest.raises(MaskFormatError, match="must be a FieldEntry"):
        message({"site": {"keep": True}})  # type: ignore[dict-item]


@SETTINGS
@given(
    key=st.sampled_from(
        [
            "schema",
            "model_id",
            "version",
            "epoch",
            "created_at",
            "watermark",
            "fields",
            "writer",
            "policy",
        ]
    ),
    field_key=st.sampled_from(
        ["keep", "score", "reason", "gate_open", "z", "examples", "positives", "closed_values"]
    ),
    value=json_values,
    top=st.booleans(),
)
def test_any_malformed_content_raises_only_mask_format_error(
    key: str, field_key: str, value: object, top: bool
) -> None:
    # Subscribers catch MaskFormatError only: anything else would end their thread.
    doc = copy.deepcopy(valid_doc())
    if top:
        doc[key] = value
    else:
        doc["fields"]["site"][field_key] = value
    try:
        msg = decode(orjson.dumps(doc))
    except MaskFormatError:
        return
    assert decode(encode(msg)) == msg
    render_table(msg)


# --------------------------------------------------------------------- ordering
def test_is_newer_epoch_first_then_version() -> None:
    cur = message(epoch=2, version=10)
    assert is_newer(cur, None)
    assert is_newer(message(epoch=2, version=11), cur)
    assert not is_newer(message(epoch=2, version=10), cur)  # a duplicate is not newer
    assert not is_newer(message(epoch=2, version=9), cur)
    assert is_newer(message(epoch=3, version=1), cur)  # a new writer wins with a lower version
    assert not is_newer(message(epoch=1, version=99), cur)  # a fenced writer's late message


@SETTINGS
@given(a=st.tuples(counts, counts), b=st.tuples(counts, counts))
def test_is_newer_is_a_strict_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    ma, mb = message(epoch=a[0], version=a[1]), message(epoch=b[0], version=b[1])
    assert is_newer(ma, mb) == (a > b)
    assert not (is_newer(ma, mb) and is_newer(mb, ma))
    assert not is_newer(ma, ma)


def test_a_new_incarnation_is_followed_whatever_its_epoch() -> None:
    cur = message(epoch=7, version=500, incarnation="a")
    # the topic was recreated, or the writer lost its state: its sequence restarts low
    assert is_newer(message(epoch=1, version=1, incarnation="b"), cur)
    # within one incarnation the order holds
    assert not is_newer(message(epoch=7, version=499, incarnation="a"), cur)
    assert not is_newer(message(epoch=7, version=500, incarnation="a"), cur)
    assert is_newer(message(epoch=7, version=501, incarnation="a"), cur)


def test_messages_without_incarnation_are_ordered_by_epoch_and_version() -> None:
    old_writer = message(epoch=3, version=10)  # a writer before incarnations
    assert message(epoch=3, version=10).incarnation is None
    assert not is_newer(message(epoch=1, version=1, incarnation="b"), old_writer)
    assert is_newer(message(epoch=4, version=1, incarnation="b"), old_writer)  # the upgrade's epoch + 1
    assert not is_newer(message(epoch=3, version=9), message(epoch=3, version=10, incarnation="b"))


def test_incarnation_must_be_a_non_empty_string() -> None:
    for bad in ("", 5):
        with pytest.raises(MaskFormatError, match="incarnation"):
            message(incarnation=bad)
    doc = valid_doc()
    assert from_dict(doc).incarnation is None  # optional: old messages parse
    doc["incarnation"] = "abc"
    assert from_dict(doc).incarnation == "abc" and to_dict(from_dict(doc))["incarnation"] == "abc"
    assert "incarnation" not in to_dict(message())


# --------------------------------------------------------------------- applying
def test_apply_without_a_mask_passes_everything() -> None:
    features = {"site": "a.com", "hour": 3}
    out = apply(None, features)
    assert out == features and out is not features


def test_apply_removes_dropped_fields_and_closes_values() -> None:
    mask = message(
        {
            "site": entry(closed_values=["spam.com"]),
            "user_id": entry(keep=False, reason="not_significant"),
            "hour": entry(),
        }
    )
    features = {"site": "spam.com", "user_id": "u1", "hour": 3, "new_field": "x"}
    before = dict(features)
    assert apply(mask, features) == {"site": None, "hour": 3, "new_field": "x"}
    assert apply(mask, features, mode="null") == {
        "site": None,
        "user_id": None,
        "hour": 3,
        "new_field": "x",
    }
    assert apply(mask, {"site": "ok.com"}) == {"site": "ok.com"}
    assert features == before  # not modified
    assert "user_id" not in apply(mask, {})  # fields only in the mask are not added


def test_apply_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="apply mode"):
        apply(message(), {}, mode="zero")  # type: ignore[arg-type]


# closed values: the typed matching rule is tested in tests/test_closed_values.py


# ------------------------------------------------------------------------- diff
def test_diff_lists_decisions_and_closed_values_only() -> None:
    old = message(
        {
            "a": entry(),
            "b": entry(keep=False, score=0.0, reason="score_below_exit"),
            "c": entry(closed_values=["x", "y"]),
            "gone": entry(),
            "same": entry(score=1e-3),
        }
    )
    new = message(
        {
            "a": entry(keep=False, score=1.5e-4, reason="not_significant"),
            "b": entry(score=3e-4),
            "c": entry(closed_values=["y", "z"]),
            "fresh": entry(keep=False, score=0.0, reason="insufficient_evidence"),
            "same": entry(score=5e-3),  # only the score moved
        },
        version=2,
    )
    assert diff(old, new) == [
        "a: kept -> dropped (not_significant, score 0.00015)",
        "b: dropped -> kept (score_above_enter, score 0.0003)",
        "c: closed values +z -x",
        "fresh: new, dropped (insufficient_evidence, score 0)",
        "gone: no longer in the mask (was kept)",
    ]
    assert diff(new, new) == []


def test_diff_from_nothing_lists_every_field() -> None:
    new = message({"a": entry(), "b": entry(keep=False, reason="over_budget", closed_values=["q"])})
    assert diff(None, new) == [
        "a: new, kept (score_above_enter, score 0.001)",
        "b: new, dropped (over_budget, score 0.001)",
        "b: closed values +q",
    ]


# ------------------------------------------------------------------------ table
def shown(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@SETTINGS
@given(msg=messages)
def test_table_shows_every_field_and_reason_on_one_line(msg: MaskMessage) -> None:
    table = render_table(msg)
    lines = table.split("\n")
    assert all(line.isprintable() for line in lines)  # no control character reaches the terminal
    rows = lines[5:]
    assert len(rows) == len(msg.fields)
    for row, (name, f) in zip(rows, msg.fields.items(), strict=True):
        assert row.startswith(shown(name)) and shown(f.reason) in row
    assert f"kept {len(msg.kept())} of {len(msg.fields)} fields" in table


def test_table_and_diff_escape_control_characters() -> None:
    msg = message({"a\nb": entry(closed_values=["\x1b[31mred", "ok"], reason="r\r")})
    table = render_table(msg)
    assert "\x1b" not in table and "\r" not in table
    assert table.splitlines()[5].startswith("a\\nb ")
    assert "[\\x1b[31mred, ok]" in table and "r\\r" in table
    assert diff(None, msg) == [
        "a\\nb: new, kept (r\\r, score 0.001)",
        "a\\nb: closed values +\\x1b[31mred +ok",
    ]


def test_table_layout() -> None:
    msg = message(
        {
            "site": entry(
                gate_open=0.97,
                z=12.5,
                examples=100_000,
                positives=2100,
                closed_values=[f"v{i}" for i in range(8)],
            ),
            "user_id": entry(keep=False, score=1.5e-4, reason="not_significant"),
        },
        writer="host-1:4242",
        epoch=3,
        version=42,
    )
    lines = render_table(msg).splitlines()
    assert lines[0] == "model ctr  epoch 3  version 42  writer host-1:4242"
    assert (
        lines[1] == "created 2024-06-10T06:13:20.000+00:00  watermark 2024-06-10T05:56:40.000+00:00"
    )
    assert lines[2] == "kept 1 of 2 fields"
    assert lines[5].split()[:7] == ["site", "yes", "0.001000", "12.5", "0.970", "100000", "2100"]
    assert lines[5].endswith("score_above_enter  [v0, v1, v2, v3, v4, +3 more]")
    assert lines[6].split() == ["user_id", "no", "0.000150", "-", "-", "-", "-", "not_significant"]


def test_table_survives_timestamps_past_year_9999() -> None:
    table = render_table(message(created_at=2**62, watermark=0))
    assert f"created {2**62} ms" in table
