"""Mask subscriber for serving code: ``MaskSubscriber(model_id, bootstrap, on_update=...)``.

Importing this module pulls in kafka-python and orjson only (never torch or
the daemon). At start it reads the mask topic to its end offset before it
reports ready, then tails it. It applies a mask only when its
``(epoch, version)`` is newer than the one it holds, so a fenced writer or a
replayed old record never goes backwards. Broker restarts are survived: the
Kafka client reconnects and the tail continues from its position.

Example::

    sub = MaskSubscriber("ctr-model", "kafka:9092").start()
    # over TLS + SASL, as the daemon connects (password: a string or a callable read at connect):
    sub = MaskSubscriber("ctr-model", "kafka:9093", security=KafkaSecurity(
        "SASL_SSL", "SCRAM-SHA-512", "svc-user", lambda: open("/run/secrets/kafka").read().strip(),
        cafile="/etc/kafka/ca.pem")).start()
    sub.wait_ready(30)
    features = apply(sub.current(), request_features)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import TopicPartition
from kafka.errors import KafkaError

from connectors import mask_message
from connectors.kafka_io import KafkaEndpoint, KafkaSecurity, make_consumer
from connectors.mask_message import MaskMessage, apply, is_newer

__all__ = ["KafkaSecurity", "MaskSubscriber", "apply"]

log = logging.getLogger(__name__)


class MaskSubscriber:
    """Keeps the newest mask of one model id, in a background thread."""

    def __init__(
        self,
        model_id: str,
        bootstrap: str | list[str] = "127.0.0.1:9092",
        *,
        topic: str = "featsieve.masks",
        on_update: Callable[[MaskMessage], None] | None = None,
        endpoint: KafkaEndpoint | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        """``endpoint`` (bootstrap + security) wins over ``bootstrap`` and ``security`` when given."""
        if endpoint is None:
            servers = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
            endpoint = KafkaEndpoint(
                bootstrap=tuple(servers), security=security or KafkaSecurity(), client_id="featsieve-subscriber"
            )
        self.model_id = model_id
        self.topic = topic
        self.endpoint = endpoint
        self.on_update = on_update
        self.rejected = 0  # older or fenced masks seen and not applied
        self.invalid = 0  # records that were not valid mask messages
        self._key = model_id.encode()
        self._current: MaskMessage | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mask-subscriber-{model_id}", daemon=True)

    def start(self) -> MaskSubscriber:
        self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def current(self) -> MaskMessage | None:
        with self._lock:
            return self._current

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _offer(self, raw: bytes, where: str) -> None:
        try:
            msg = mask_message.decode(raw)
        except mask_message.MaskFormatError as exc:
            self.invalid += 1
            log.warning("invalid mask message at %s: %s", where, exc)
            return
        with self._lock:
            if not is_newer(msg, self._current):
                self.rejected += 1
                return
            self._current = msg
        if self.on_update is not None:
            try:
                self.on_update(msg)
            except Exception:  # the callback is user code: log it, keep the subscription alive
                log.exception("on_update callback failed for mask version %d", msg.version)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = make_consumer(self.endpoint, group_id=None, isolation_level="read_committed")
                parts = consumer.partitions_for_topic(self.topic)
                while not parts and not self._stop.is_set():
                    time.sleep(0.5)
                    parts = consumer.partitions_for_topic(self.topic)
                if self._stop.is_set():
                    return
                tps = [TopicPartition(self.topic, p) for p in sorted(parts or ())]
                consumer.assign(tps)
                if self._current is None:
                    consumer.seek_to_beginning(*tps)
                end = consumer.end_offsets(tps)
                while not self._stop.is_set():
                    for tp, records in consumer.poll(timeout_ms=500).items():
                        for rec in records:
                            if rec.key == self._key and rec.value is not None:
                                self._offer(rec.value, f"{tp.topic}:{tp.partition}:{rec.offset}")
                    if not self._ready.is_set() and all(consumer.position(tp) >= end[tp] for tp in tps):
                        self._ready.set()
                    backoff = 0.5
            except KafkaError as exc:
                log.warning("mask subscriber: %s; reconnecting in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                if consumer is not None:
                    try:
                        consumer.close()
                    except KafkaError:
                        pass
