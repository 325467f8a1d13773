"""MaskSubscriber: keeps the newest mask of one model from the mask topic, in a background thread.

Example::

    from featsieve_client import MaskSubscriber, apply

    def changed(old, new, diff):
        log.info("mask of %s changed: %s", new.model_id, "; ".join(diff.lines()))

    with MaskSubscriber("ctr-model", "kafka:9092", on_change=changed) as sub:
        ready = sub.wait_ready(30)
        if not ready:
            log.warning("serving without a mask for now: %s", ready.reason)
        ...
        features = apply(sub.current(), request_features)

Over TLS and SASL, pass kafka-python's own consumer options (a callable is called at every
connection, so a mounted secret is read late)::

    MaskSubscriber("ctr-model", "kafka:9093", kafka_options=lambda: {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc", "sasl_plain_password": open("/run/secrets/kafka").read().strip(),
        "ssl_cafile": "/etc/kafka/ca.pem"})

The subscriber reads the topic from its beginning to its end offset before it reports ready,
then tails it. It takes a message only when :func:`featsieve_client.mask.is_newer` says so,
so a replayed old record never goes backwards and a recreated topic (a new writer
incarnation) is followed. Broker outages are survived: it reconnects with backoff and
continues from the offsets it had read. Nothing in kafka-python is patched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featsieve_client.mask import MaskDiff, MaskFormatError, MaskMessage, changes, decode, is_newer

if TYPE_CHECKING:  # kafka-python is imported when a subscriber starts: `apply` alone never loads it
    from kafka import KafkaConsumer, TopicPartition

__all__ = ["MaskSubscriber", "OnChange", "OnUpdate", "Readiness"]

log = logging.getLogger(__name__)

OnChange = Callable[[MaskMessage | None, MaskMessage, MaskDiff], None]
"""``on_change(old, new, diff)``: called when a decision changes (see :class:`MaskSubscriber`)."""
OnUpdate = Callable[[MaskMessage], None]
"""``on_update(mask)``: called for every mask taken, heartbeats included."""

_FORBIDDEN_OPTIONS = ("bootstrap_servers", "group_id", "enable_auto_commit", "isolation_level")


@dataclass(frozen=True)
class Readiness:
    """Whether the subscriber has read the mask topic to its end; true when ready.

    ``reason`` says why not (the broker is unreachable, the topic does not exist yet, it is
    still reading, it was stopped), or ``"ready"``.
    """

    ready: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ready


class MaskSubscriber:
    """Keeps the newest mask of one model id, read from the mask topic in a background thread.

    ``on_change(old, new, diff)`` is called (on the subscriber's thread) when a decision
    changes: once when the topic has been read to its end and a mask was found (``old`` None),
    then for every newer mask that keeps, drops, adds or removes a field or changes its closed
    values. A heartbeat re-publication that changes no decision does not call it. ``on_update(mask)``
    is called for every mask taken, heartbeats and the masks read while catching up included.
    Exceptions raised by callbacks are logged and do not stop the subscription.

    ``kafka_options`` are extra keyword arguments for kafka-python's ``KafkaConsumer``
    (security, timeouts, ``client_rack``...), or a callable returning them at each connection.
    ``connect_timeout_s`` bounds each connection attempt.
    """

    def __init__(
        self,
        model_id: str,
        bootstrap: str | list[str] = "127.0.0.1:9092",
        *,
        topic: str = "featsieve.masks",
        on_change: OnChange | None = None,
        on_update: OnUpdate | None = None,
        kafka_options: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        client_id: str = "featsieve-subscriber",
        connect_timeout_s: float = 5.0,
    ) -> None:
        """Configure; nothing connects until :meth:`start` (or ``with``)."""
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
        self.model_id = model_id
        self.topic = topic
        self.bootstrap = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
        self.on_change = on_change
        self.on_update = on_update
        self.kafka_options = kafka_options
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self.rejected = 0
        """Masks seen and not taken (older, or a duplicate of the one held)."""
        self.invalid = 0
        """Records under this model's key that were not valid mask messages (logged, skipped)."""
        self.incarnation_changes = 0
        """Times a mask of another writer incarnation replaced the one held."""
        self._key = model_id.encode()
        self._current: MaskMessage | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._status = "not started"
        self._attempts = 0
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name=f"mask-subscriber-{model_id}", daemon=True)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> MaskSubscriber:
        """Start the background thread (once; later calls do nothing) and return self."""
        with self._lock:
            if not self._thread.is_alive() and not self._stop.is_set() and self._thread.ident is None:
                self._status = f"connecting to {','.join(self.bootstrap)}"
                self._thread.start()
        return self

    def __enter__(self) -> MaskSubscriber:
        """``with MaskSubscriber(...) as sub:`` starts it..."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """...and stops it at the end of the block."""
        self.stop()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop reading; returns within ``timeout`` seconds, broker up or not.

        True when the thread has ended. False when it is still inside a Kafka call that has
        not returned yet (it is a daemon thread, ends when that call returns, and never
        calls back after ``stop``).
        """
        self._stop.set()
        self._set_status("stopped")
        if self._thread.ident is not None:
            self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ queries
    @property
    def ready(self) -> bool:
        """True once the topic has been read to its end (stays true through broker outages)."""
        return self._ready.is_set()

    def readiness(self) -> Readiness:
        """Whether it is ready now, and if not, why."""
        if self._ready.is_set():
            return Readiness(True, "ready")
        with self._lock:
            return Readiness(False, self._status)

    def wait_ready(self, timeout: float | None = None) -> Readiness:
        """Wait up to ``timeout`` seconds (None: for ever) for readiness; the result is true when
        ready and says why not otherwise (``if not sub.wait_ready(30): print(...reason)``)."""
        self._ready.wait(timeout)
        return self.readiness()

    def current(self) -> MaskMessage | None:
        """The newest mask taken, or None when none was found (yet)."""
        with self._lock:
            return self._current

    # ---------------------------------------------------------------- internals
    def _set_status(self, text: str) -> None:
        with self._lock:
            if not self._stop.is_set() or text == "stopped":
                self._status = text

    def _options(self) -> dict[str, Any]:
        extra = self.kafka_options() if callable(self.kafka_options) else (self.kafka_options or {})
        bad = [k for k in _FORBIDDEN_OPTIONS if k in extra]
        if bad:
            raise ValueError(f"kafka_options may not set {', '.join(bad)}: the subscriber sets them")
        return {
            "client_id": self.client_id,
            "auto_offset_reset": "earliest",
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
            **extra,
            "bootstrap_servers": self.bootstrap,
            "group_id": None,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",  # an aborted (fenced) write is never seen
        }

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        if self._stop.is_set():
            return
        try:
            callback(*args)
        except Exception:  # user code: log it, keep the subscription alive
            log.exception("mask subscriber callback %r failed", callback)

    def _offer(self, raw: bytes, where: str) -> None:
        try:
            msg = decode(raw)
        except MaskFormatError as exc:
            self.invalid += 1
            log.warning("invalid mask message at %s: %s", where, exc)
            return
        if msg.model_id != self.model_id:
            self.invalid += 1
            log.warning("mask at %s names model %r under key %r: skipped", where, msg.model_id, self.model_id)
            return
        with self._lock:
            old = self._current
            if not is_newer(msg, old):
                self.rejected += 1
                return
            self._current = msg
        if old is not None and msg.incarnation != old.incarnation and msg.incarnation is not None \
                and old.incarnation is not None:
            self.incarnation_changes += 1
            log.warning("mask writer of model %s has a new incarnation %s (was %s): following it from "
                        "epoch %d version %d", self.model_id, msg.incarnation, old.incarnation,
                        msg.epoch, msg.version)
        if self.on_update is not None:
            self._call(self.on_update, msg)
        if self._ready.is_set() and self.on_change is not None:
            delta = changes(old, msg)
            if delta:
                self._call(self.on_change, old, msg, delta)

    def _caught_up(self) -> None:
        self._ready.set()
        self._set_status("ready")
        current = self.current()
        if current is not None and self.on_change is not None:
            self._call(self.on_change, None, current, changes(None, current))

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        backoff = 0.5
        servers = ",".join(self.bootstrap)
        while not self._stop.is_set():
            consumer: KafkaConsumer | None = None
            try:
                if self._attempts:
                    self._set_status(f"{self._last_error}; connecting to {servers} again")
                else:
                    self._set_status(f"connecting to {servers}: no broker has answered yet")
                self._attempts += 1
                consumer = KafkaConsumer(**self._options())
                parts = consumer.partitions_for_topic(self.topic)
                while not parts and not self._stop.is_set():
                    self._set_status(f"topic {self.topic} does not exist (yet) on {servers}")
                    self._stop.wait(0.5)
                    parts = consumer.partitions_for_topic(self.topic)
                if self._stop.is_set():
                    return
                tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                consumer.assign(tps)
                for tp in tps:  # continue where we were after a reconnect
                    if tp in self._positions:
                        consumer.seek(tp, self._positions[tp])
                    else:
                        consumer.seek_to_beginning(tp)
                end = consumer.end_offsets(tps, timeout_ms=int(max(self.connect_timeout_s, 5.0) * 1000))
                self._tail(consumer, tps, end)
                backoff = 0.5
            except (KafkaError, OSError) as exc:
                if self._stop.is_set():
                    return
                self._last_error = f"cannot read {self.topic} from {servers}: {type(exc).__name__}: {exc}"
                self._set_status(self._last_error)
                log.warning("mask subscriber: %s; reconnecting in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                if consumer is not None:
                    try:
                        consumer.close(timeout_ms=1000)
                    except (KafkaError, OSError) as exc:
                        log.debug("mask subscriber: close failed: %s", exc)

    def _tail(self, consumer: KafkaConsumer, tps: list[TopicPartition], end: Mapping[TopicPartition, int]) -> None:
        while not self._stop.is_set():
            for tp, records in consumer.poll(timeout_ms=500).items():
                for rec in records:
                    if self._stop.is_set():
                        return
                    if rec.key == self._key and rec.value is not None:
                        self._offer(rec.value, f"{tp.topic}:{tp.partition}:{rec.offset}")
                    self._positions[tp] = rec.offset + 1
            if not self._ready.is_set():
                behind = sum(max(0, end[tp] - consumer.position(tp)) for tp in tps)
                if behind == 0:
                    self._caught_up()
                else:
                    self._set_status(f"reading {self.topic} to its end: {behind} offsets to go")
