"""Publishing masks to the compacted mask topic, fenced against zombie writers.

Two fences, one inside Kafka and one in the message:

* the producer is transactional with ``transactional.id = featsieve-mask-<model>``;
  when a second instance initialises the same id, the broker bumps the
  producer epoch and every later write of the first one fails with
  ``ProducerFencedError`` (we then stop publishing and report not-ready);
* every mask carries ``(epoch, version)``. A new writer reads the topic to its
  end, takes ``epoch = max(seen, restored) + 1`` and continues the version
  sequence, so a subscriber that has seen the new writer rejects anything an
  old one still manages to get through.

Every mask also carries the writer's ``incarnation`` (docs/mask-format.md): a random id
made when there is nothing to continue, i.e. the writer's state is new (no restored
position) or the topic holds no mask of the model (a new or recreated topic). A restored
position keeps its incarnation, so restarts and failovers continue one lineage.
Subscribers follow a different incarnation whatever its ``(epoch, version)``, so one that
held a mask of a deleted topic does not ignore the writer that starts again at epoch 1.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from kafka import KafkaProducer, TopicPartition
from kafka.errors import InvalidProducerEpochError, KafkaError, ProducerFencedError

from connectors import mask_message
from connectors.kafka_compat import transaction_error
from connectors.kafka_io import KafkaEndpoint, make_consumer, make_producer
from connectors.mask_message import MaskMessage

log = logging.getLogger(__name__)


class WriterFencedError(RuntimeError):
    """Another instance took over publishing for this model id."""


@dataclass(frozen=True)
class PublishedPosition:
    """Where a writer's sequence stands; ``incarnation`` None in snapshots made before it existed."""

    epoch: int
    version: int
    incarnation: str | None = None


def new_incarnation() -> str:
    """A fresh incarnation id: 32 random hex digits."""
    return uuid.uuid4().hex


def choose_incarnation(restored: PublishedPosition | None, latest: MaskMessage | None) -> tuple[str, str]:
    """The writer's incarnation and why: a new one when there is nothing to continue (no
    restored state, or no mask of the model on the topic), else the restored one (or, for a
    snapshot older than incarnations, the one on the topic)."""
    if latest is None:
        return new_incarnation(), "the mask topic holds no mask of this model"
    if restored is None:
        return new_incarnation(), "no saved writer state"
    if restored.incarnation:
        return restored.incarnation, "restored"
    if latest.incarnation:
        return latest.incarnation, "taken from the mask topic"
    return new_incarnation(), "neither the state nor the topic had one"


def read_latest(
    endpoint: KafkaEndpoint, topic: str, model_id: str, timeout_s: float = 30.0
) -> MaskMessage | None:
    """Read ``topic`` to its end (committed records only) and return the newest mask of ``model_id``."""
    consumer = make_consumer(endpoint, group_id=None, isolation_level="read_committed", consumer_timeout_ms=1000)
    try:
        deadline = time.monotonic() + timeout_s
        if topic not in consumer.topics():
            return None  # nothing was ever published
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        best: MaskMessage | None = None
        key = model_id.encode()
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s:.0f} s")
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    if rec.key != key or rec.value is None:
                        continue
                    try:
                        msg = mask_message.decode(rec.value)
                    except mask_message.MaskFormatError as exc:
                        log.warning("skipping invalid mask at %s:%d: %s", topic, rec.offset, exc)
                        continue
                    if mask_message.is_newer(msg, best):
                        best = msg
        return best
    finally:
        consumer.close()


class MaskPublisher:
    """Publishes mask messages for one model id; versions strictly increase across restarts."""

    def __init__(
        self,
        endpoint: KafkaEndpoint,
        topic: str,
        model_id: str,
        restored: PublishedPosition | None = None,
        transactional: bool = True,
    ) -> None:
        self.topic = topic
        self.model_id = model_id
        self._key = model_id.encode()
        latest = read_latest(endpoint, topic, model_id)
        seen_epoch = latest.epoch if latest else 0
        seen_version = latest.version if latest else 0
        r_epoch = restored.epoch if restored else 0
        r_version = restored.version if restored else 0
        self.epoch = max(seen_epoch, r_epoch) + 1
        self.version = max(seen_version, r_version)
        self.incarnation, why = choose_incarnation(restored, latest)
        self.fenced = False
        self.last_published: MaskMessage | None = None
        self.last_publish_time: float | None = None
        opts = {"transactional_id": f"featsieve-mask-{model_id}"} if transactional else {}
        self._producer: KafkaProducer = make_producer(endpoint, **opts)
        self._transactional = transactional
        if transactional:
            self._producer.init_transactions()
        log.info("mask writer for model %s: epoch %d, continuing after version %d, incarnation %s (%s)",
                 model_id, self.epoch, self.version, self.incarnation, why)

    def next_version(self) -> int:
        return self.version + 1

    def publish(self, msg: MaskMessage, now: float | None = None) -> MaskMessage:
        """Send ``msg`` (whose epoch/version must be ours) and wait for the broker's acknowledgement."""
        if self.fenced:
            raise WriterFencedError(f"writer for model {self.model_id} was fenced by a newer instance")
        if msg.epoch != self.epoch or msg.version <= self.version:
            raise ValueError(f"mask ({msg.epoch},{msg.version}) is not the next of writer ({self.epoch},{self.version})")
        if msg.incarnation != self.incarnation:
            raise ValueError(f"mask of incarnation {msg.incarnation} given to writer of {self.incarnation}")
        raw = mask_message.encode(msg)
        try:
            if self._transactional:
                self._producer.begin_transaction()
            self._producer.send(self.topic, key=self._key, value=raw).get(timeout=30)
            if self._transactional:
                self._producer.commit_transaction()
        except KafkaError as exc:
            if self._was_fenced(exc):
                self.fenced = True
                raise WriterFencedError(f"writer for model {self.model_id} was fenced by a newer instance") from exc
            if self._transactional:
                try:
                    self._producer.abort_transaction()
                except KafkaError as abort_exc:
                    log.warning("abort after failed mask publish also failed: %s", abort_exc)
            raise
        self.version = msg.version
        self.last_published = msg
        self.last_publish_time = time.time() if now is None else now
        return msg

    def _was_fenced(self, exc: KafkaError) -> bool:
        """Whether a failed publish means a newer writer took over.

        kafka-python says so in more than one way: ``ProducerFencedError`` from the call that
        found out, but when a send's acknowledgement found out first, that send fails with
        another error and every transactional call after it with a plain ``KafkaError`` ("in an
        error state: ProducerFencedError"). The transaction manager keeps the fatal error: ask it
        (connectors/kafka_compat.py).
        """
        if isinstance(exc, ProducerFencedError | InvalidProducerEpochError):
            return True
        return isinstance(transaction_error(self._producer), ProducerFencedError | InvalidProducerEpochError)

    def position(self) -> PublishedPosition:
        return PublishedPosition(self.epoch, self.version, self.incarnation)

    def close(self) -> None:
        try:
            self._producer.close(timeout=5)
        except KafkaError as exc:
            log.warning("mask producer close: %s", exc)
