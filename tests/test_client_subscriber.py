"""featsieve_client.MaskSubscriber on the real broker: readiness and why not, on_change only on
decision changes, a new writer incarnation followed, stop() bounded with the broker gone."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from featsieve_client import FieldEntry, MaskDiff, MaskMessage, MaskSubscriber, encode
from tests.conftest import featsieve
from tests.private_broker import PrivateBroker, free_ports

pytestmark = [pytest.mark.broker]


def mask(version: int, *, epoch: int = 1, keep_b: bool = True, score: float = 0.01,
         closed: list[Any] | None = None, incarnation: str | None = "inc-1", model: str = "m") -> MaskMessage:
    return MaskMessage(
        model_id=model, version=version, epoch=epoch, created_at=int(time.time() * 1000), watermark=0,
        incarnation=incarnation,
        fields={
            "a": FieldEntry(keep=True, score=score, reason="score_above_enter", closed_values=closed),
            "b": FieldEntry(keep=keep_b, score=score, reason="score_above_enter" if keep_b else "not_significant"),
        },
    )


class Recorder:
    """Collects on_change calls; waits for a number of them."""

    def __init__(self) -> None:
        self.calls: list[tuple[MaskMessage | None, MaskMessage, MaskDiff]] = []
        self._cv = threading.Condition()

    def __call__(self, old: MaskMessage | None, new: MaskMessage, diff: MaskDiff) -> None:
        with self._cv:
            self.calls.append((old, new, diff))
            self._cv.notify_all()

    def wait(self, n: int, timeout: float = 30) -> None:
        with self._cv:
            assert self._cv.wait_for(lambda: len(self.calls) >= n, timeout), self.calls


@pytest.fixture
def topic(bootstrap: str, unique: str) -> str:
    name = f"{unique}.masks"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        admin.close()
    return name


def send(bootstrap: str, topic: str, *msgs: MaskMessage, raw: bytes | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for m in msgs:
            producer.send(topic, key=m.model_id.encode(), value=encode(m)).get(timeout=30)
        if raw is not None:
            producer.send(topic, key=b"m", value=raw).get(timeout=30)
    finally:
        producer.close()


def wait_for(cond: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_on_change_fires_on_decisions_only_and_heartbeats_are_taken_silently(bootstrap: str, topic: str) -> None:
    send(bootstrap, topic, mask(1), mask(2, keep_b=False), mask(1, model="other"))
    changed = Recorder()
    updates: list[int] = []
    with MaskSubscriber("m", bootstrap, topic=topic, on_change=changed,
                        on_update=lambda m: updates.append(m.version)) as sub:
        ready = sub.wait_ready(30)
        assert ready and ready.reason == "ready"
        # at ready: once, with what the topic ends with (the intermediate mask 1 is not reported)
        changed.wait(1)
        old, new, diff = changed.calls[0]
        assert old is None and new.version == 2 and [c.name for c in diff.fields] == ["a", "b"]
        assert updates == [1, 2]

        # a heartbeat: new version, new scores, same decisions -> taken, on_change not called
        send(bootstrap, topic, mask(3, keep_b=False, score=0.02))
        wait_for(lambda: sub.current().version == 3)
        # a decision change (b kept again, a value of a closed) -> called with the diff
        send(bootstrap, topic, mask(4, keep_b=True, closed=[3, "x", True]))
        changed.wait(2)
        old, new, diff = changed.calls[1]
        assert old is not None and old.version == 3 and new.version == 4
        assert diff.lines() == ["a: closed values +true +3 +x",
                                "b: dropped -> kept (score_above_enter, score 0.01)"]
        # an older one and an invalid one are not taken
        send(bootstrap, topic, mask(2), raw=b'{"schema": 1}')
        wait_for(lambda: sub.invalid == 1)
        assert sub.rejected >= 1 and sub.current().version == 4
        time.sleep(1)
        assert len(changed.calls) == 2 and updates == [1, 2, 3, 4]
    assert not sub.ready or sub.readiness().reason == "ready"


def test_a_new_incarnation_is_followed_even_with_a_lower_epoch(bootstrap: str, topic: str) -> None:
    send(bootstrap, topic, mask(500, epoch=7, incarnation="old"))
    changed = Recorder()
    with MaskSubscriber("m", bootstrap, topic=topic, on_change=changed) as sub:
        assert sub.wait_ready(30)
        # the writer started again from nothing: epoch 1, version 1, a new incarnation
        send(bootstrap, topic, mask(1, epoch=1, incarnation="new", keep_b=False))
        wait_for(lambda: sub.current().incarnation == "new")
        assert sub.incarnation_changes == 1
        changed.wait(2)
        # and within the new incarnation the order holds again
        send(bootstrap, topic, mask(2, epoch=1, incarnation="new"), mask(1, epoch=1, incarnation="new"))
        wait_for(lambda: sub.current().version == 2 and sub.rejected >= 1)
        assert sub.current().incarnation == "new"


def test_not_ready_says_why_when_the_topic_does_not_exist(bootstrap: str, unique: str) -> None:
    sub = MaskSubscriber("m", bootstrap, topic=f"{unique}.missing").start()
    try:
        ready = sub.wait_ready(3)
        assert not ready and f"topic {unique}.missing does not exist" in ready.reason
    finally:
        assert sub.stop(5)
    assert sub.readiness().reason == "stopped"


def test_not_ready_says_why_and_stop_is_bounded_with_no_broker() -> None:
    port = free_ports(1)  # nothing listens there
    sub = MaskSubscriber("m", f"127.0.0.1:{port}", connect_timeout_s=2).start()
    ready = sub.wait_ready(4)
    assert not ready and f"127.0.0.1:{port}" in ready.reason, ready
    t0 = time.monotonic()
    ended = sub.stop(timeout=3)
    assert time.monotonic() - t0 < 3.5
    # the connection attempt is bounded by connect_timeout_s: the thread ends soon after
    sub._thread.join(5)
    assert ended or not sub._thread.is_alive()
    assert not sub._thread.is_alive()


def test_an_empty_topic_is_ready_with_no_mask(bootstrap: str, topic: str) -> None:
    changed = Recorder()
    with MaskSubscriber("m", bootstrap, topic=topic, on_change=changed) as sub:
        assert sub.wait_ready(30)
        assert sub.current() is None
        send(bootstrap, topic, mask(1))
        changed.wait(1)
        assert changed.calls[0][0] is None and changed.calls[0][1].version == 1


def test_kafka_options_may_not_override_what_the_subscriber_sets() -> None:
    sub = MaskSubscriber("m", kafka_options={"group_id": "g"})
    with pytest.raises(ValueError, match="group_id"):
        sub._options()
    with pytest.raises(ValueError, match="model_id"):
        MaskSubscriber("")


@pytest.mark.slow
def test_stop_is_bounded_and_the_thread_ends_when_the_broker_went_away(tmp_path: Any) -> None:
    broker = PrivateBroker(tmp_path / "broker")
    broker.up()
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic("masks", 1, 1)])
        admin.close()
        send(broker.bootstrap, "masks", mask(1))
        sub = MaskSubscriber("m", broker.bootstrap, topic="masks").start()
        assert sub.wait_ready(60)
        broker.down()
        time.sleep(3)  # the subscriber now retries a broker that is gone
        assert sub.ready and sub.current().version == 1  # it keeps what it has
        t0 = time.monotonic()
        assert sub.stop(timeout=5), "the subscriber thread is still alive"
        assert time.monotonic() - t0 < 5.5
    finally:
        broker.down()


def test_masks_cli_says_why_it_could_not_read_the_topic(bootstrap: str, unique: str) -> None:
    proc = featsieve("masks", "--get", "--bootstrap", bootstrap, "--mask-topic", f"{unique}.none",
                     "--timeout", "3", check=False)
    # a user error (docs/cli.md): one line, exit 2, saying why
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"featsieve masks: could not read {unique}.none from Kafka at {bootstrap} "
                                   f"within --timeout 3 s: topic {unique}.none does not exist (yet) on {bootstrap}")
    dead = f"127.0.0.1:{free_ports(1)}"
    proc = featsieve("masks", "--get", "--bootstrap", dead, "--timeout", "3", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"connecting to {dead}: no broker has answered yet" in proc.stderr
