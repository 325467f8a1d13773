"""Kafka clients built one way: bootstrap, security and tuning in one place.

Every consumer, producer and admin client of the daemon and of the mask
subscriber comes from :func:`client_options`, so TLS/SASL settings apply to
all of them and secrets are handed to kafka-python only at construction.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaSecurity:
    """Connection security. ``password`` is a callable (read late, e.g. from a mounted file) or a string;
    it never appears in ``repr``."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    username: str = ""
    password: Any = field(default=None, repr=False)  # () -> str
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    check_hostname: bool = True

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in ("SSL", "SASL_SSL"):
            opts["ssl_check_hostname"] = self.check_hostname
            if self.cafile:
                opts["ssl_cafile"] = self.cafile
            if self.certfile:
                opts["ssl_certfile"] = self.certfile
            if self.keyfile:
                opts["ssl_keyfile"] = self.keyfile
        if self.protocol.startswith("SASL"):
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.username
            opts["sasl_plain_password"] = self.password() if callable(self.password) else (self.password or "")
        return opts


@dataclass(frozen=True)
class KafkaEndpoint:
    """Where and how to connect."""

    bootstrap: tuple[str, ...] = ("127.0.0.1:9092",)
    security: KafkaSecurity = KafkaSecurity()
    client_id: str = "featsieve"

    def options(self) -> dict[str, Any]:
        if _diagnosis is not None and self.security.protocol.startswith("SASL"):
            _diagnosis.sasl_in_use = True
        return {
            "bootstrap_servers": list(self.bootstrap),
            "client_id": self.client_id,
            **self.security.options(),
        }


RECV_BYTES = 256 * 1024  # what one socket read may return (kafka-python 3.0 asks for 4 KB)
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _read_available(transport: Any) -> tuple[bytes, Exception | None]:
    """Everything the transport's socket has now, in reads of up to :data:`RECV_BYTES`; the
    error, if any, as kafka-python's own reader reports it (the connection is then closed)."""
    chunks: list[bytes] = []
    recv = transport._sock.recv
    while True:
        try:
            data = recv(RECV_BYTES)
        except _WOULD_BLOCK:
            return b"".join(chunks), None
        except Exception as exc:  # noqa: BLE001 - handed to the library, which closes the connection
            log.warning("kafka socket read failed: %s", exc)
            return b"".join(chunks), KafkaConnectionError(str(exc))
        if not data:
            return b"".join(chunks), KafkaConnectionError("socket disconnected")
        chunks.append(data)


def read_sockets_in_large_chunks() -> bool:
    """Have kafka-python's transports read up to :data:`RECV_BYTES` per call instead of 4 KB.

    kafka-python 3.0 (3.0.12 checked) receives on its I/O thread with ``recv(4096)`` in a loop,
    and every read must take the GIL back from the poll loop, which holds it while it parses and
    joins: a 4 MB fetch was ~1000 such hand-offs, up to the interpreter's switch interval
    (5 ms) each, and the loop sat in ``poll()`` waiting for fetches it had long been sent
    (docs/internals.md). Returns False when the library has no such reader (left as it is).
    """
    try:
        from kafka.net import transport
    except ImportError:
        return False
    patched = False
    for cls in (getattr(transport, "KafkaTCPTransport", None), getattr(transport, "KafkaSSLTransport", None)):
        if cls is not None and hasattr(cls, "_sock_recv") and "_sock_recv" in vars(cls):
            cls._sock_recv = _read_available
            patched = True
    return patched


read_sockets_in_large_chunks()  # for every client this process makes, ours or not


def make_consumer(endpoint: KafkaEndpoint, **overrides: Any) -> KafkaConsumer:
    """A consumer with auto-commit off and earliest reset unless overridden."""
    opts: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        **endpoint.options(),
        **overrides,
    }
    consumer = KafkaConsumer(**opts)
    _keep_metadata_rejoins(consumer)
    return consumer


def _keep_metadata_rejoins(consumer: KafkaConsumer) -> None:
    """Make a rejoin that metadata asked for stay asked for until the join completes.

    kafka-python 3.0 (3.0.12 checked) decides a group leader must rejoin when the topics'
    metadata no longer matches what it assigned from, but keeps no record of that decision: the
    leader's new assignment copies the metadata, so from then on ``need_rejoin()`` says no.
    When that JoinGroup is answered while the caller is not inside ``poll()`` (it was processing a
    batch, or its poll timed out first), no later poll awaits the join: the member stays
    "rebalancing" with its heartbeat off, the broker expels it after the session timeout and
    the consumer never fetches again. New partitions on an input topic, or topics created just
    before the daemon starts, lead there. Java's client records the request (``requestRejoin``),
    and so do we; a client without these internals is left as it is.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not all(
        hasattr(coordinator, name) for name in ("_assignment_snapshot", "_metadata_snapshot", "request_rejoin")
    ):
        return
    need_rejoin = coordinator.need_rejoin

    def need_rejoin_recorded() -> bool:
        snapshot = coordinator._assignment_snapshot
        if snapshot is not None and snapshot != coordinator._metadata_snapshot:
            coordinator.request_rejoin()
        return bool(need_rejoin())

    coordinator.need_rejoin = need_rejoin_recorded


def make_producer(endpoint: KafkaEndpoint, **overrides: Any) -> KafkaProducer:
    """An idempotent producer, acks=all: nothing published is duplicated or lost on retry."""
    opts: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        **endpoint.options(),
        **overrides,
    }
    return KafkaProducer(**opts)


def make_admin(endpoint: KafkaEndpoint, **overrides: Any) -> KafkaAdminClient:
    return KafkaAdminClient(**{**endpoint.options(), **overrides})


def broker_connected(client: Any) -> bool:
    """Whether a consumer, producer or admin client holds at least one live broker connection.

    kafka-python's ``poll`` does not raise while the brokers are gone (it reconnects in the
    background), so readiness asks the client's connection manager instead. Safe to call from
    another thread: it only reads connection flags. Unknown client internals count as connected.
    """
    net = getattr(client, "_client", None)
    manager = getattr(net, "_manager", None)
    conns = getattr(manager, "_conns", None)
    if conns is None:
        return True
    try:
        return any(getattr(conn, "connected", False) for conn in list(conns.values()))
    except RuntimeError:  # the dict changed size while we read it: ask again next time
        return True


# kafka-python's log text for each failure we can name, and what the operator should check
_CAUSES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("authentication failed", ("SaslAuthenticationFailed", "Authentication failed", "invalid credentials"),
     "the broker rejected the SASL credentials: check kafka_sasl_username, the password "
     "(kafka_sasl_password_file) and kafka_sasl_mechanism"),
    ("untrusted broker certificate", ("CERTIFICATE_VERIFY_FAILED",),
     "TLS certificate verification failed: check kafka_ssl_cafile (the CA that signed the broker's "
     "certificate) and kafka_ssl_check_hostname"),
    ("broker unreachable", ("ECONNREFUSED", "Connection refused", "Errno 111", "EHOSTUNREACH", "ENETUNREACH",
                            "Name or service not known", "nodename nor servname"),
     "no broker answers at the bootstrap address: check bootstrap and that Kafka runs"),
    ("TLS handshake failed", ("Handshake failed", "WRONG_VERSION_NUMBER", "SSLError"),
     "the TLS handshake failed: check that the broker's listener speaks kafka_security_protocol"),
    ("SASL mechanism not enabled", ("UnsupportedSaslMechanism",),
     "the broker does not offer kafka_sasl_mechanism on this listener"),
    ("broker unreachable", ("timed out", "Unable to bootstrap", "NoBrokersAvailable"),
     "no broker answered in time at the bootstrap address: check bootstrap and that Kafka runs"),
    ("connection closed by the broker", ("socket disconnected", "Connection lost"),
     "the broker closed the connection: check that kafka_security_protocol matches the listener"),
)


class KafkaDiagnosis(logging.Handler):
    """Collects kafka-python's connection log records and names the cause of the last failure.

    Installed on the ``kafka`` logger (see :func:`install_kafka_diagnosis`), it keeps the client's
    own repetitive per-attempt lines out of the log; the daemon logs one line naming the cause
    (:meth:`cause`) when it cannot connect. Records we cannot classify as connection failures are
    passed on to ``forward`` at most once per message per minute.
    """

    def __init__(self, forward: logging.Handler | None = None, repeat_s: float = 60.0) -> None:
        super().__init__(logging.DEBUG)
        self.forward = forward
        self.repeat_s = repeat_s
        self._seen_cause: dict[int, float] = {}  # index in _CAUSES -> monotonic time last seen
        self._forwarded: dict[str, float] = {}
        self.sasl_in_use = False
        self.connected_once = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken record must not break the client's thread
            return
        for i, (_label, needles, _advice) in enumerate(_CAUSES):
            if any(n in text for n in needles):
                if self.sasl_in_use and not self.connected_once and i == len(_CAUSES) - 1 \
                        and "broker_version=(" in text:
                    # closed after the broker answered ApiVersions (so TLS and protocol are fine)
                    # before we ever got in: kafka-python often sees only the close that follows a
                    # rejected SASL login. (Once connected, a close is a broker restart or a network
                    # fault; a rejected login then still shows as SaslAuthenticationFailedError.)
                    i = 0
                self._seen_cause[i] = time.monotonic()
                return
        if record.name.startswith(("kafka.net", "kafka.conn", "kafka.client")) and record.levelno < logging.ERROR:
            return  # per-attempt connection chatter ("not ready; waiting ...")
        if self.forward is not None and record.levelno >= logging.WARNING:
            key = f"{record.name}:{record.msg}"
            now = time.monotonic()
            if now - self._forwarded.get(key, -1e9) >= self.repeat_s:
                self._forwarded[key] = now
                self.forward.handle(record)

    def cause(self, max_age_s: float = 90.0) -> str | None:
        """'<label> (<advice>)' of the most specific connection failure seen within ``max_age_s``.

        Specific causes outrank generic ones: after an authentication failure the broker also
        closes the socket and the bootstrap times out, but the authentication is the cause.
        """
        now = time.monotonic()
        recent = [i for i, at in self._seen_cause.items() if now - at <= max_age_s]
        if not recent:
            return None
        label, _needles, advice = _CAUSES[min(recent)]
        return f"{label} ({advice})"

    def clear(self) -> None:
        self._seen_cause.clear()


_diagnosis: KafkaDiagnosis | None = None


def install_kafka_diagnosis(forward: logging.Handler | None = None) -> KafkaDiagnosis:
    """Route the ``kafka`` logger through one :class:`KafkaDiagnosis` (idempotent)."""
    global _diagnosis
    logger = logging.getLogger("kafka")
    if _diagnosis is None:
        _diagnosis = KafkaDiagnosis(forward)
    else:
        _diagnosis.forward = forward
    logger.handlers[:] = [_diagnosis]
    logger.propagate = False
    logger.setLevel(logging.INFO)  # connection failures are logged at INFO..ERROR
    return _diagnosis


def connection_cause(exc: BaseException | None = None) -> str:
    """The best description of why Kafka cannot be reached: the diagnosed cause, else the error."""
    cause = _diagnosis.cause() if _diagnosis is not None else None
    if cause is None and exc is not None:
        text = str(exc)
        for label, needles, advice in _CAUSES:
            if any(n in text for n in needles):
                return f"{label} ({advice})"
        return f"{type(exc).__name__}: {text}"
    return cause or "unknown cause"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)


def ensure_topics(admin: KafkaAdminClient, specs: Sequence[TopicSpec]) -> list[str]:
    """Create missing topics; make sure existing ones carry the required configs. Returns created names."""
    existing = set(admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        try:
            admin.create_topics(
                [NewTopic(s.name, s.partitions, 1, topic_configs=dict(s.configs)) for s in missing],
                validate_only=False,
            )
            created = [s.name for s in missing]
        except TopicAlreadyExistsError:
            pass  # a racing instance created it first
    for spec in specs:
        if spec.name in existing and spec.configs:
            resource = ConfigResource(ConfigResourceType.TOPIC, spec.name, configs=dict(spec.configs))
            try:
                admin.alter_configs([resource])
            except KafkaError as exc:  # not fatal: we may lack the ACL; say so
                log.warning("could not set configs on topic %s: %s", spec.name, exc)
    return created


def wait_for_topics(consumer: KafkaConsumer, topics: Iterable[str], timeout_s: float = 30.0) -> dict[str, int]:
    """Wait until the topics' metadata is known; returns partition counts."""
    deadline = time.monotonic() + timeout_s
    wanted = list(topics)
    while True:
        counts = {t: len(consumer.partitions_for_topic(t) or ()) for t in wanted}
        if all(counts.values()):
            return counts
        if time.monotonic() > deadline:
            missing = [t for t, n in counts.items() if not n]
            raise TimeoutError(f"topics not available after {timeout_s:.0f} s: {', '.join(missing)}")
        time.sleep(0.2)


def subscribe(consumer: KafkaConsumer, topics: Sequence[str], listener: Any = None) -> None:
    """Subscribe, then refresh metadata so that the group's first assignment is made from it.

    kafka-python's coordinator takes its picture of the subscribed partitions from metadata
    responses that arrive after ``subscribe``; a leader that joins before one arrives assigns
    from an empty picture and must rejoin when it does: a second rebalance a fraction of a
    second into every start, which throws away the first batches read. If the refresh fails
    (the broker went away), that second rebalance is all it costs.
    """
    consumer.subscribe(list(topics), listener=listener)
    try:
        consumer.topics()
    except KafkaError as exc:
        log.debug("metadata refresh after subscribe failed: %s", exc)


def end_offsets(consumer: KafkaConsumer, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    return dict(consumer.end_offsets(list(partitions))) if partitions else {}


def forget_connection_failures() -> None:
    """Called once connected: older failures no longer explain anything."""
    if _diagnosis is not None:
        _diagnosis.clear()
        _diagnosis.connected_once = True
