"""A consumer group's leader rejoins when its topics gain partitions, however it polls.

kafka-python 3.0 forgets that metadata asked for a rejoin once the leader has assigned from
the new metadata; if the JoinGroup is answered between polls (the daemon polls with timeout 0
while a batch is in the decoder) the member is stuck "rebalancing" and never fetches again.
:func:`connectors.kafka_io.make_consumer` records the request as Java's client does.
"""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewPartitions, NewTopic

from connectors.kafka_io import KafkaEndpoint, make_consumer

pytestmark = pytest.mark.broker


def test_new_partitions_are_assigned_when_the_join_is_answered_between_polls(bootstrap: str, unique: str) -> None:
    topic = f"{unique}.grow"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = make_consumer(KafkaEndpoint(bootstrap=(bootstrap,)), group_id=unique, metadata_max_age_ms=300)
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
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while len(consumer.assignment()) != 4 and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert {tp.partition for tp in consumer.assignment()} == {0, 1, 2, 3}
    finally:
        consumer.close()
        admin.close()
