"""Key-hash sampling (docs/events.md, "Sampling"): the batch reader keeps an impression and its
clicks by a documented hash of the record key, offsets move past what it leaves out, the auto
rate stays in its bounds and answers lag monotonically, and a click follows its impression when
the rate changes mid-stream. The last test runs the daemon at rate 0.1 on a real broker."""

from __future__ import annotations

import hashlib
import math
import re
import subprocess
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from connectors.codec import Click, Impression
from connectors.join import JoinBuffer
from connectors.kafka_compat import FastPartitionRecords
from connectors.record_reader import SKIPPED, KeySample, is_marker
from daemon.config import ConfigError, load_settings
from featsieve_client import MaskFormatError, decode, encode
from models.sampling import AutoRate, RateSchedule, kept, threshold
from tests.conftest import (
    BIN,
    ROOT,
    featsieve,
    free_port,
    kcat_read,
    metric_samples,
    scrape,
    wait_until,
)

TP = TopicPartition("events", 0)
TS = 1_700_000_000_000


def documented_kept(key: bytes, rate: float) -> bool:
    """The rule as docs/events.md states it, written out independently of models.sampling."""
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return rate >= 1 or h < math.floor(rate * 2**64)


def _batch(rows: list[tuple[bytes | None, bytes]], offset: int, magic: int = 2) -> bytes:
    builder = MemoryRecordsBuilder(magic, 0, batch_size=1 << 24, offset=offset)
    for i, (key, value) in enumerate(rows):
        assert builder.append(TS + i, key, value, [] if magic == 2 else None) is not None
    builder.close()
    return bytes(builder.buffer())


def _stream(n: int) -> list[tuple[bytes | None, bytes]]:
    """n impressions, each followed by a click on every third one, keyed by the impression id."""
    rows: list[tuple[bytes | None, bytes]] = []
    for i in range(n):
        key = f"imp-{i:06d}".encode()
        rows.append((key, b'{"type":"impression","id":"%s"}' % key))
        if i % 3 == 0:
            rows.append((key, b'{"type":"click","id":"%s"}' % key))
    return rows


def _read_all(data: bytes, rate: float | None, batch_takes: int | None = None) -> tuple[list[Any], int, int]:
    """Every record a sampled reader hands out (markers included), its final fetch offset and
    how many it left out."""
    sample = None if rate is None else KeySample(rate)
    cls = type("Sampled", (FastPartitionRecords,), {"sample": sample})
    part = cls(0, TP, MemoryRecords(data), None, None)
    out: list[Any] = []
    while part:
        out.extend(part.take(batch_takes))
    return out, part.next_fetch_offset, sample.skipped if sample else 0


def test_the_hash_is_the_documented_function_of_the_key_bytes() -> None:
    for i in range(2000):
        key = f"k{i}".encode()
        for rate in (0.001, 0.1, 0.5, 0.999, 1.0):
            assert kept(key, rate) == documented_kept(key, rate), (key, rate)
    assert kept(None, 0.01)  # a record without a key is always kept
    assert threshold(0.5) == (1 << 63).to_bytes(8, "big")
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            threshold(bad)


def test_rate_one_keeps_every_record_as_the_unsampled_reader_does() -> None:
    data = b"".join(_batch(_stream(300)[i::4], offset=i * 1000) for i in range(4))
    plain, plain_end, _ = _read_all(data, None)
    full, full_end, skipped = _read_all(data, 1.0)
    assert full == plain and full_end == plain_end and skipped == 0


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5])
def test_clicks_follow_their_impressions_and_the_kept_share_is_the_rate(rate: float) -> None:
    rows = _stream(20_000)
    data = b"".join(_batch(rows[i:i + 500], offset=i) for i in range(0, len(rows), 500))
    got, end, skipped = _read_all(data, rate, batch_takes=777)
    records = [r for r in got if not is_marker(r)]
    assert end == len(rows)  # the position moved past every record, kept or not
    assert len(records) + skipped == len(rows)
    imps = {r.key for r in records if b'"impression"' in r.value}
    clicks = {r.key for r in records if b'"click"' in r.value}
    # a click is kept exactly when its impression is
    assert clicks == {k for k in imps if int(k[4:]) % 3 == 0}
    assert imps == {k for k, v in rows if b'"impression"' in v and documented_kept(k, rate)}  # type: ignore[arg-type]
    n = 20_000
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(len(imps) - n * rate) < 5 * sd, (len(imps), n * rate)
    # kept records come out whole, as the library reads them
    values: dict[bytes | None, set[bytes]] = {}
    for k, v in rows:
        values.setdefault(k, set()).add(v)
    assert all(r.value in values[r.key] for r in records)


def test_a_batch_whose_last_records_are_left_out_ends_with_a_marker_at_its_last_offset() -> None:
    keys = [f"m{i}".encode() for i in range(400)]
    out_keys = [k for k in keys if not kept(k, 0.2)]
    rows = [(k, b"v") for k in keys if kept(k, 0.2)][:3] + [(k, b"v") for k in out_keys[:5]]
    got, end, skipped = _read_all(_batch(rows, offset=40), 0.2)
    assert [r.offset for r in got] == [40, 41, 42, 47]
    assert is_marker(got[-1]) and got[-1].value is SKIPPED and not any(is_marker(r) for r in got[:3])
    assert (end, skipped) == (48, 5) and got[-1].serialized_value_size == 5  # the run it stands for
    # a whole batch left out is one marker: the consumer's position still moves past it
    got, end, skipped = _read_all(_batch([(k, b"v") for k in out_keys[:7]], offset=100), 0.2)
    assert [(r.offset, is_marker(r)) for r in got] == [(106, True)] and (end, skipped) == (107, 7)


def test_each_run_left_out_is_one_marker_before_the_next_record_kept() -> None:
    keys = [f"r{i}".encode() for i in range(2000)]
    rows = [(k, b"v") for k in keys]
    got, end, skipped = _read_all(_batch(rows, offset=0), 0.3)
    runs = [r.serialized_value_size for r in got if is_marker(r)]
    assert sum(runs) == skipped == sum(1 for k in keys if not kept(k, 0.3)) and end == 2000
    for before, after in zip(got, got[1:], strict=False):
        assert not (is_marker(before) and is_marker(after))  # a run is one marker
        if is_marker(before):
            assert after.offset == before.offset + 1  # it ends right before the record kept


def test_records_without_a_key_are_all_kept_and_old_message_formats_are_sampled_too() -> None:
    rows = [(None, b"labeled-%d" % i) for i in range(50)] + _stream(600)
    for magic in (2, 1):
        got, end, skipped = _read_all(_batch(rows, offset=0, magic=magic), 0.1)
        records = [r for r in got if not is_marker(r)]
        assert sum(1 for r in records if r.key is None) == 50, magic
        assert {r.key for r in records if r.key is not None} == {k for k, _ in rows if k is not None and kept(k, 0.1)}
        assert end == len(rows) and skipped == len(rows) - len(records)


# ------------------------------------------------------------------ auto mode
LAGS = st.lists(st.integers(min_value=0, max_value=10_000_000), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(LAGS, st.floats(min_value=0.001, max_value=1.0))
def test_the_auto_rate_stays_within_its_bounds(lags: list[int], lowest: float) -> None:
    auto = AutoRate(lowest=lowest, high_lag=100_000, low_lag=1_000)
    for lag in lags:
        rate = auto.observe(lag)
        assert lowest <= rate <= 1.0


@settings(max_examples=300, deadline=None)
@given(LAGS, st.integers(min_value=0, max_value=10_000_000), st.integers(min_value=0, max_value=10_000_000))
def test_the_auto_rate_answers_more_lag_with_no_higher_rate(history: list[int], a: int, b: int) -> None:
    """From the same state, a larger lag never gives a larger rate (monotone response)."""
    lo, hi = sorted((a, b))
    one, two = AutoRate(high_lag=100_000, low_lag=1_000), AutoRate(high_lag=100_000, low_lag=1_000)
    for lag in history:
        one.observe(lag)
        two.observe(lag)
    assert one.observe(hi) <= two.observe(lo)


def test_growing_lag_lowers_the_rate_to_its_floor_and_no_lag_brings_it_back() -> None:
    auto = AutoRate(lowest=0.05, high_lag=100_000, low_lag=1_000)
    rates = [auto.observe(200_000 + 50_000 * i) for i in range(12)]
    assert rates[0] == 1.0 and rates == sorted(rates, reverse=True) and rates[-1] == 0.05
    assert auto.observe(50_000) == 0.05  # between the two levels: it holds (hysteresis)
    assert auto.observe(900_000) == 0.05  # at the floor it stays
    held = [auto.observe(0) for _ in range(2)]
    assert held == [0.05, 0.05]  # calm for fewer steps than calm_steps: not raised yet
    rates = [auto.observe(0) for _ in range(60)]
    assert rates == sorted(rates) and rates[0] > 0.05 and rates[-1] == 1.0


def test_a_rate_schedule_reads_at_the_highest_rate_of_the_last_window() -> None:
    sched = RateSchedule(0.5, hold_ms=1000)
    assert sched.read_rate(0) == 0.5
    sched.set_rate(0.1, 100)
    assert sched.read_rate(100) == 0.5 and sched.read_rate(1099) == 0.5 and sched.read_rate(1100) == 0.1
    sched.set_rate(0.8, 2000)
    assert sched.read_rate(2000) == 0.8  # raised at once


def _events(n: int, window_ms: int) -> list[Any]:
    """Impressions one second apart in event time; every other one clicked after 30 s (in window)."""
    evs: list[tuple[int, int, Any]] = []
    for i in range(n):
        ident = f"a{i:05d}"
        evs.append((TS + i * 1000, 0, Impression(ident, TS + i * 1000, {"f": i % 7})))
        if i % 2 == 0:
            evs.append((TS + i * 1000 + 30_000, 1, Click(ident, TS + i * 1000 + 30_000)))
    return [e for _, _, e in sorted(evs, key=lambda x: (x[0], x[1]))]


def test_a_click_follows_its_impression_while_the_rate_is_lowered_and_raised() -> None:
    """Reader at the schedule's read rate, join leaving out impressions over the impression
    rate: every impression that is joined gets its true label (no positive turned negative by a
    click left out), and raising the rate adds only orphans of impressions left out before."""
    window_ms = 120_000
    join = JoinBuffer(window_ms=window_ms, lateness_ms=0, sources=[("t", 0)])
    sched = RateSchedule(0.5, hold_ms=window_ms)
    events = _events(3000, window_ms)
    changes = {800: 0.1, 2000: 0.9}  # at these impression numbers the rate changes
    examples: list[Any] = []
    seen_imps = 0
    for ev in events:
        if isinstance(ev, Impression):
            seen_imps += 1
            if seen_imps in changes:
                sched.set_rate(changes[seen_imps], ev.ts)
        now = join.watermark_ms if join.watermark_ms is not None else ev.ts
        read = sched.read_rate(now)
        join.impression_below = threshold(sched.rate) if sched.rate < read else None
        if not kept(ev.id.encode(), read):
            continue  # the reader leaves it out
        res = join.process([ev], ("t", 0))
        examples.extend(res.examples)
        examples.extend(join.expire())
    clicked = {f"a{i:05d}" for i in range(0, 3000, 2)}
    by_ts = {TS + i * 1000: f"a{i:05d}" for i in range(3000)}
    labels = {by_ts[ex.ts]: ex.label for ex in examples}
    assert labels, "no examples"
    for ident, label in labels.items():
        assert label == (ident in clicked), ident  # no positive lost to a lowered rate
    # after the drop, impressions over 0.1 were left out by the join (the reader still read them)
    assert join.sampled_out_impressions > 0
    for i in range(1000, 1700):
        ident = f"a{i:05d}"
        assert (ident in labels) == kept(ident.encode(), 0.1), ident
    # after the rise, clicks of impressions left out at 0.1 are orphans, nothing else
    assert join.stats()["orphan_clicks"] > 0


# ------------------------------------------------------------------ settings and the mask
@pytest.mark.parametrize("raw", ["0", "1.5", "fast", "-0.1", "nan", ""])
def test_bad_sample_rates_stop_start_up_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="sample_rate"):
        load_settings(env={"FEATSIEVE_SAMPLE_RATE": raw})


def test_sample_rate_values_from_env_toml_and_auto(tmp_path: Any) -> None:
    assert load_settings(env={}).sample_rate == 1.0
    assert load_settings(env={"FEATSIEVE_SAMPLE_RATE": "0.25"}).sample_rate == 0.25
    assert load_settings(env={"FEATSIEVE_SAMPLE_RATE": "AUTO"}).sample_rate == "auto"
    toml = tmp_path / "f.toml"
    toml.write_text("[featsieve]\nsample_rate = 0.1\nsample_rate_min = 0.05\n")
    s = load_settings(env={}, config_path=str(toml))
    assert (s.sample_rate, s.sample_rate_min) == (0.1, 0.05)
    toml.write_text("[featsieve]\nsample_rate = true\n")
    with pytest.raises(ConfigError, match="sample_rate"):
        load_settings(env={}, config_path=str(toml))


def test_a_bad_sample_rate_flag_is_one_line_and_exit_2() -> None:
    proc = featsieve("run", "--sample-rate", "fast", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sample_rate" in lines[0] and "Traceback" not in proc.stderr


def test_the_mask_carries_the_rate_and_old_masks_still_parse() -> None:
    old = {"schema": 1, "model_id": "m", "version": 1, "epoch": 1, "created_at": 1, "watermark": 1,
           "fields": {"a": {"keep": True, "score": 0.1, "reason": "r"}}}
    assert decode(orjson.dumps(old)).sample_rate is None
    msg = decode(orjson.dumps({**old, "sample_rate": 0.1}))
    assert msg.sample_rate == 0.1 and orjson.loads(encode(msg))["sample_rate"] == 0.1
    for bad in (0, 1.01, "0.1", True):
        with pytest.raises(MaskFormatError, match="sample_rate"):
            decode(orjson.dumps({**old, "sample_rate": bad}))


# ------------------------------------------------------------------ the daemon on a real broker
def _input(bootstrap: str, topics: list[str]) -> tuple[list[tuple[bytes, dict[str, Any]]], int]:
    """The JSON records of the input topics (key, document) and how many records they hold."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=5000)
    try:
        consumer.subscribe(topics)
        out = []
        n = 0
        for record in consumer:
            n += 1
            try:
                out.append((record.key, orjson.loads(record.value)))
            except orjson.JSONDecodeError:
                continue
        return out, n
    finally:
        consumer.close()


@pytest.mark.broker
@pytest.mark.slow
def test_the_daemon_at_rate_one_tenth_states_it_and_joins_every_kept_click(bootstrap: str, unique: str,
                                                                            tmp_path: Any) -> None:
    imp_topic, click_topic = f"{unique}.impressions", f"{unique}.clicks"
    topics = f"{imp_topic},{click_topic}"
    window_s = 120
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "default", "--impressions", "40000",
              "--event-rate", "5", "--input-topics", topics, "--seed", "5")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics,
         "--group-id", unique, "--model-id", unique, "--mask-topic", f"{unique}.masks",
         "--dlq-topic", f"{unique}.dlq", "--state-dir", str(tmp_path / "state"), "--metrics-port", str(port),
         "--exit-at-end", "--no-gates", "--sample-rate", "0.1", "--attribution-window-s", str(window_s),
         # a tenth of the clicks leaves a click partition a few hundred events: its watermark
         # needs fewer to count (docs/events.md, "Sampling")
         "--watermark-quorum", "4"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        text = wait_until(lambda: scrape(port), 120, "/metrics of the daemon", interval=0.05)
        assert metric_samples(text, "featsieve_sample_rate") == {(): 0.1}
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-4000:]
    stopped = re.search(r"featsieve stopped: events=(\d+) .* sample_rate=([\d.]+) sampled_out=(\d+) "
                        r"positives=(\d+) negatives=(\d+) orphan_clicks=(\d+)", err)
    assert stopped, err[-3000:]
    events, rate, sampled_out, positives, negatives, orphans = (
        int(stopped[1]), float(stopped[2]), int(stopped[3]), int(stopped[4]), int(stopped[5]), int(stopped[6]))
    assert rate == 0.1

    # what the input holds, by the documented rule
    records, n_records = _input(bootstrap, [imp_topic, click_topic])
    assert events + sampled_out == n_records  # every record is either read or left out, once
    imps = {doc["id"]: doc["ts"] for key, doc in records if doc.get("type") == "impression"}
    kept_ids = {i for i in imps if documented_kept(i.encode(), 0.1)}
    share = len(kept_ids) / len(imps)
    sd = math.sqrt(0.1 * 0.9 / len(imps))
    assert abs(share - 0.1) < 5 * sd, share
    window_ms = window_s * 1000
    first_click: dict[str, int] = {}
    late_kept = 0
    for _key, doc in records:
        if doc.get("type") == "click" and doc["id"] in kept_ids:
            t = imps[doc["id"]]
            if t <= doc["ts"] <= t + window_ms:
                first_click.setdefault(doc["id"], doc["ts"])
            elif doc["ts"] > t + window_ms:
                late_kept += 1
    # every kept impression's in-window click joined: the positives are exactly those
    assert positives == len(first_click)
    # the examples are the kept impressions (those whose window has closed by the end), ~10%
    assert 0.9 * len(kept_ids) <= positives + negatives <= len(kept_ids)
    # no clicks of left-out impressions got in: orphans are at most the kept impressions' late clicks
    assert orphans <= late_kept

    lines = kcat_read(bootstrap, f"{unique}.masks")
    masks = [orjson.loads(line.split("\t", 1)[1]) for line in lines if line.startswith(unique + "\t")]
    assert masks and all(m["sample_rate"] == 0.1 for m in masks)
    last = masks[-1]
    counts = {(f["examples"], f["positives"]) for f in last["fields"].values() if f.get("examples") is not None}
    assert max(e for e, _ in counts) <= positives + negatives and max(p for _, p in counts) <= positives


def _run_sampled(bootstrap: str, unique: str, state: Any, topics: str, *extra: str) -> dict[str, float]:
    """Run the daemon at rate 0.1 over ``topics``; the counts of its stop line."""
    proc = subprocess.run(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics, "--group-id", unique,
         "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
         "--state-dir", str(state), "--metrics-port", "0", "--no-gates", "--sample-rate", "0.1",
         "--attribution-window-s", "120", "--watermark-quorum", "4", *extra],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = re.search(r"featsieve stopped: (.*)", proc.stderr)
    assert line, proc.stderr[-3000:]
    pairs = dict(p.split("=", 1) for p in line[1].split() if "=" in p)
    return {k: float(pairs[k]) for k in ("events", "sampled_out", "positives", "negatives", "orphan_clicks")}


@pytest.mark.broker
@pytest.mark.slow
def test_a_restart_neither_reads_nor_counts_a_left_out_record_again(bootstrap: str, unique: str, tmp_path: Any) -> None:
    """Stopped after 700 kept events and restarted on its state: every record is read or left out
    exactly once over both runs, and the joins' counts equal one uninterrupted run's."""
    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "15000",
              "--event-rate", "5", "--input-topics", topics, "--seed", "9")
    first = _run_sampled(bootstrap, unique, tmp_path / "a", topics, "--max-events", "700")
    second = _run_sampled(bootstrap, unique, tmp_path / "a", topics, "--exit-at-end")
    whole = _run_sampled(bootstrap, unique + "-whole", tmp_path / "b", topics, "--exit-at-end")
    assert first["events"] == 700 and first["sampled_out"] > 0
    assert first["events"] + second["events"] == whole["events"]
    assert first["sampled_out"] + second["sampled_out"] == whole["sampled_out"]
    _, n_records = _input(bootstrap, topics.split(","))
    assert whole["events"] + whole["sampled_out"] == n_records
    for key in ("positives", "negatives", "orphan_clicks"):  # the joins' counters are checkpointed
        assert second[key] == whole[key], key


@pytest.mark.broker
@pytest.mark.slow
def test_auto_lowers_the_rate_while_lag_grows_and_raises_it_when_lag_is_gone(bootstrap: str, unique: str,
                                                                              tmp_path: Any) -> None:
    """A producer writes faster than a daemon reading one record per poll can read: the lag
    grows and auto lowers the rate (gauge and log); once the producer stops and the lag is gone,
    auto raises it again."""
    import threading
    import time

    from kafka import KafkaProducer

    topic = f"{unique}.events"
    stop = threading.Event()

    def produce() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        i = 0
        try:
            while not stop.is_set():
                now = int(time.time() * 1000)
                for _ in range(500):
                    ident = f"{unique}-{i}".encode()
                    producer.send(topic, key=ident, value=b'{"type":"impression","id":"%s","ts":%d,'
                                  b'"features":{"a":%d}}' % (ident, now, i % 5))
                    if i % 10 == 0:
                        producer.send(topic, key=ident, value=b'{"type":"click","id":"%s","ts":%d}' % (ident, now))
                    i += 1
                producer.flush()
        finally:
            producer.close()

    port = free_port()
    daemon = subprocess.Popen(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topic, "--group-id", unique,
         "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
         "--state-dir", str(tmp_path / "state"), "--metrics-port", str(port), "--no-gates",
         "--sample-rate", "auto", "--sample-rate-min", "0.05", "--ready-max-lag", "2000", "--max-poll-records", "1",
         "--decode-process", "false"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    writer = threading.Thread(target=produce, daemon=True)
    try:
        writer.start()

        def rate() -> float:
            samples = metric_samples(scrape(port) or "", "featsieve_sample_rate")
            return samples.get((), 1.0)

        lowest = wait_until(lambda: rate() < 1.0 and rate(), 240, "auto lowering the sample rate under growing lag")
        stop.set()
        writer.join(timeout=60)
        wait_until(lambda: rate() > lowest, 300, "auto raising the sample rate once the lag is gone", interval=1.0)
    finally:
        stop.set()
        daemon.terminate()
        _, err = daemon.communicate(timeout=120)
    assert "sample_rate auto: lag" in err, err[-3000:]
