"""examples/java (a JVM subscriber): built with Maven, run against masks on a real broker, and its
output compared with featsieve_client.apply on the same inputs, value types included."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from featsieve_client import FieldEntry, MaskMessage, MaskSubscriber, apply, encode
from tests.conftest import ROOT, GatedMasks, featsieve, kcat_read
from tests.test_schemas import run_daemon

pytestmark = [pytest.mark.broker, pytest.mark.slow]

JAVA = ROOT / "examples" / "java"


def typed(v: Any) -> Any:
    """A JSON value with its type spelled out, so that 3 and 3.0 or 1 and true compare different."""
    if isinstance(v, dict):
        return [(k, typed(x)) for k, x in v.items()]
    return (type(v).__name__, v)


def run_java(bootstrap: str, topic: str, model: str, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    classpath = f"{JAVA / 'target' / 'classes'}:{(JAVA / 'target' / 'classpath.txt').read_text().strip()}"
    proc = subprocess.run(
        ["java", "-cp", classpath, "featsieve.example.MaskExample", bootstrap, topic, model],
        input=b"".join(orjson.dumps(f) + b"\n" for f in inputs), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def python_mask(bootstrap: str, topic: str, model: str) -> MaskMessage:
    with MaskSubscriber(model, bootstrap, topic=topic) as sub:
        ready = sub.wait_ready(60)
        assert ready, ready.reason
        mask = sub.current()
    assert mask is not None
    return mask


def variants(features: dict[str, Any]) -> list[dict[str, Any]]:
    """The same features with values of other JSON types and some fields missing."""
    out = [features]
    other: dict[str, Any] = {}
    for k, v in features.items():
        if isinstance(v, bool):
            other[k] = int(v)
        elif isinstance(v, int):
            other[k] = float(v)  # an integral float
        elif isinstance(v, float):
            other[k] = str(v)
        elif isinstance(v, str):
            other[k] = len(v) % 2 == 0  # a boolean
        else:
            other[k] = 0
    out.append(other)
    out.append({k: v for i, (k, v) in enumerate(features.items()) if i % 3})  # missing fields
    out.append({**features, "not_in_the_mask": 1.5})
    return out


@pytest.fixture(scope="module")
def built() -> Path:
    proc = subprocess.run(["mvn", "-q", "package"], cwd=JAVA, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return JAVA / "target" / "classpath.txt"


def test_java_applies_typed_closed_values_and_follows_a_new_incarnation(
        built: Path, bootstrap: str, unique: str) -> None:
    topic, model = f"{unique}.masks", f"{unique}-typed"
    entry = FieldEntry
    old = MaskMessage(model_id=model, version=100, epoch=9, created_at=0, watermark=0, incarnation="a",
                      fields={"n": entry(keep=False, score=0.0, reason="r")})
    new = MaskMessage(
        model_id=model, version=1, epoch=1, created_at=int(time.time() * 1000), watermark=0, incarnation="b",
        fields={
            "n": entry(keep=True, score=0.1, reason="r", closed_values=[3, 2.5, -7, 2**53 + 1]),
            "b": entry(keep=True, score=0.1, reason="r", closed_values=[True]),
            "s": entry(keep=True, score=0.1, reason="r", closed_values=["x", "3"]),
            "d": entry(keep=False, score=0.0, reason="r"),
            "g": entry(keep=True, score=0.1, reason="r"),
        })
    stale = MaskMessage(model_id=model, version=0, epoch=1, created_at=0, watermark=0, incarnation="b",
                        fields={})
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for m in (old, new, stale):
        producer.send(topic, key=model.encode(), value=encode(m)).get(timeout=30)
    producer.close()

    inputs: list[dict[str, Any]] = []
    for n in (3, 3.0, 2.5, 2.5000001, "3", True, -7, -7.0, 2**53 + 1, float(2**53), None, 0):
        for b in (True, False, 1, "true"):
            inputs.append({"n": n, "b": b, "s": "x", "d": 1, "g": 1, "unknown": 5})
    for s in ("x", "3", 3, "y", "", None):
        inputs.append({"s": s, "d": "gone", "g": "g"})
    inputs += [{}, {"d": None}, {"g": 2**53 + 1, "n": 2**53 + 1.0}]

    mask = python_mask(bootstrap, topic, model)
    assert (mask.incarnation, mask.version) == ("b", 1)
    expected = [apply(mask, f) for f in inputs]
    got = run_java(bootstrap, topic, model, inputs)
    assert [typed(g) for g in got] == [typed(json.loads(orjson.dumps(e))) for e in expected]
    # the rule did something: values of every type were blanked, and the dropped field removed
    blanked = {k for e in expected for k, v in e.items() if v is None}
    assert {"n", "b", "s"} <= blanked and all("d" not in e for e in expected)


def test_java_equals_python_on_masks_a_daemon_published(built: Path, bootstrap: str, unique: str,
                                                        tmp_path: Path) -> None:
    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "6000",
              "--input-topics", topics)
    run_daemon(bootstrap, unique, tmp_path / "state", topics)
    topic = f"{unique}.masks"
    mask = python_mask(bootstrap, topic, unique)
    events = [orjson.loads(line) for line in kcat_read(bootstrap, f"{unique}.impressions", fmt="%s\n")[:200]]
    inputs = [v for e in events for v in variants(e["features"])]
    expected = [apply(mask, f) for f in inputs]
    got = run_java(bootstrap, topic, unique, inputs)
    assert [typed(g) for g in got] == [typed(json.loads(orjson.dumps(e))) for e in expected]
    assert any(len(e) < len(f) for e, f in zip(expected, inputs, strict=True)) or all(
        f.keep for f in mask.fields.values())


def test_java_equals_python_on_closed_values_a_daemon_published(built: Path, gated_masks: GatedMasks) -> None:
    g = gated_masks
    mask = python_mask(g.bootstrap, g.mask_topic, g.model)
    assert any(f.closed_values for f in mask.fields.values())
    lines = kcat_read(g.bootstrap, g.input_topics.split(",")[0], fmt="%s\n")
    inputs = [v for line in lines[:300] for v in variants(orjson.loads(line)["features"])]
    for name, f in mask.fields.items():  # each closed value, as itself and in the other types
        for c in f.closed_values or ():
            inputs += [{name: c}, {name: str(c)}, {name: float(c) if not isinstance(c, str) else c + "!"}]
    expected = [apply(mask, f) for f in inputs]
    got = run_java(g.bootstrap, g.mask_topic, g.model, inputs)
    assert [typed(x) for x in got] == [typed(json.loads(orjson.dumps(e))) for e in expected]
    blanked = sum(1 for e, f in zip(expected, inputs, strict=True) for k, v in e.items()
                  if v is None and f.get(k) is not None)
    assert blanked > 0, "no closed value was applied"
