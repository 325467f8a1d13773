"""The writer incarnation: made when there is nothing to continue, kept in the daemon's state, and
followed by subscribers, so that a recreated mask topic never leaves them on an old epoch."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import pytest
from kafka.admin import KafkaAdminClient

from connectors.kafka_io import KafkaEndpoint
from connectors.mask_message import MaskMessage
from connectors.mask_publisher import MaskPublisher, PublishedPosition, choose_incarnation
from featsieve_client import MaskSubscriber
from tests.conftest import BIN, ROOT, featsieve, kcat_read


def message(incarnation: str | None, epoch: int = 1, version: int = 1) -> MaskMessage:
    return MaskMessage(model_id="m", version=version, epoch=epoch, created_at=0, watermark=0,
                       fields={}, incarnation=incarnation)


def test_an_incarnation_is_made_only_when_there_is_nothing_to_continue() -> None:
    restored = PublishedPosition(4, 40, "kept")
    new, why = choose_incarnation(restored, None)
    assert new != "kept" and len(new) == 32 and int(new, 16) >= 0 and "holds no mask" in why
    new, why = choose_incarnation(None, message("on-topic"))
    assert new != "on-topic" and "no saved writer state" in why
    assert choose_incarnation(restored, message("on-topic")) == ("kept", "restored")
    # a snapshot from before incarnations: continue the topic's lineage
    assert choose_incarnation(PublishedPosition(4, 40), message("on-topic"))[0] == "on-topic"
    assert choose_incarnation(PublishedPosition(4, 40), message(None))[0] not in ("", None)
    assert choose_incarnation(None, None)[0] != choose_incarnation(None, None)[0]  # random


def mask(pub: MaskPublisher) -> MaskMessage:
    return MaskMessage(model_id=pub.model_id, version=pub.next_version(), epoch=pub.epoch,
                       created_at=int(time.time() * 1000), watermark=0, fields={},
                       incarnation=pub.incarnation)


@pytest.mark.broker
def test_publishers_keep_or_make_incarnations(bootstrap: str, unique: str) -> None:
    endpoint = KafkaEndpoint(bootstrap=(bootstrap,))
    topic = f"{unique}.masks"
    first = MaskPublisher(endpoint, topic, "m", transactional=False)
    first.publish(mask(first))
    with pytest.raises(ValueError, match="incarnation"):
        first.publish(MaskMessage(model_id="m", version=first.next_version(), epoch=first.epoch,
                                  created_at=0, watermark=0, fields={}))
    first.close()
    pos = first.position()
    assert pos.incarnation == first.incarnation
    again = MaskPublisher(endpoint, topic, "m", restored=pos, transactional=False)  # a restart
    assert (again.incarnation, again.epoch) == (first.incarnation, 2)
    again.publish(mask(again))
    again.close()
    fresh = MaskPublisher(endpoint, topic, "m", transactional=False)  # its state was lost
    assert fresh.incarnation != first.incarnation and (fresh.epoch, fresh.version) == (3, 2)
    fresh.close()
    elsewhere = MaskPublisher(endpoint, f"{unique}.other", "m", restored=pos, transactional=False)
    assert elsewhere.incarnation != first.incarnation and elsewhere.epoch == 2  # a new topic
    elsewhere.close()


def masks_on(bootstrap: str, topic: str) -> list[dict]:
    return [orjson.loads(line.split("\t", 1)[1]) for line in kcat_read(bootstrap, topic)]


def run(bootstrap: str, unique: str, topics: str, state: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics,
         "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
         "--group-id", f"{unique}-{state.name}", "--state-dir", str(state), "--metrics-port", "0",
         "--exit-at-end", "--gates", "false", "--mask-interval-s", "0.2", "--attribution-window-s", "120"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]


def recreate_topic(bootstrap: str, topic: str) -> None:
    """Delete the topic and make it again, compacted, as an operator would (a running subscriber's
    metadata requests may let the broker auto-create it in between, with the broker's default
    cleanup.policy, which the daemon refuses: then it is set to compact)."""
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([topic])
        deadline = time.monotonic() + 60
        while topic in admin.list_topics():
            assert time.monotonic() < deadline, f"{topic} was not deleted"
            time.sleep(0.5)
        try:
            admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"cleanup.policy": "compact"})])
    finally:
        admin.close()


@pytest.mark.broker
@pytest.mark.slow
def test_daemon_restarts_keep_it_and_subscribers_follow_a_recreated_topic(
        bootstrap: str, unique: str, tmp_path: Path) -> None:
    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "3000",
              "--input-topics", topics)
    run(bootstrap, unique, topics, tmp_path / "a")
    run(bootstrap, unique, topics, tmp_path / "a")  # a restart from its snapshot
    docs = masks_on(bootstrap, f"{unique}.masks")
    assert {d["epoch"] for d in docs} == {1, 2}
    assert len({d["incarnation"] for d in docs}) == 1, "a restart keeps the incarnation"
    first = docs[0]["incarnation"]

    with MaskSubscriber(unique, bootstrap, topic=f"{unique}.masks") as sub:
        assert sub.wait_ready(60)
        held = sub.current()
        assert held is not None and (held.incarnation, held.epoch) == (first, 2)
        # the mask topic is recreated, and a daemon starts from nothing: epoch 1, version 1 again
        recreate_topic(bootstrap, f"{unique}.masks")
        run(bootstrap, unique, topics, tmp_path / "b")
        docs = masks_on(bootstrap, f"{unique}.masks")
        assert docs[0]["epoch"] == 1 and docs[0]["version"] == 1 and docs[0]["incarnation"] != first
        deadline = time.monotonic() + 90
        while sub.current().incarnation == held.incarnation:
            assert time.monotonic() < deadline, "the subscriber stayed on the deleted topic's mask"
            time.sleep(0.5)
        assert sub.current().incarnation == docs[-1]["incarnation"] and sub.incarnation_changes == 1
