"""Kafka clients built one way: bootstrap, security, client properties and tuning in one place.

Every consumer, producer and admin client of the daemon and of the mask
subscriber comes from :func:`make_consumer`, :func:`make_producer` or
:func:`make_admin` with a :class:`KafkaEndpoint`, so TLS/SASL settings and the
operator's client properties apply to all of them and secrets are handed to
kafka-python only at construction. The clients are kafka-python's as shipped: the daemon's own
clients get featsieve's adaptations of its internals from connectors/kafka_compat.py, explicitly.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import (
    Cancelled,
    InvalidConfigurationError,
    InvalidReplicationFactorError,
    KafkaConfigurationError,
    KafkaError,
    PolicyViolationError,
    TopicAlreadyExistsError,
)
from kafka.net.sasl.oauth import AbstractTokenProvider

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
    oauth_token_file: str = ""  # OAUTHBEARER: the file holding the access token

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
            if self.sasl_mechanism == "OAUTHBEARER":
                opts["sasl_oauth_token_provider"] = FileTokenProvider(self.oauth_token_file)
            else:
                opts["sasl_plain_username"] = self.username
                opts["sasl_plain_password"] = self.password() if callable(self.password) else (self.password or "")
        return opts


class FileTokenProvider(AbstractTokenProvider):
    """OAUTHBEARER access tokens from a file, read afresh at every login.

    Whatever obtains and refreshes the token (a sidecar, a Vault or cloud agent, a cron job)
    writes it to the file; every new broker connection logs in with the token the file holds
    then, so a refreshed token is used without a restart. The token is never logged.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def token(self) -> str:
        with open(self.path, encoding="utf-8") as f:
            value = f.read().strip()
        if not value:
            raise KafkaConfigurationError(f"the OAUTHBEARER token file {self.path} is empty")
        return value

    def __repr__(self) -> str:
        return f"FileTokenProvider({self.path!r})"


@dataclass(frozen=True)
class KafkaEndpoint:
    """Where and how to connect.

    ``properties`` are extra kafka-python client configs (see :func:`client_properties`), as
    sorted ``(key, value)`` pairs so that the endpoint stays hashable; each client gets those its
    class knows (``client_rack`` only reaches consumers, ``linger_ms`` only producers).
    """

    bootstrap: tuple[str, ...] = ("127.0.0.1:9092",)
    security: KafkaSecurity = KafkaSecurity()
    client_id: str = "featsieve"
    properties: tuple[tuple[str, Any], ...] = ()

    def options(self) -> dict[str, Any]:
        if _diagnosis is not None and self.security.protocol.startswith("SASL"):
            _diagnosis.sasl_in_use = True
        return {
            "bootstrap_servers": list(self.bootstrap),
            "client_id": self.client_id,
            **self.security.options(),
        }

    def options_for(self, client_class: type) -> dict[str, Any]:
        """:meth:`options` with the properties that ``client_class`` accepts laid over them."""
        known = client_class.DEFAULT_CONFIG  # type: ignore[attr-defined]
        return {**self.options(), **{k: v for k, v in self.properties if k in known}}


CLIENT_CLASSES: tuple[type, ...] = (KafkaConsumer, KafkaProducer, KafkaAdminClient)

# Client configs whose value is a Python object (a class, a callable, a token provider, an SSL
# context): a settings file cannot express them.
_OBJECT_CONFIGS = frozenset({
    "sasl_oauth_token_provider", "ssl_context", "selector", "kafka_client", "partitioner",
    "key_serializer", "value_serializer", "key_deserializer", "value_deserializer",
    "metric_reporters", "socket_options", "partition_assignment_strategy", "default_offset_commit_callback",
})

# Client configs featsieve sets itself because its guarantees depend on them.
_FIXED_CONFIGS: Mapping[str, str] = {
    "acks": "the producers need acks=all for what they publish to survive a broker's loss",
    "enable_idempotence": "the producers are idempotent so that retries never duplicate",
    "retries": "idempotent producers retry until delivery_timeout_ms",
    "max_in_flight_requests_per_connection": "idempotent producers keep their order only with at most 5",
    "transactional_id": "the mask writer's transactional id fences older writers of the model",
    "enable_auto_commit": "offsets are committed with each checkpoint, never automatically",
    "auto_offset_reset": "a partition without a checkpoint is read from its beginning",
    "isolation_level": "mask readers read committed records only",
    "group_instance_id": "one static member id would be shared by every instance of the deployment",
    "consumer_timeout_ms": "featsieve's readers poll with their own timeouts",
    "api_version": "the clients ask the broker which versions it speaks (pinning is for brokers before 0.10)",
}


class ClientPropertyError(ValueError):
    """A client property is unknown, not allowed, or of the wrong type; the message names it."""


def _normalise_key(key: str) -> str:
    """Kafka's own spelling (``client.rack``) or kafka-python's (``client_rack``) -> kafka-python's."""
    return key.strip().replace(".", "_").replace("-", "_")


def client_properties(table: Mapping[str, Any], owned: Mapping[str, str] | None = None) -> tuple[tuple[str, Any], ...]:
    """Validate operator-given client properties; return them as sorted kafka-python config pairs.

    A key is a kafka-python client config (``client_rack``), or the same in Kafka's dotted
    spelling (``client.rack``). It must be known to at least one of :data:`CLIENT_CLASSES`
    (their ``DEFAULT_CONFIG``), so a misspelt key is an error naming it, not a client
    construction failure at connect time. Refused, each with its reason: keys in ``owned``
    (config -> the setting that controls it), keys featsieve fixes for its guarantees, and
    keys whose value must be a Python object. Values are strings, numbers or booleans, of the
    type the client expects. Raises :class:`ClientPropertyError`.
    """
    owned = owned or {}
    known: dict[str, Any] = {}
    for cls in CLIENT_CLASSES:
        for name, default in cls.DEFAULT_CONFIG.items():  # type: ignore[attr-defined]
            known.setdefault(name, default)
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        if not isinstance(raw_key, str) or not raw_key.strip():
            raise ClientPropertyError(f"{raw_key!r} is not a property name")
        key = _normalise_key(raw_key)
        shown = raw_key if raw_key == key else f"{raw_key} ({key})"
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            spelt = close[0].replace("_", ".") if close and "." in raw_key else close[0] if close else ""
            hint = f" (did you mean {spelt}?)" if close else ""
            raise ClientPropertyError(
                f"{raw_key!r} is not a kafka-python consumer, producer or admin client config{hint}")
        if key in owned:
            raise ClientPropertyError(f"{shown} is set by the setting {owned[key]}; use that instead")
        if key in _FIXED_CONFIGS:
            raise ClientPropertyError(f"{shown} is fixed by featsieve: {_FIXED_CONFIGS[key]}")
        if key in _OBJECT_CONFIGS:
            raise ClientPropertyError(f"{shown} takes a Python object, which settings cannot express")
        if key in out:
            raise ClientPropertyError(f"{key} is given twice (in two spellings); give it once")
        out[key] = _checked_value(shown, value, known[key])
    return tuple(sorted(out.items()))


def secret_property(key: str) -> bool:
    """Whether a client property's value is a secret (``ssl_password``, a token ...): never shown."""
    return any(word in key.lower() for word in ("password", "secret", "token", "credential"))


def _checked_value(shown: str, value: Any, default: Any) -> Any:
    """``value`` if it has the type kafka-python's default for the key has (numbers widen to float)."""
    def bad(expected: str) -> ClientPropertyError:
        text = "***" if secret_property(shown) else repr(value)
        return ClientPropertyError(f"{shown} = {text}: expected {expected}")

    if not isinstance(value, str | int | float | bool):
        raise bad("a string, a number or a boolean")
    if secret_property(shown) and not isinstance(value, str):
        raise bad("a string")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
    elif isinstance(default, str) and not isinstance(value, str):
        raise bad("a string")
    return value


# Every make_* lays its options over each other in this order, later winning: featsieve's defaults
# for the kind of client, the endpoint (bootstrap, client id, security), the endpoint's client
# properties, then what the caller needs for its own job (the stats producer's max_request_size,
# a reader's group_id=None ...).


def make_consumer(endpoint: KafkaEndpoint, **overrides: Any) -> KafkaConsumer:
    """A consumer with auto-commit off and earliest reset unless overridden."""
    opts: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        **endpoint.options_for(KafkaConsumer),
        **overrides,
    }
    return _construct(KafkaConsumer, endpoint, opts)


def make_producer(endpoint: KafkaEndpoint, **overrides: Any) -> KafkaProducer:
    """An idempotent producer, acks=all: nothing published is duplicated or lost on retry."""
    opts: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        **endpoint.options_for(KafkaProducer),
        **overrides,
    }
    return _construct(KafkaProducer, endpoint, opts)


def make_admin(endpoint: KafkaEndpoint, **overrides: Any) -> KafkaAdminClient:
    return _construct(KafkaAdminClient, endpoint, {**endpoint.options_for(KafkaAdminClient), **overrides})


def _construct(client_class: Any, endpoint: KafkaEndpoint, opts: dict[str, Any]) -> Any:
    """``client_class(**opts)``; a value kafka-python refuses while it builds the client (an unknown
    compression codec, say), when client properties were given, is a :class:`ClientPropertyError`:
    :func:`client_properties` checks keys and types only."""
    try:
        return client_class(**opts)
    except (ValueError, TypeError) as exc:
        if not endpoint.properties:
            raise
        raise ClientPropertyError(f"kafka-python's {client_class.__name__} refused its configuration: {exc} "
                                  f"(the client properties given: {', '.join(k for k, _ in endpoint.properties)})") from None


# kafka-python's log text for each failure we can name, and what the operator should check
_CAUSES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("authentication failed", ("SaslAuthenticationFailed", "Authentication failed", "invalid credentials"),
     "the broker rejected the SASL credentials: check kafka_sasl_username, the password "
     "(kafka_sasl_password_file) and kafka_sasl_mechanism (OAUTHBEARER: the token in "
     "kafka_sasl_oauth_token_file and its expiry)"),
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
        if _cancelled_by_close(record):
            return
        # Handler.handle() ignores the handler's level (a logger checks it): check it here
        if self.forward is not None and record.levelno >= max(logging.WARNING, self.forward.level):
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


def _cancelled_by_close(record: logging.LogRecord) -> bool:
    """Whether the record reports a request that failed with kafka-python's ``Cancelled``.

    The client fails its in-flight requests with ``Cancelled`` only when it closes the connection
    or task itself: closing a consumer while its periodic metadata refresh is in flight logs
    ``ERROR kafka.cluster: Metadata refresh: failed Cancelled`` although nothing went wrong (every
    ``featsieve masks --get`` did). Such records are dropped; real failures carry their own error.
    """
    args = record.args if isinstance(record.args, tuple) else (record.args,)
    return any(isinstance(a, Cancelled) for a in args)


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
    """A topic featsieve needs: created with ``configs`` when missing.

    ``required`` names the configs (keys of ``configs``) an existing topic must already satisfy,
    because featsieve's guarantees depend on them (see :func:`config_satisfies`). ``written``:
    featsieve produces to it with acks=all, so an existing topic needs at least
    ``min.insync.replicas`` replicas."""

    name: str
    partitions: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    written: bool = True


class TopicConfigError(RuntimeError):
    """A topic cannot be created as asked (``config`` None), or an existing one lacks ``config``."""

    def __init__(self, message: str, topic: str, config: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic
        self.config = config


BROKER_DEFAULT = -1  # replication factor / min.insync.replicas: let the broker decide (KIP-464)


def config_satisfies(name: str, actual: str, needed: str) -> bool:
    """Whether a topic config value ``actual`` gives what ``needed`` asks for.

    ``cleanup.policy`` is a list (``compact,delete`` compacts too); a number needs at least the
    value asked for (``max.message.bytes``); anything else must be equal.
    """
    if name == "cleanup.policy":
        return needed in {p.strip() for p in actual.split(",")}
    if actual.strip().isdigit() and needed.isdigit():
        return int(actual) >= int(needed)
    return actual == needed


def ensure_topics(
    admin: KafkaAdminClient,
    specs: Sequence[TopicSpec],
    replication_factor: int = BROKER_DEFAULT,
    min_insync_replicas: int = BROKER_DEFAULT,
) -> list[str]:
    """Create missing topics; check that existing ones have their required configs. Returns created names.

    New topics get ``replication_factor`` replicas (:data:`BROKER_DEFAULT`: the broker's
    ``default.replication.factor``) and, when given, ``min.insync.replicas``. Existing topics are
    never altered: a topic an operator made is theirs; one lacking a required config raises
    :class:`TopicConfigError` naming the topic, the config and the command that fixes it. A
    creation the broker refuses (more replicas than brokers, an invalid config, a policy) raises
    :class:`TopicConfigError` with the broker's reason.
    """
    existing = set(admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        extra = {} if min_insync_replicas == BROKER_DEFAULT else {"min.insync.replicas": str(min_insync_replicas)}
        new = [NewTopic(s.name, s.partitions, replication_factor, topic_configs={**s.configs, **extra})
               for s in missing]
        try:
            admin.create_topics(new, validate_only=False)
            created = [s.name for s in missing]
        except TopicAlreadyExistsError:
            pass  # a racing instance created it first; checked below like any existing topic
        except (InvalidReplicationFactorError, InvalidConfigurationError, PolicyViolationError) as exc:
            names = ", ".join(s.name for s in missing)
            raise TopicConfigError(f"the broker refused to create {names} (replication factor "
                                   f"{_rf_text(replication_factor)}{_isr_text(min_insync_replicas)}): "
                                   f"{_broker_reason(exc)}", missing[0].name) from None
    check_topic_configs(admin, [s for s in specs if s.name not in created and (s.required or s.written)],
                        replication_factor)
    return created


def _rf_text(rf: int) -> str:
    return "the broker's default" if rf == BROKER_DEFAULT else str(rf)


def _isr_text(isr: int) -> str:
    return "" if isr == BROKER_DEFAULT else f", min.insync.replicas {isr}"


def _broker_reason(exc: KafkaError) -> str:
    """The broker's error message from a kafka-python admin error, else the error's name."""
    text = str(exc)
    marker = "error_message='"
    if marker in text:
        return text.split(marker, 1)[1].split("'", 1)[0]
    return type(exc).__name__


def check_topic_configs(
    admin: KafkaAdminClient, specs: Sequence[TopicSpec], replication_factor: int = BROKER_DEFAULT
) -> None:
    """Raise :class:`TopicConfigError` for the first existing topic lacking a required config, or
    written by featsieve with fewer replicas than its ``min.insync.replicas`` (no acks=all write
    could succeed: a topic made with one replica before the cluster required two, say).

    Read with DescribeConfigs and Metadata. A topic whose configs the broker does not return
    (no DescribeConfigs permission) cannot be checked: that is logged as a warning, not fatal;
    so is a topic whose replica count differs from an explicit ``replication_factor``
    (featsieve does not move replicas).
    """
    if not specs:
        return
    isr = "min.insync.replicas"
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name,
                                configs=dict.fromkeys((*s.required, *((isr,) if s.written else ()))))
                 for s in specs]
    described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    replicas = {t["name"]: min((len(p["replica_nodes"]) for p in t.get("partitions") or ()), default=0)
                for t in admin.describe_topics([s.name for s in specs]) if not t.get("error_code")}
    for spec in specs:
        got = described.get(spec.name) or {}
        count = replicas.get(spec.name, 0)
        if count and replication_factor != BROKER_DEFAULT and count != replication_factor:
            log.warning("topic %s exists with %d replicas, not the %d topic_replication_factor asks for; "
                        "featsieve does not move replicas (kafka-reassign-partitions.sh does)",
                        spec.name, count, replication_factor)
        min_isr = (got.get(isr) or {}).get("value")
        if spec.written and count and min_isr is not None and str(min_isr).isdigit() and count < int(min_isr):
            raise TopicConfigError(
                f"topic {spec.name} has {count} replica(s) but {isr}={min_isr}: no acks=all write to it can "
                f"succeed; add replicas (kafka-reassign-partitions.sh) or lower its {isr} with "
                f"kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics "
                f"--entity-name {spec.name} --add-config {isr}={count}", spec.name, isr)
        for name in spec.required:
            needed = spec.configs[name]
            entry = got.get(name)
            if entry is None or entry.get("value") is None:
                log.warning("could not read %s of topic %s (does featsieve's principal have DescribeConfigs "
                            "on it?); it is not checked", name, spec.name)
                continue
            actual = str(entry["value"])
            if not config_satisfies(name, actual, needed):
                want = "contain compact" if name == "cleanup.policy" else f"be at least {needed}"
                raise TopicConfigError(
                    f"topic {spec.name} has {name}={actual}, but its {name} must {want}; set it with "
                    f"kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics "
                    f"--entity-name {spec.name} --add-config {name}={needed}", spec.name, name)


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
