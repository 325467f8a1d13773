"""A consumer group's leader rejoins when its topics gain partitions, however it polls.

kafka-python 3.0 forgets that metadata asked for a rejoin once the leader has assigned from
the new metadata; if the JoinGroup is answered between polls (the daemon polls with timeout 0
while a batch is in the decoder) the member is stuck "rebalancing" and never fetches again.
:func:`connectors.kafka_compat.adopt_consumer` (what the daemon installs on its group consumers)
records the request as Java's client does; without it this test fails.

And a consumer that subscribes with :func:`connectors.kafka_io.subscribe` is assigned once at
start, not twice (the second rebalance threw away the first batches of every run).
"""

from __future__ import annotations

import time

import pytest
from kafka import ConsumerRebalanceListener, KafkaAdminClient
from kafka.admin import NewPartitions, NewTopic

from connectors.kafka_compat import adopt_consumer
from connectors.kafka_io import KafkaEndpoint, make_consumer, subscribe, wait_for_topics

pytestmark = pytest.mark.broker


def test_new_partitions_are_assigned_when_the_join_is_answered_between_polls(bootstrap: str, unique: str) -> None:
    topic = f"{unique}.grow"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = make_consumer(KafkaEndpoint(bootstrap=(bootstrap,)), group_id=unique, metadata_max_age_ms=300)
    assert adopt_consumer(consumer)
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(consumer.assignment()) != 2 and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert {tp.partition for tp in consumer.assignment()} == {0, 1}

        admin.create_partitions({topic: NewPartitions(4)})
        # polls that return at once, with time between them: the metadata change starts a
        # rejoin in one of them and its answer arrives while no poll waits for it
        until = time.monotonic() + 3
        while time.monotonic() < until:
            consumer.poll(timeout_ms=0)
            time.sleep(0.1)  # the stimulus itself: time between polls, not a wait for anything
        deadline = time.monotonic() + 30
        while len(consumer.assignment()) != 4 and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert {tp.partition for tp in consumer.assignment()} == {0, 1, 2, 3}
    finally:
        consumer.close()
        admin.close()


class _Calls(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_partitions_revoked(self, revoked) -> None:
        self.calls.append("revoked")

    def on_partitions_assigned(self, assigned) -> None:
        self.calls.append("assigned")


def test_a_new_member_is_assigned_once(bootstrap: str, unique: str) -> None:
    topics = [f"{unique}.a", f"{unique}.b"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = make_consumer(KafkaEndpoint(bootstrap=(bootstrap,)), group_id=unique)
    listener = _Calls()
    try:
        admin.create_topics([NewTopic(t, 1, 1) for t in topics])
        wait_for_topics(consumer, topics, timeout_s=30)
        subscribe(consumer, topics, listener=listener)
        until = time.monotonic() + 3  # the unwanted rejoin came with the next metadata, ~0.3 s in
        while time.monotonic() < until:
            consumer.poll(timeout_ms=100)
        assert listener.calls == ["revoked", "assigned"]
        assert {tp.topic for tp in consumer.assignment()} == set(topics)
    finally:
        consumer.close()
        admin.close()
