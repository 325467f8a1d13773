"""Mask publication on the real broker: versions, a late subscriber, fencing of a second writer."""

from __future__ import annotations

import subprocess
import time

import orjson
import pytest

from connectors import mask_message
from connectors.kafka_io import KafkaEndpoint
from connectors.mask_message import FieldEntry, MaskMessage
from connectors.mask_publisher import MaskPublisher, WriterFencedError
from connectors.subscriber import MaskSubscriber
from tests.conftest import BIN, ROOT, featsieve, kcat_read, wait_until

pytestmark = [pytest.mark.broker]


def mask(pub: MaskPublisher, keep: bool = True) -> MaskMessage:
    return MaskMessage(
        model_id=pub.model_id, version=pub.next_version(), epoch=pub.epoch, created_at=int(time.time() * 1000),
        watermark=0, fields={"a": FieldEntry(keep=keep, score=0.01, reason="score_above_enter")},
        incarnation=pub.incarnation,
    )


def test_versions_late_subscriber_and_fencing(bootstrap: str, unique: str) -> None:
    endpoint = KafkaEndpoint(bootstrap=(bootstrap,))
    topic = f"{unique}.masks"
    first = MaskPublisher(endpoint, topic, "m")
    for _ in range(3):
        first.publish(mask(first))
    assert (first.epoch, first.version) == (1, 3)

    # a subscriber started late gets the newest mask before it reports ready
    seen: list[tuple[int, int]] = []
    sub = MaskSubscriber("m", bootstrap, topic=topic, on_update=lambda m: seen.append((m.epoch, m.version))).start()
    try:
        assert sub.wait_ready(30)
        current = sub.current()
        assert current is not None and (current.epoch, current.version) == (1, 3)

        # a second writer for the same model fences the first, inside Kafka and by epoch
        second = MaskPublisher(endpoint, topic, "m")
        assert (second.epoch, second.version) == (2, 3)
        second.publish(mask(second, keep=False))
        with pytest.raises(WriterFencedError):
            first.publish(mask(first))
        # told of it in another way (a send's acknowledgement found out first: every call after
        # it fails with a plain KafkaError "in an error state"), it is still fenced, not retried
        first.fenced = False
        with pytest.raises(WriterFencedError):
            first.publish(mask(first))
        assert first.fenced
        wait_until(lambda: (sub.current().epoch, sub.current().version) == (2, 4), 20,
                   "the subscriber to see the second writer's mask")
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert all(e == 2 for e, _ in seen[seen.index((2, 4)):])
    finally:
        sub.stop()
        first.close()

    # an independent client reads the compacted topic and sees valid JSON mask messages
    lines = kcat_read(bootstrap, topic)
    docs = [orjson.loads(line.split("\t", 1)[1]) for line in lines]
    assert [(d["epoch"], d["version"]) for d in docs] == [(1, 1), (1, 2), (1, 3), (2, 4)]
    for line in lines:
        mask_message.decode(line.split("\t", 1)[1].encode())


def test_stale_message_from_an_old_epoch_is_rejected(bootstrap: str, unique: str) -> None:
    endpoint = KafkaEndpoint(bootstrap=(bootstrap,))
    topic = f"{unique}.masks"
    pub = MaskPublisher(endpoint, topic, "m", transactional=False)
    pub.publish(mask(pub))
    # a forged record with an older epoch but a higher version, as a zombie might have sent before fencing
    from connectors.kafka_io import make_producer

    old = MaskMessage(model_id="m", version=99, epoch=0, created_at=0, watermark=0,
                      fields={"a": FieldEntry(keep=False, score=0.0, reason="x")})
    producer = make_producer(endpoint)
    producer.send(topic, key=b"m", value=mask_message.encode(old)).get(10)
    producer.close()
    sub = MaskSubscriber("m", bootstrap, topic=topic).start()
    try:
        assert sub.wait_ready(30)
        assert (sub.current().epoch, sub.current().version) == (1, 1)
        assert sub.rejected == 1
    finally:
        sub.stop()


@pytest.mark.slow
def test_two_daemons_same_model_second_fences_first(bootstrap: str, unique: str, tmp_path) -> None:
    """Two processes for one model id: after the second starts, nothing the first sends is accepted."""
    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "20000",
              "--event-rate", "5", "--input-topics", topics)
    common = ["--bootstrap", bootstrap, "--input-topics", topics, "--model-id", unique,
              "--mask-topic", f"{unique}.masks", "--metrics-port", "0", "--gates", "false",
              "--mask-interval-s", "0.2", "--mask-republish-interval-s", "1", "--attribution-window-s", "120"]
    seen: list[tuple[int, int]] = []
    sub = MaskSubscriber(unique, bootstrap, topic=f"{unique}.masks",
                         on_update=lambda m: seen.append((m.epoch, m.version))).start()
    first = subprocess.Popen([str(BIN / "featsieve"), "run", *common, "--group-id", f"{unique}-a",
                              "--state-dir", str(tmp_path / "a")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: seen, 60, "a mask from the first daemon")
        second = subprocess.Popen([str(BIN / "featsieve"), "run", *common, "--group-id", f"{unique}-b",
                                   "--state-dir", str(tmp_path / "b"), "--duration", "8"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out_second, _ = second.communicate(timeout=120)
        assert second.returncode == 0, out_second
        out_first, _ = first.communicate(timeout=60)
        assert first.returncode == 3, out_first  # fenced: it stops instead of publishing
        assert "fenced" in out_first
        epochs = [e for e, _ in seen]
        assert epochs == sorted(epochs) and set(epochs) == {1, 2}
        assert seen == sorted(seen)
    finally:
        sub.stop()
        if first.poll() is None:
            first.kill()
