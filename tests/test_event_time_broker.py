"""Event time that a hostile producer cannot hijack, on the real broker (issue 21's rows).

Each test produces a generated stream (a replay: event time in 2023, far behind the wall
clock, where the wall-clock bound cannot help) with the issue's hostile records in it, runs
the daemon over it, and checks nothing good is lost as late, the hostile records are in the
dead-letter topic with their reason, the MI keeps its examples and /readyz tells the truth.
The ratchet and the 59-minute outlier are also run with ``--watermark-quorum 1`` (the old
rule, a running maximum): they lose events there, so the tests can fail.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.codec import Click, Impression, encode
from connectors.kafka_io import KafkaEndpoint, make_producer
from daemon.tools.synthetic import GeneratorConfig, generate
from models.mi import MIState, merge_held_back
from tests.conftest import BIN, ROOT, free_port, http_get
from tests.test_bad_input import _read_headers
from tests.test_crash import final_state

pytestmark = [pytest.mark.broker, pytest.mark.slow]

HOUR_MS = 3_600_000


def args(bootstrap: str, prefix: str, name: str, state: Path, port: int, *extra: str) -> list[str]:
    return [
        str(BIN / "featsieve"), "run", "--bootstrap", bootstrap,
        "--input-topics", f"{prefix}.impressions,{prefix}.clicks",
        "--group-id", f"{prefix}-{name}", "--model-id", f"{prefix}-{name}",
        "--mask-topic", f"{prefix}.masks", "--dlq-topic", f"{prefix}.dlq-{name}",
        "--state-dir", str(state), "--metrics-port", str(port), "--gates", "false",
        "--checkpoint-interval-s", "1", "--mask-interval-s", "0.5", "--max-poll-records", "500",
        "--attribution-window-s", "600", "--min-examples", "200", "--decode-process", "false",
        *extra,
    ]


def produce(bootstrap: str, prefix: str, events: list[Any]) -> None:
    producer = make_producer(KafkaEndpoint(bootstrap=(bootstrap,)))
    for ev in events:
        topic = f"{prefix}.clicks" if isinstance(ev, Click) else f"{prefix}.impressions"
        producer.send(topic, key=ev.id.encode(), value=encode(ev))
    producer.flush()
    producer.close()


def run_to_end(bootstrap: str, prefix: str, name: str, state: Path, *extra: str) -> dict[str, Any]:
    """The daemon over the whole topics (--exit-at-end), checking /readyz is never a lie on the way."""
    port = free_port()
    proc = subprocess.Popen(args(bootstrap, prefix, name, state, port, "--exit-at-end", *extra), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the daemon did not finish:\n{err[-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    return summary(state)


def summary(state: Path) -> dict[str, Any]:
    snap = final_state(state)
    counters: dict[str, int] = {}
    states = []
    for sh in snap["shards"]:
        for k, v in sh["join"]["counters"].items():
            counters[k] = counters.get(k, 0) + v
        states.append(MIState.restore(sh["mi"]))
    total = merge_held_back(states, states[0].config)
    return {"counters": counters, "examples": total.examples(), "events_seen": snap["events_seen"],
            "watermark": min(sh["join"]["watermark"] for sh in snap["shards"])}


def stream(seed: int, n: int) -> list[Any]:
    # one impression a second: 100 minutes of event time, several attribution windows
    return list(generate(GeneratorConfig(seed=seed, n_impressions=n, preset="small", event_rate=1)))


def test_the_26_impression_ratchet_moves_nothing(bootstrap: str, unique: str, tmp_path: Path) -> None:
    events = stream(31, 6000)
    half = len(events) // 2
    top = max(ev.ts for ev in events[:half])
    # the ratchet, on both topics (so the "both sources" rule alone cannot stop it):
    # each 3 500 s beyond the previous, each within max_future_s (3 600 s) of the previous
    ratchet: list[Any] = []
    for i in range(26):
        ratchet.append(Impression(f"ratchet{i}", top + (i + 1) * 3_500_000, {"site": "evil"}))
        ratchet.append(Click(f"ratchet-click{i}", top + (i + 1) * 3_500_000))
    hostile, clean = f"{unique}h", f"{unique}c"
    produce(bootstrap, hostile, events[:half] + ratchet + events[half:])
    produce(bootstrap, clean, events)

    port = free_port()
    state = tmp_path / "hostile"
    proc = subprocess.Popen(args(bootstrap, hostile, "robust", state, port), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        metrics = ""
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the daemon exited"
            ready = http_get(f"http://127.0.0.1:{port}/readyz")
            metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
            done = f'featsieve_events_total{{outcome="ok",type="impression"}} {6000 + 26}.0' in metrics
            if ready[0] == 200 and done:
                break
            time.sleep(0.5)
        assert ready[0] == 200 and done, (ready, [x for x in metrics.splitlines() if "events_total" in x])
        # a replay of 2023: the event-time lag gauge says how far behind the wall clock it is
        lag = [float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
               if x.startswith("featsieve_event_time_lag_seconds ")]
        assert lag and lag[0] > 86_400 * 300, lag
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]
    robust = summary(state)
    reference = run_to_end(bootstrap, clean, "reference", tmp_path / "reference")

    c = robust["counters"]
    assert c["too_late"] == 0 and reference["counters"]["too_late"] == 0
    # the first step of each ratchet is within max_future of the frontier: accepted (an impression
    # that waits, a click that will be an orphan), moving no mark; the other 25 + 25 are jumps (the
    # first click too when the clicks are read before the impressions reached the frontier)
    assert 50 <= c["too_far_ahead"] <= 52, c
    letters = _read_headers(bootstrap, f"{hostile}.dlq-robust", c["too_far_ahead"])
    assert len(letters) == c["too_far_ahead"] and {h["featsieve.reason"] for h in letters} == {"ts_out_of_range"}
    assert all(h["featsieve.original.key"].startswith("ratchet") for h in letters)
    # every normal event labelled as without the ratchet; the MI keeps its examples
    assert c["positives"] == reference["counters"]["positives"]
    assert robust["examples"] >= reference["examples"] > 3000, (robust["examples"], reference["examples"])
    assert robust["watermark"] <= top + 3_000_000  # nowhere near the ratchet's +25 h

    # the old rule (a running maximum) on the same topics: the ratchet wins
    old = run_to_end(bootstrap, hostile, "running-max", tmp_path / "old", "--watermark-quorum", "1")
    assert old["counters"]["too_late"] > 1000 and old["examples"] < reference["examples"] // 2, old


def test_one_impression_59_min_ahead_during_a_replay_loses_nothing(bootstrap: str, unique: str,
                                                                  tmp_path: Path) -> None:
    events = stream(32, 6000)
    imps = [ev for ev in events if not isinstance(ev, Click)]
    odd = Impression("odd", imps[300].ts + 59 * 60_000, {"site": "odd"})
    hostile, clean = f"{unique}h", f"{unique}c"
    # the whole history is in the topics before the daemon starts: it reads the small click topic
    # far ahead of the impressions, which hold the watermark back
    at = events.index(imps[300])
    produce(bootstrap, hostile, events[:at] + [odd] + events[at:])
    produce(bootstrap, clean, events)
    robust = run_to_end(bootstrap, hostile, "robust", tmp_path / "robust")
    reference = run_to_end(bootstrap, clean, "reference", tmp_path / "reference")
    assert robust["counters"]["too_late"] == 0, robust
    assert robust["counters"]["positives"] == reference["counters"]["positives"]
    assert robust["examples"] >= reference["examples"]
    old = run_to_end(bootstrap, hostile, "running-max", tmp_path / "old", "--watermark-quorum", "1")
    assert old["counters"]["too_late"] > 0 and old["counters"]["positives"] < reference["counters"]["positives"], old


def test_a_shards_first_event_at_2_53_is_dead_lettered_and_normal_ones_follow(
        bootstrap: str, unique: str, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    live = list(generate(GeneratorConfig(seed=33, n_impressions=1000, preset="small", event_rate=50,
                                         start_ms=now - 2 * HOUR_MS)))
    evil = [Impression("evil", 2**53 - 1, {"site": "evil"}), Click("evil-click", 2**53 - 1)]
    produce(bootstrap, unique, evil + live)  # the first record of each partition of a new shard
    result = run_to_end(bootstrap, unique, "first", tmp_path / "first")
    c = result["counters"]
    assert c["ahead_of_clock"] == 2 and c["too_late"] == 0 and c["too_far_ahead"] == 0, c
    letters = _read_headers(bootstrap, f"{unique}.dlq-first", 2)
    assert [h["featsieve.reason"] for h in letters] == ["ts_ahead_of_clock"] * 2
    assert {h["featsieve.source.offset"] for h in letters} == {"0"}
    n_imps = sum(not isinstance(ev, Click) for ev in live)
    assert result["events_seen"] == len(live) + 2
    assert c["positives"] > 20 and c["positives"] + c["negatives"] <= n_imps


def test_readyz_fails_while_a_watermark_is_ahead_of_the_wall_clock(bootstrap: str, unique: str,
                                                                   tmp_path: Path) -> None:
    """A run allowed 2 h of clock skew takes events an hour ahead; restarted with the default
    (300 s), its restored watermark is ahead of the wall clock: /readyz says so, the lag gauge is
    negative, and the daemon keeps running."""
    ahead = int(time.time() * 1000) + HOUR_MS
    events = list(generate(GeneratorConfig(seed=34, n_impressions=2000, preset="small", event_rate=100,
                                           start_ms=ahead, click_delay_median_s=1.0, late_click_rate=0.0)))
    produce(bootstrap, unique, events)
    state = tmp_path / "state"
    first = run_to_end(bootstrap, unique, "skewed", state, "--max-clock-skew-s", "7200")
    assert first["counters"]["ahead_of_clock"] == 0 and first["watermark"] > ahead - 60_000
    port = free_port()
    proc = subprocess.Popen(args(bootstrap, unique, "skewed", state, port), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        ready = http_get(f"http://127.0.0.1:{port}/readyz")
        while "ahead of the wall clock" not in ready[1]:
            assert proc.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, ready
            time.sleep(0.5)
            ready = http_get(f"http://127.0.0.1:{port}/readyz")
        assert ready[0] == 503 and "shard 0" in ready[1] and "max_clock_skew_s 300" in ready[1], ready
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        lag = [float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
               if x.startswith("featsieve_event_time_lag_seconds ")]
        assert lag and -3600 < lag[0] < -3000, lag
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]


def test_a_shard_far_ahead_does_not_expire_the_global_merge(bootstrap: str, unique: str, tmp_path: Path) -> None:
    """Two shards: partition 0 replays 2023, partition 1 is live. The plain merge took the newest
    MI block of all shards and so expired all of partition 0's evidence from the global MI (the
    issue's "26 392 examples to 25"); the published mask must count both shards' examples."""
    from kafka.admin import NewTopic

    from connectors.kafka_io import make_admin
    from tests.test_crash import last_mask

    endpoint = KafkaEndpoint(bootstrap=(bootstrap,))
    admin = make_admin(endpoint)
    try:
        admin.create_topics([NewTopic(f"{unique}.{t}", 2, 1) for t in ("impressions", "clicks")])
    finally:
        admin.close()
    old = stream(35, 3000)
    now = int(time.time() * 1000)
    live = list(generate(GeneratorConfig(seed=36, n_impressions=1500, preset="small", event_rate=1,
                                         start_ms=now - 3 * HOUR_MS)))
    producer = make_producer(endpoint)
    for partition, events in ((0, old), (1, live)):
        for ev in events:
            topic = f"{unique}.clicks" if isinstance(ev, Click) else f"{unique}.impressions"
            producer.send(topic, key=ev.id.encode(), value=encode(ev), partition=partition)
    producer.flush()
    producer.close()
    result = run_to_end(bootstrap, unique, "two", tmp_path / "two")
    snap = final_state(tmp_path / "two")
    per_shard = {sh["shard"]: MIState.restore(sh["mi"]).examples() for sh in snap["shards"]}
    assert per_shard[0] > 500 and per_shard[1] > 20, per_shard
    assert result["examples"] == per_shard[0] + per_shard[1]
    mask = last_mask(bootstrap, f"{unique}.masks", f"{unique}-two")
    assert max(f["examples"] for f in mask["fields"].values()) == per_shard[0] + per_shard[1], mask["fields"]
