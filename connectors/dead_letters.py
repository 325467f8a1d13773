"""The dead-letter queue: bad input is kept, with headers saying why and where from.

Each dead letter carries the original key and value untouched, plus headers
``featsieve.reason`` (bounded vocabulary), ``featsieve.detail`` (names a field,
never a value), ``featsieve.source.topic``, ``.partition``, ``.offset`` and
``featsieve.original.key``. Delivery is confirmed before the daemon commits
offsets past the bad record; while the topic is unavailable the daemon stops
consuming (backpressure) rather than dropping anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka.errors import KafkaError

from connectors.kafka_io import KafkaEndpoint, make_producer

log = logging.getLogger(__name__)


class DeadLettersUndelivered(KafkaError):
    """A stop was requested while dead letters still waited for the broker."""


class DeadLetterQueue:
    """Sends dead letters and waits until the broker has them all."""

    def __init__(self, endpoint: KafkaEndpoint, topic: str, retry_backoff_s: float = 1.0) -> None:
        self.topic = topic
        self._endpoint = endpoint
        self._producer = make_producer(endpoint, linger_ms=20)
        self._pending: list[Any] = []
        self._backoff = retry_backoff_s
        self.sent = 0
        self.blocked_since: float | None = None  # monotonic time since letters wait for the broker
        self.last_error: Exception | None = None

    @staticmethod
    def headers(reason: str, detail: str, topic: str, partition: int, offset: int, key: bytes | None) -> list[tuple[str, bytes]]:
        out = [
            ("featsieve.reason", reason.encode()),
            ("featsieve.detail", detail.encode("utf-8", "replace")[:512]),
            ("featsieve.source.topic", topic.encode()),
            ("featsieve.source.partition", str(partition).encode()),
            ("featsieve.source.offset", str(offset).encode()),
        ]
        if key is not None:
            out.append(("featsieve.original.key", key))
        return out

    def send_all(
        self, letters: Sequence[tuple[Any, str, str, Any]], should_stop: Callable[[], bool] = lambda: False
    ) -> None:
        """Send (record, reason, detail, topic_partition) tuples; block until all are acknowledged.

        While the topic is unavailable this blocks, and so does the poll loop that called it:
        that is the backpressure we want (nothing is dropped, nothing later is consumed).
        A letter still in flight is waited for, never sent again (that would duplicate it once
        the broker is back); only letters whose delivery definitely failed are sent again, by a
        fresh producer (kafka-python's keeps failing a partition after e.g. a record-too-large
        error even once the topic is fixed). Raises :class:`DeadLettersUndelivered` if
        ``should_stop()`` turns true while letters wait: the caller must then not checkpoint.
        """
        waiting = [(letter, self._send(letter)) for letter in letters]
        started = time.monotonic()
        while waiting:
            try:
                self._producer.flush(timeout=30)
            except KafkaError as exc:
                self.last_error = exc
            still: list[tuple[Any, Any]] = []
            failed: list[Any] = []
            for letter, future in waiting:
                try:
                    future.get(timeout=0 if future.is_done else 5)
                except KafkaError as exc:
                    self.last_error = exc
                    (failed if future.is_done else still).append((letter, future))
                    continue
                self.sent += 1
            if failed or still:
                self.blocked_since = self.blocked_since or started
                log.error("dead-letter topic %s unavailable (%s); holding consumption: %d letters in flight, "
                          "%d to send again", self.topic, self.last_error, len(still), len(failed))
                if should_stop():
                    raise DeadLettersUndelivered(
                        f"{len(failed) + len(still)} dead letters not delivered to {self.topic}")
                if failed:
                    time.sleep(self._backoff)
                    if not still:
                        self._renew_producer()
            waiting = still + [(letter, self._send(letter)) for letter, _ in failed]
        if self.blocked_since is not None:
            log.info("dead-letter topic %s available again after %.0f s", self.topic, time.monotonic() - self.blocked_since)
        self.blocked_since = None

    def _renew_producer(self) -> None:
        try:
            self._producer.close(timeout=5)
        except KafkaError as exc:
            log.warning("closing the dead-letter producer: %s", exc)
        self._producer = make_producer(self._endpoint, linger_ms=20)

    def _send(self, letter: tuple[Any, str, str, Any]) -> Any:
        record, reason, detail, tp = letter
        return self._producer.send(
            self.topic,
            key=record.key,
            value=record.value if record.value is not None else b"",
            headers=self.headers(reason, detail, tp.topic, tp.partition, record.offset, record.key),
        )

    def flush(self) -> None:
        self._producer.flush(timeout=30)

    def close(self) -> None:
        self._producer.close(timeout=5)
