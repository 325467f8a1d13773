"""schemas/event.schema.json and schemas/mask.schema.json: they agree with the code that reads the
formats, and real produced events and real published masks validate against them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from connectors import codec
from featsieve_client import MaskFormatError, decode
from featsieve_client.mask import closed_value
from tests.conftest import BIN, ROOT, GatedMasks, featsieve, kcat_read

EVENT_SCHEMA = json.loads((ROOT / "schemas" / "event.schema.json").read_text())
MASK_SCHEMA = json.loads((ROOT / "schemas" / "mask.schema.json").read_text())
EVENTS = jsonschema.Draft202012Validator(EVENT_SCHEMA)
MASKS = jsonschema.Draft202012Validator(MASK_SCHEMA)


def test_the_schemas_are_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(EVENT_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(MASK_SCHEMA)


IMP = {"type": "impression", "id": "i1", "ts": 1_718_000_000_000, "features": {"a": "x"}}
GOOD_EVENTS = [
    IMP,
    {**IMP, "features": {"s": "x", "i": -3, "f": 2.5, "b": True, "n": None}},
    {**IMP, "features": {}},
    {**IMP, "extra": {"nested": [1]}},  # unknown top-level keys are ignored
    {**IMP, "ts": 0},
    {**IMP, "ts": 2**53 - 1},
    {**IMP, "id": "x" * 1024, "features": {"n" * 128: "v" * 1024}},
    {**IMP, "features": {f"f{i}": i for i in range(512)}},
    {"type": "click", "id": "i1", "ts": 1},
    {"type": "click", "id": "i1", "ts": 1, "features": None},
    {"type": "click", "id": "i1", "ts": 1, "features": {"a": 1}},
    {"type": "labeled", "ts": 1, "features": {"a": 1}, "label": 0},
    {"type": "labeled", "ts": 1, "features": {}, "label": 1, "id": 5},
]
BAD_EVENTS = [
    ["not", "an", "object"],
    {"id": "i1", "ts": 1, "features": {}},  # no type
    {**IMP, "type": "view"},
    {k: v for k, v in IMP.items() if k != "id"},
    {k: v for k, v in IMP.items() if k != "ts"},
    {k: v for k, v in IMP.items() if k != "features"},
    {**IMP, "id": ""},
    {**IMP, "id": 7},
    {**IMP, "id": "x" * 1025},
    {**IMP, "ts": "2024-06-10"},
    {**IMP, "ts": True},
    {**IMP, "ts": -1},
    {**IMP, "ts": 2**53},
    {**IMP, "features": None},
    {**IMP, "features": [1, 2]},
    {**IMP, "features": {"a": {"b": 1}}},
    {**IMP, "features": {"a": [1]}},
    {**IMP, "features": {"n" * 129: 1}},
    {**IMP, "features": {"a": "v" * 1025}},
    {**IMP, "features": {f"f{i}": i for i in range(513)}},
    {"type": "click", "ts": 1},
    {"type": "click", "id": "i1", "ts": 1, "features": [1]},
    {"type": "labeled", "ts": 1, "features": {}},
    {"type": "labeled", "ts": 1, "features": {}, "label": 2},
    {"type": "labeled", "ts": 1, "features": {}, "label": True},
    {"type": "labeled", "ts": 1, "label": 1},
]


@pytest.mark.parametrize("event", GOOD_EVENTS, ids=range(len(GOOD_EVENTS)))
def test_what_the_schema_accepts_the_daemon_decodes(event: Any) -> None:
    EVENTS.validate(event)
    codec.decode(orjson.dumps(event))


@pytest.mark.parametrize("event", BAD_EVENTS, ids=range(len(BAD_EVENTS)))
def test_what_the_schema_refuses_the_daemon_dead_letters(event: Any) -> None:
    assert not EVENTS.is_valid(event)
    with pytest.raises(codec.EventError):
        codec.decode(orjson.dumps(event))


MASK = {
    "schema": 1, "model_id": "ctr", "version": 42, "epoch": 3, "incarnation": "abc",
    "created_at": 1_718_000_000_000, "watermark": 1_717_999_000_000,
    "fields": {"site": {"keep": True, "score": 0.003, "gate_open": 1.0, "reason": "r", "z": 12.5,
                        "examples": 10, "positives": 2, "closed_values": ["x", 3, True, 2.5, -7]},
               "user": {"keep": False, "score": 0.0, "reason": "r"}},
}


def with_field(**kw: Any) -> dict[str, Any]:
    return {**MASK, "fields": {"site": {**MASK["fields"]["site"], **kw}}}


GOOD_MASKS = [
    MASK,
    {k: v for k, v in MASK.items() if k != "incarnation"},  # masks of older writers
    with_field(closed_values=["3", "true"]),  # and their string closed values
    with_field(closed_values=None, gate_open=None, z=None, examples=None, positives=None),
    {**MASK, "writer": "h:1", "policy": {"mode": "both"}, "future_key": [1]},
    {**MASK, "fields": {}},
    {**MASK, "sample_rate": 0.1},  # key-hash sampling (docs/events.md)
    {**MASK, "sample_rate": 1},
]
BAD_MASKS = [
    {**MASK, "schema": 2},
    {k: v for k, v in MASK.items() if k != "epoch"},
    {**MASK, "model_id": ""},
    {**MASK, "version": -1},
    {**MASK, "version": "42"},
    {**MASK, "incarnation": ""},
    {**MASK, "fields": {"": MASK["fields"]["user"]}},
    {**MASK, "fields": {"a": {"keep": True, "score": 0.1}}},
    with_field(keep="yes"),
    with_field(gate_open=1.5),
    with_field(closed_values=[None]),
    with_field(closed_values=[[1]]),
    with_field(closed_values=[{"a": 1}]),
    with_field(closed_values="x"),
    with_field(examples=-1),
    {**MASK, "sample_rate": 0},
    {**MASK, "sample_rate": 1.5},
    {**MASK, "sample_rate": "0.1"},
    {**MASK, "sample_rate": True},
]


@pytest.mark.parametrize("doc", GOOD_MASKS, ids=range(len(GOOD_MASKS)))
def test_what_the_mask_schema_accepts_the_client_parses(doc: Any) -> None:
    MASKS.validate(doc)
    decode(orjson.dumps(doc))


@pytest.mark.parametrize("doc", BAD_MASKS, ids=range(len(BAD_MASKS)))
def test_what_the_mask_schema_refuses_the_client_refuses(doc: Any) -> None:
    assert not MASKS.is_valid(doc)
    with pytest.raises(MaskFormatError):
        decode(orjson.dumps(doc))


# ------------------------------------------------------------------ real data on a real broker
def run_daemon(bootstrap: str, unique: str, state: Path, topics: str, *extra: str) -> str:
    """Run the daemon over the generated stream to its end; its log."""
    proc = subprocess.run(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics,
         "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
         "--group-id", unique, "--state-dir", str(state), "--metrics-port", "0", "--exit-at-end",
         "--mask-interval-s", "0.2", "--attribution-window-s", "120", *extra],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_real_events_and_real_masks_validate(bootstrap: str, unique: str, tmp_path: Path) -> None:
    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "6000",
              "--input-topics", topics)
    seen = {"impression": 0, "click": 0}
    for topic in topics.split(","):
        for line in kcat_read(bootstrap, topic):
            key, value = line.split("\t", 1)
            event = orjson.loads(value)
            EVENTS.validate(event)
            seen[event["type"]] += 1
            assert key == event["id"], "impressions and clicks are keyed by the impression id"
    assert seen["impression"] == 6000 and seen["click"] > 50, seen

    run_daemon(bootstrap, unique, tmp_path / "state", topics)
    lines = kcat_read(bootstrap, f"{unique}.masks")
    assert lines, "the daemon published no mask"
    for line in lines:
        key, value = line.split("\t", 1)
        doc = orjson.loads(value)
        MASKS.validate(doc)
        assert decode(value).model_id == key == unique
        assert doc["fields"], "a mask of the generated stream names its fields"


def typed(v: Any) -> tuple[str, Any]:
    return (type(v).__name__, v)


@pytest.mark.broker
@pytest.mark.slow
def test_closed_values_a_daemon_published_validate_and_keep_the_events_types(gated_masks: GatedMasks) -> None:
    g = gated_masks
    docs = [orjson.loads(line) for line in kcat_read(g.bootstrap, g.mask_topic, fmt="%s\n")]
    for doc in docs:
        MASKS.validate(doc)
    closed = {(name, typed(v)) for doc in docs for name, f in doc["fields"].items()
              for v in f.get("closed_values") or ()}
    assert closed, "the daemon published no closed values"
    seen: set[tuple[str, tuple[str, Any]]] = set()
    for line in kcat_read(g.bootstrap, g.input_topics.split(",")[0], fmt="%s\n"):
        for name, v in orjson.loads(line)["features"].items():
            if v is not None:
                seen.add((name, typed(closed_value(v))))
    # every closed value is a value its field carried in the events, with the type it had there
    # (an integral float as its integer, as docs/mask-format.md says)
    assert closed <= seen, closed - seen
