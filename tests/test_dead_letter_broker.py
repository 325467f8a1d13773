"""No record can stop the daemon, and two SIGTERMs make one clean stop (real brokers).

* a ~1 MB input record, whose dead letter is larger than the DLQ producer's max request: it is
  truncated (size, offset and sha256 in headers), the daemon goes on; killed and restarted, it
  reads the record again and does not crash on it;
* the DLQ topic deleted on a broker with auto.create.topics.enable=false: consumption stops,
  no checkpoint passes the undelivered letter, /readyz says why; the topic back, all resumes
  and nothing is lost;
* ``timeout``'s two SIGTERMs within microseconds: exit 0 with a final checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.codec import Click, encode
from connectors.kafka_io import KafkaEndpoint, make_admin, make_producer
from connectors.state_store import SnapshotStore
from daemon.tools.synthetic import GeneratorConfig, generate
from tests.conftest import BIN, ROOT, free_port, http_get, kcat_read
from tests.private_broker import PrivateBroker
from tests.test_bad_input import _read_headers
from tests.test_broker_faults import end_offsets, stop, wait_caught_up
from tests.test_crash import final_state

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def args(bootstrap: str, prefix: str, state: Path, port: int, *extra: str) -> list[str]:
    return [
        str(BIN / "featsieve"), "run", "--bootstrap", bootstrap,
        "--input-topics", f"{prefix}.impressions,{prefix}.clicks",
        "--group-id", prefix, "--model-id", prefix,
        "--mask-topic", f"{prefix}.masks", "--dlq-topic", f"{prefix}.dlq",
        "--state-dir", str(state), "--metrics-port", str(port), "--gates", "false",
        "--mask-interval-s", "0.5", "--max-poll-records", "500", "--attribution-window-s", "600",
        "--min-examples", "200", *extra,
    ]


def produce(bootstrap: str, prefix: str, events: list[Any], extra: list[tuple[int, bytes]] = ()) -> None:  # type: ignore[assignment]
    """Events to their topics; each (i, raw) of ``extra`` goes to the impressions before event i."""
    producer = make_producer(KafkaEndpoint(bootstrap=(bootstrap,)), max_request_size=4_000_000)
    before = dict(extra)
    for i, ev in enumerate(events):
        if i in before:
            producer.send(f"{prefix}.impressions", key=b"bad", value=before[i])
        topic = f"{prefix}.clicks" if isinstance(ev, Click) else f"{prefix}.impressions"
        producer.send(topic, key=ev.id.encode(), value=encode(ev))
    producer.flush()
    producer.close()


def _letters(bootstrap: str, topic: str) -> int:
    """Records in the topic; 0 while it does not exist yet."""
    try:
        return len(kcat_read(bootstrap, topic, fmt="%o\n"))
    except AssertionError:
        return 0


def http(port: int, path: str) -> tuple[int, str]:
    return http_get(f"http://127.0.0.1:{port}{path}")


def test_a_1mb_record_is_dead_lettered_truncated_and_never_stops_the_daemon(
        bootstrap: str, unique: str, tmp_path: Path) -> None:
    events = list(generate(GeneratorConfig(seed=41, n_impressions=3000, preset="small", event_rate=10)))
    pill = b'{"type": "impression", "id": "pill", "ts": 1700000000000, "features": {"x": "' + b"p" * 999_900 + b'"}}'
    produce(bootstrap, unique, events, [(1500, pill)])
    topics = [f"{unique}.impressions", f"{unique}.clicks"]
    state = tmp_path / "state"
    port = free_port()
    # no checkpoint after the pill: the restart must read it again
    first = subprocess.Popen(args(bootstrap, unique, state, port, "--checkpoint-interval-s", "3600",
                                  "--checkpoint-interval-events", "100000000"),
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _letters(bootstrap, f"{unique}.dlq"):
            assert first.poll() is None, "the daemon exited on the 1 MB record"
            assert time.monotonic() < deadline, "no dead letter"
            time.sleep(0.5)
        time.sleep(2)
        assert first.poll() is None, "the daemon exited on the 1 MB record"
    finally:
        first.kill()
        _, err = first.communicate()
    assert "truncated" in err, err[-2000:]

    second = subprocess.Popen(args(bootstrap, unique, state, port, "--checkpoint-interval-s", "0.5"),
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_caught_up(second, port, state, bootstrap, topics)
    finally:
        err = stop(second) if second.poll() is None else second.communicate()[1]
    letters = _read_headers(bootstrap, f"{unique}.dlq", 2)
    assert len(letters) == 2  # once per run that read it (the first never checkpointed past it)
    h = letters[0]
    assert h["featsieve.reason"] == "too_large" and h["featsieve.truncated"] == "value"
    assert h["featsieve.original.size"] == str(len(pill))
    assert h["featsieve.original.sha256"] == hashlib.sha256(pill).hexdigest()
    assert h["featsieve.source.offset"] == str(sum(1 for ev in events[:1500] if not isinstance(ev, Click)))
    final = final_state(state)
    assert final["events_seen"] == len(events) + 1


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A broker that never creates a topic on its own."""
    home = tmp_path_factory.mktemp("strict-broker")
    b = PrivateBroker(home)
    extra = home / "extra.properties"
    extra.write_text("auto.create.topics.enable=false\n")
    b.env["FEATSIEVE_KAFKA_EXTRA_CONFIG"] = str(extra)
    b.up()
    try:
        yield b
    finally:
        b.down()


def _committed_impressions(state: Path, topic: str) -> int:
    loaded = SnapshotStore(state).load_latest()
    assert loaded is not None
    return {t: o for sh in loaded.state["shards"] for t, _p, o in sh["offsets"]}.get(topic, 0)


def test_a_deleted_dlq_topic_pauses_consumption_until_it_is_back(strict_broker: PrivateBroker, unique: str,
                                                                  tmp_path: Path) -> None:
    from kafka.admin import NewTopic

    bootstrap = strict_broker.bootstrap
    endpoint = KafkaEndpoint(bootstrap=(bootstrap,))
    admin = make_admin(endpoint)
    topics = [f"{unique}.impressions", f"{unique}.clicks"]
    admin.create_topics([NewTopic(t, 1, 1) for t in topics])
    events = list(generate(GeneratorConfig(seed=42, n_impressions=6000, preset="small", event_rate=10)))
    third = len(events) // 3
    produce(bootstrap, unique, events[:third])
    state = tmp_path / "state"
    port = free_port()
    proc = subprocess.Popen(args(bootstrap, unique, state, port, "--checkpoint-interval-s", "0.5"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_caught_up(proc, port, state, bootstrap, topics)
        dlq = f"{unique}.dlq"
        admin.delete_topics([dlq])
        deadline = time.monotonic() + 30
        while dlq in admin.list_topics():
            assert time.monotonic() < deadline, "the DLQ topic was not deleted"
            time.sleep(0.5)
        bad_offset = end_offsets(bootstrap, topics)[f"{unique}.impressions"]
        produce(bootstrap, unique, events[third:2 * third], [(0, b"{not json")])
        # not ready, with the reason, and still running
        deadline = time.monotonic() + 60
        ready = http(port, "/readyz")
        while not (ready[0] == 503 and "dead-letter topic" in ready[1]):
            assert proc.poll() is None, "the daemon exited with the DLQ topic gone"
            assert time.monotonic() < deadline, ready
            time.sleep(0.3)
            ready = http(port, "/readyz")
        # what comes now is not consumed (the records polled with the bad one may have been)
        produce(bootstrap, unique, events[2 * third:])
        time.sleep(8)  # a few checkpoint intervals and delivery attempts
        assert proc.poll() is None
        ready = http(port, "/readyz")
        assert ready[0] == 503 and "dead-letter topic" in ready[1] and "waiting" in ready[1], ready
        # nothing checkpointed or committed past the undelivered letter; consumption stopped
        assert _committed_impressions(state, f"{unique}.impressions") <= bad_offset
        _, metrics = http(port, "/metrics")
        waiting = [x for x in metrics.splitlines() if x.startswith("featsieve_dead_letters_waiting ")]
        assert waiting and float(waiting[0].split()[1]) >= 1, waiting
        # (the lag gauge cannot show it: a paused partition is not fetched, so its high watermark
        # is not refreshed) the events counted stop short of the last part
        counted = [float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
                   if x.startswith('featsieve_events_total{outcome="ok",type="impression"}')]
        assert counted and counted[0] <= sum(not isinstance(ev, Click) for ev in events[:2 * third]), counted
        # the operator brings the topic back: the letter goes, consumption resumes, nothing lost
        admin.create_topics([NewTopic(dlq, 1, 1)])
        wait_caught_up(proc, port, state, bootstrap, topics, timeout=120)
    finally:
        admin.close()
        err = stop(proc) if proc.poll() is None else proc.communicate()[1]
    assert "holding consumption" in err and "consumption resumed" in err, err[-3000:]
    letters = kcat_read(bootstrap, f"{unique}.dlq", fmt="%k\t%h\n")
    assert len(letters) == 1 and letters[0].startswith("bad\t"), letters
    assert final_state(state)["events_seen"] == len(events) + 1


def test_two_sigterms_back_to_back_make_one_clean_stop(bootstrap: str, unique: str, tmp_path: Path) -> None:
    events = list(generate(GeneratorConfig(seed=43, n_impressions=2000, preset="small", event_rate=10)))
    produce(bootstrap, unique, events)
    topics = [f"{unique}.impressions", f"{unique}.clicks"]
    state = tmp_path / "state"
    port = free_port()
    proc = subprocess.Popen(args(bootstrap, unique, state, port, "--checkpoint-interval-s", "3600"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        target = sum(end_offsets(bootstrap, topics).values())
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            _, metrics = http(port, "/metrics")
            seen = sum(float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
                       if x.startswith("featsieve_events_total{") and 'outcome="ok"' in x)
            if seen >= target:
                break
            time.sleep(0.3)
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGTERM)  # as `timeout` does: microseconds apart
        # the kernel may merge those two into one; one more a moment later surely reaches the
        # handler as a second signal (the old rule: "second signal", exit 130, no checkpoint)
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "checkpoint: reason=shutdown" in err and "already stopping cleanly" in err, err[-3000:]
    assert "exiting at once" not in err
    final = final_state(state)
    offsets = {t: o for sh in final["shards"] for t, _p, o in sh["offsets"]}
    assert offsets == end_offsets(bootstrap, topics)
    assert orjson.loads(orjson.dumps(final["events_seen"])) == len(events)
