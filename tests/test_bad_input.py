"""Bad input never stops the daemon: thousands of malformed events among good ones on the real broker."""

from __future__ import annotations

import collections
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from connectors.codec import EventError, Impression, Limits, decode, encode
from connectors.kafka_io import KafkaEndpoint, make_producer
from connectors.state_store import SnapshotStore
from daemon.tools.synthetic import GeneratorConfig, generate
from tests.conftest import (
    BIN,
    ROOT,
    free_port,
    http_get,
    kcat_read,
    metric_samples,
    read_records,
    scrape,
    wait_until,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SPECIAL = [  # limit violations
    b'{"type":"impression","id":"n","ts":1700000000000,"features":{"a":NaN}}',
    orjson.dumps(
        {"type": "impression", "id": "b", "ts": 1_700_000_000_000, "features": {"a": "x" * 70_000}}
    ),
    orjson.dumps(
        {
            "type": "impression",
            "id": "w",
            "ts": 1_700_000_000_000,
            "features": {f"f{i}": i for i in range(600)},
        }
    ),
    orjson.dumps(
        {"type": "impression", "id": "l", "ts": 1_700_000_000_000, "features": {"n" * 200: 1}}
    ),
    orjson.dumps(
        {"type": "impression", "id": "v", "ts": 1_700_000_000_000, "features": {"a": "v" * 2000}}
    ),
]


def _fails_decode(raw: bytes) -> bool:
    try:
        decode(raw, Limits())
    except EventError:
        return True
    return False


ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), st.text(max_size=5))
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=6,
)
malformed = st.one_of(
    st.binary(max_size=60),  # anything at all, mostly not JSON
    json_values.map(orjson.dumps),  # JSON, but not an event
    st.fixed_dictionaries(  # an impression with a broken field
        {
            "type": st.just("impression"),
            "id": st.one_of(ints, st.none(), st.just("")),
            "ts": st.one_of(st.text(max_size=3), st.booleans(), st.floats()),
            "features": json_values,
        }
    ).map(orjson.dumps),
    st.dictionaries(
        st.text(min_size=1, max_size=4), st.lists(ints, max_size=2), min_size=1, max_size=3
    ).map(
        lambda f: orjson.dumps(
            {"type": "impression", "id": "x", "ts": 1_700_000_000_000, "features": f}
        )
    ),
    st.sampled_from(SPECIAL),
).filter(_fails_decode)  # the rare valid event among them would be counted as a good one


def _read_headers(bootstrap: str, topic: str, expected: int) -> list[dict[str, str]]:
    from kafka import TopicPartition

    from connectors.kafka_io import make_consumer

    consumer = make_consumer(KafkaEndpoint(bootstrap=(bootstrap,)), group_id=None)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list[dict[str, str]] = []
        deadline = time.time() + 60
        while consumer.position(tp) < end and time.time() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    out.append({k: v.decode("utf-8", "replace") for k, v in rec.headers})
        return out
    finally:
        consumer.close()






def hypothesis_draws(strategy: st.SearchStrategy[bytes], n: int) -> list[bytes]:
    """``n`` examples of a strategy, as hypothesis explores it (deterministic: derandomized, no database)."""
    drawn: list[bytes] = []

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(raw: bytes) -> None:
        drawn.append(raw)

    collect()
    return drawn


def test_malformed_events_go_to_the_dlq_and_good_ones_count_once(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    distinct = hypothesis_draws(malformed, 500)
    bad = distinct * 5  # 2500 malformed events (the strategy keeps only values decode rejects)
    # every third one keyed: a dead letter keeps the original key, and says so in a header
    bad_keys = [f"bad-{i}".encode() if i % 3 == 0 else None for i in range(len(bad))]

    good = list(generate(GeneratorConfig(seed=9, n_impressions=6000, preset="small", event_rate=5)))
    n_impressions = sum(isinstance(e, Impression) for e in good)
    producer = make_producer(KafkaEndpoint(bootstrap=(bootstrap,)), max_request_size=1 << 21)
    topic = f"{unique}.events"  # one topic with mixed types works too
    stride = max(1, len(good) // len(bad))
    bad_iter = iter(zip(bad_keys, bad, strict=True))
    for i, ev in enumerate(good):
        producer.send(topic, key=ev.id.encode(), value=encode(ev))
        if i % stride == 0:
            kv = next(bad_iter, None)
            if kv is not None:
                producer.send(topic, key=kv[0], value=kv[1])
    for key, raw in bad_iter:
        producer.send(topic, key=key, value=raw)
    # valid events whose event time the join cannot place: 1970, and a year ahead of the stream
    stale = [
        {"type": "impression", "id": f"old{i}", "ts": 1000 + i, "features": {"a": 1}}
        for i in range(5)
    ]
    ahead = [
        {"type": "click", "id": f"fut{i}", "ts": good[-1].ts + 365 * 86_400_000} for i in range(5)
    ]
    for ev in stale + ahead:
        producer.send(topic, value=orjson.dumps(ev))
    dead = [(key, raw) for key, raw in zip(bad_keys, bad, strict=True)]
    dead += [(None, orjson.dumps(ev)) for ev in stale + ahead]
    expected_bad = len(dead)
    producer.flush()
    producer.close()

    port = free_port()
    daemon = subprocess.Popen(
        [
            str(BIN / "featsieve"),
            "run",
            "--bootstrap",
            bootstrap,
            "--input-topics",
            topic,
            "--group-id",
            unique,
            "--model-id",
            unique,
            "--mask-topic",
            f"{unique}.masks",
            "--dlq-topic",
            f"{unique}.dlq",
            "--state-dir",
            str(tmp_path / "state"),
            "--metrics-port",
            str(port),
            "--gates",
            "false",
            "--mask-interval-s",
            "0.5",
            "--attribution-window-s",
            "120",
            "--max-poll-records",
            "700",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        def caught_up() -> bool:
            assert daemon.poll() is None, "the daemon stopped on bad input"
            lag = metric_samples(scrape(port), "featsieve_consumer_lag_records")
            return (http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
                    and lag.get((("group", unique), ("partition", "0"), ("topic", topic))) == 0.0)

        wait_until(caught_up, 120, "/readyz 200 and no lag", interval=0.5)
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err[-3000:]

    # kcat (an independent client) counts the records: one line per record offset
    assert len(kcat_read(bootstrap, f"{unique}.dlq", fmt="%o\n")) == expected_bad
    # headers are read with kafka-python: a header value may hold any bytes, newlines included
    letters = _read_headers(bootstrap, f"{unique}.dlq", expected_bad)
    reasons = [h.get("featsieve.reason") for h in letters]
    offsets = [(h.get("featsieve.source.topic"), h.get("featsieve.source.offset")) for h in letters]
    repeated = sorted({o for o in offsets if offsets.count(o) > 1})
    assert len(letters) == expected_bad, (collections.Counter(reasons), repeated[:20])  # exactly once
    assert all(reasons), "every dead letter says why"
    assert reasons.count("ts_out_of_range") == len(stale) + len(ahead)
    # each letter is the bad record untouched, and its headers point at that record
    records = read_records(KafkaEndpoint(bootstrap=(bootstrap,)), f"{unique}.dlq")
    assert sorted((r.key or b"", r.value) for r in records) == sorted((k or b"", v) for k, v in dead)
    source = {(r.partition, r.offset): r for r in read_records(KafkaEndpoint(bootstrap=(bootstrap,)), topic)}
    for r in records:
        h = r.headers
        assert h["featsieve.source.topic"] == topic, h
        origin = source[(int(h["featsieve.source.partition"]), int(h["featsieve.source.offset"]))]
        assert (origin.key, origin.value) == (r.key, r.value), h
        assert h.get("featsieve.original.key") == (r.key.decode() if r.key is not None else None), h
        assert 0 < len(h["featsieve.detail"].encode()) <= 512, h
    assert {
        "not_json",
        "too_large",
        "too_many_fields",
        "bad_feature_value",
        "non_finite",
        "field_name_too_long",
        "value_too_long",
    } <= set(reasons)

    state = SnapshotStore(tmp_path / "state").load_latest().state
    join = state["shards"][0]["join"]
    # a matched impression stays (features None) until its window closes, to spot duplicate clicks:
    # it is already among the positives
    waiting = sum(1 for _i, _t, features in join["impressions"] if features is not None)
    counted = join["counters"]["positives"] + join["counters"]["negatives"] + waiting
    assert (
        counted == n_impressions
    )  # every good impression exactly once: labelled or still in its window
