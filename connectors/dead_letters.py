"""The dead-letter queue: bad input is kept, with headers saying why and where from.

Each dead letter carries the original key and value, plus headers
``featsieve.reason`` (bounded vocabulary), ``featsieve.detail`` (names a field,
never a value), ``featsieve.source.topic``, ``.partition``, ``.offset`` and
``featsieve.original.key``.

**No record can stop the daemon.** A letter larger than ``max_letter_bytes``
(key, value and headers; the producer's max request is set above it) is
truncated to fit: its value is cut (and its key, when the key alone is over
1 KiB), and headers ``featsieve.truncated`` (``value`` or ``key,value``),
``featsieve.original.size`` and ``featsieve.original.sha256`` (of the whole
value; ``featsieve.original.key.size`` and ``.key.sha256`` for a cut key)
say what was there. The source offset is always in the headers, so the
whole record can be read again from the input topic while it is retained.

**Delivery never holds the daemon's state.** :meth:`DeadLetterQueue.add` only
builds letters in memory (the run loop calls it under its state lock);
:meth:`DeadLetterQueue.deliver` sends them and waits, bounded, for the
broker, and is called without the lock. Every send error is caught (a send
that cannot get the topic's metadata, a record too large for the topic, a
broker gone): the letters stay queued, in order, and the next attempt comes
after a backoff that doubles up to ``max_backoff_s``. While letters are
queued the daemon consumes nothing more and writes no checkpoint, so no
offset is committed past an undelivered dead letter.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError

from connectors.kafka_io import KafkaEndpoint, make_producer

log = logging.getLogger(__name__)

DEFAULT_MAX_LETTER_BYTES = 1_000_000
KEY_KEPT_BYTES = 1024  # a truncated letter keeps at most this much of an oversized key
RECORD_OVERHEAD = 64  # bytes a record costs beyond its key, value and headers (varints, attributes)
REQUEST_HEADROOM = 16_384  # the producer's max request is this much above the letter bound
SEND_BLOCK_MS = 5_000  # how long send() may wait for the topic's metadata (a deleted topic: for ever)
FLUSH_TIMEOUT_S = 5.0


class DeadLettersUndelivered(KafkaError):
    """A stop was requested while dead letters still waited for the broker."""


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as it will be produced."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def size(self) -> int:
        return letter_size(self.key, self.value, self.headers)


def letter_size(key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    """An upper bound of the bytes a record with these parts takes in a batch."""
    return (len(key) if key is not None else 0) + len(value) + RECORD_OVERHEAD + sum(
        len(k.encode()) + len(v) + 10 for k, v in headers
    )


def make_letter(
    key: bytes | None, value: bytes | None, reason: str, detail: str, topic: str, partition: int, offset: int,
    max_letter_bytes: int = DEFAULT_MAX_LETTER_BYTES,
) -> Letter:
    """The dead letter of one record, truncated to ``max_letter_bytes`` (see the module docstring)."""
    value = value if value is not None else b""
    headers = DeadLetterQueue.headers(reason, detail, topic, partition, offset, key)
    if letter_size(key, value, headers) <= max_letter_bytes:
        return Letter(key, value, headers)
    cut = "value"
    extra = [
        ("featsieve.original.size", str(len(value)).encode()),
        ("featsieve.original.sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    if key is not None and len(key) > KEY_KEPT_BYTES:
        cut = "key,value"
        extra += [
            ("featsieve.original.key.size", str(len(key)).encode()),
            ("featsieve.original.key.sha256", hashlib.sha256(key).hexdigest().encode()),
        ]
        key = key[:KEY_KEPT_BYTES]
        headers = DeadLetterQueue.headers(reason, detail, topic, partition, offset, key)
    headers = [*headers, ("featsieve.truncated", cut.encode()), *extra]
    room = max_letter_bytes - letter_size(key, b"", headers)
    return Letter(key, value[: max(room, 0)], headers)


class DeadLetterQueue:
    """Queues dead letters in memory and delivers them in order, retrying every failure."""

    def __init__(
        self,
        endpoint: KafkaEndpoint,
        topic: str,
        max_letter_bytes: int = DEFAULT_MAX_LETTER_BYTES,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self.max_letter_bytes = int(max_letter_bytes)
        self._endpoint = endpoint
        self._first_backoff = retry_backoff_s
        self._max_backoff = max_backoff_s
        self._backoff = retry_backoff_s
        self._clock = clock
        self._producer = self._make_producer()
        self._outbox: deque[Letter] = deque()  # built, not sent yet (or to send again), oldest first
        self._in_flight: list[tuple[Letter, Any]] = []  # sent, acknowledgement not yet seen
        self._next_attempt = 0.0
        self._last_log = -1e18
        self.sent = 0
        self.truncated = 0
        self.failures = 0  # failed delivery attempts
        self.blocked_since: float | None = None  # monotonic time since letters wait for the broker
        self.last_error: Exception | None = None

    def _make_producer(self) -> Any:
        return make_producer(
            self._endpoint, linger_ms=20, max_request_size=self.max_letter_bytes + REQUEST_HEADROOM,
            max_block_ms=SEND_BLOCK_MS,
        )

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

    @property
    def pending(self) -> int:
        """Letters not yet acknowledged by the broker."""
        return len(self._outbox) + len(self._in_flight)

    def add(self, letters: Sequence[tuple[Any, str, str, Any]]) -> None:
        """Queue (record, reason, detail, topic_partition) tuples. No I/O: safe under a lock."""
        for record, reason, detail, tp in letters:
            letter = make_letter(record.key, record.value, reason, detail, tp.topic, tp.partition,
                                 record.offset, self.max_letter_bytes)
            if len(letter.value) < len(record.value or b"") or letter.key != record.key:
                self.truncated += 1
                log.warning("dead letter of %s:%d@%d truncated to %d bytes (was %d bytes)", tp.topic,
                            tp.partition, record.offset, letter.size,
                            len(record.value or b"") + len(record.key or b""))
            self._outbox.append(letter)

    def deliver(self, timeout_s: float = FLUSH_TIMEOUT_S, force: bool = False) -> bool:
        """Send what is queued and wait (at most about ``timeout_s``, plus up to ``SEND_BLOCK_MS``
        for metadata) for the broker. True when nothing is pending. Never raises a Kafka error.

        After a failure the next attempt waits for the backoff (``force`` skips the wait). A
        letter still in flight is waited for, never sent again (that would duplicate it once the
        broker is back); letters whose delivery definitely failed go back to the front of the
        queue and are sent again, by a fresh producer (kafka-python's keeps failing a partition
        after e.g. a record-too-large error even once the topic is fixed)."""
        if not self.pending:
            self._available()
            return True
        now = self._clock()
        if not force and now < self._next_attempt:
            return False
        error: Exception | None = None
        while self._outbox:
            letter = self._outbox[0]
            try:
                future = self._producer.send(self.topic, key=letter.key, value=letter.value, headers=letter.headers)
            except KafkaError as exc:  # no metadata for the topic (deleted, auto-create off), too large ...
                error = exc
                break
            self._outbox.popleft()
            self._in_flight.append((letter, future))
        if self._in_flight:
            try:
                self._producer.flush(timeout=timeout_s)
            except KafkaError as exc:
                error = error or exc
        still: list[tuple[Letter, Any]] = []
        failed: list[Letter] = []
        for letter, future in self._in_flight:
            if not future.is_done:
                still.append((letter, future))
            elif future.failed():
                failed.append(letter)
                error = error or future.exception
            else:
                self.sent += 1
        self._in_flight = still
        if failed:
            self._outbox.extendleft(reversed(failed))  # in their order, before the rest
            if not still:
                self._renew_producer()
        if not self.pending:
            self._available()
            return True
        self._blocked(error)
        return False

    def _blocked(self, error: Exception | None) -> None:
        now = self._clock()
        self.failures += 1
        if error is not None:
            self.last_error = error
        if self.blocked_since is None:
            self.blocked_since = now
        self._next_attempt = now + self._backoff
        if now - self._last_log >= 10 or self._backoff == self._first_backoff:
            self._last_log = now
            log.error("dead-letter topic %s unavailable (%s); holding consumption: %d letters waiting, "
                      "next attempt in %.1f s", self.topic, self.reason(), self.pending, self._backoff)
        self._backoff = min(self._backoff * 2, self._max_backoff)

    def _available(self) -> None:
        if self.blocked_since is not None:
            log.info("dead-letter topic %s available again after %.0f s", self.topic, self._clock() - self.blocked_since)
        self.blocked_since = None
        self._backoff = self._first_backoff
        self._next_attempt = 0.0

    def reason(self) -> str:
        """Why letters wait, for logs and /readyz (the error's class and text)."""
        exc = self.last_error
        if exc is None:
            return "not acknowledged yet"
        name, text = type(exc).__name__, str(exc)
        if text.startswith(name):  # kafka-python's errors name themselves
            text = text[len(name):].lstrip(": ")
        return name + (f": {text[:200]}" if text else "")

    def _renew_producer(self) -> None:
        try:
            self._producer.close(timeout=5)
        except KafkaError as exc:
            log.warning("closing the dead-letter producer: %s", exc)
        self._producer = self._make_producer()

    def close(self) -> None:
        try:
            self._producer.close(timeout=5)
        except KafkaError as exc:
            log.warning("closing the dead-letter producer: %s", exc)
