"""Settings: one frozen, validated object built from TOML, ``FEATSIEVE_*`` env and flags.

Precedence (lowest to highest): built-in defaults, the TOML file given with
``--config``, ``FEATSIEVE_<NAME>`` environment variables, command-line flags.
Every setting is declared once in ``SETTINGS``; its env name and flag are
derived from its name, so the operator contract (``FEATSIEVE_BOOTSTRAP`` /
``--bootstrap`` ..., listed by ``featsieve run --help``) cannot drift from the code.

Any invalid value stops start-up with a :class:`ConfigError` whose message
names the setting, where the value came from, and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any


class ConfigError(ValueError):
    """A setting has an invalid value; the message names it and the allowed values."""


class Secret:
    """A string that never shows itself: ``repr``/``str`` print a placeholder."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class Setting:
    """One setting: name (TOML key), type, default, a check and its help text."""

    name: str
    kind: str  # str | int | float | bool | list | secret | choice | table | rate
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem or None

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def flag(self) -> str:
        return flag_name(self.name)


def env_name(name: str) -> str:
    """The environment variable of a setting (or of an old name of one)."""
    return "FEATSIEVE_" + name.upper()


def flag_name(name: str) -> str:
    """The command-line flag of a setting (or of an old name of one)."""
    return "--" + name.replace("_", "-")


def _bootstrap_ok(value: list[str]) -> str | None:
    for server in value:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"{server!r} is not host:port"
    return None if value else "at least one host:port is required"


def _topics_ok(value: list[str]) -> str | None:
    if not value:
        return "at least one topic is required"
    for t in value:
        if not t or len(t) > 249 or not all(c.isalnum() or c in "._-" for c in t):
            return f"{t!r} is not a valid Kafka topic name"
    return None


def _topic_ok(value: str) -> str | None:
    return _topics_ok([value])


def _broker_default_or_positive(value: int) -> str | None:
    return "must be -1 (the broker's default) or 1 or more" if value == 0 else None


# kafka-python client configs that a featsieve setting controls: kafka_client_properties may not
# set them (one place for each value; the security settings also feed featsieve's diagnosis)
OWNED_CLIENT_CONFIGS: dict[str, str] = {
    "bootstrap_servers": "bootstrap",
    "security_protocol": "kafka_security_protocol",
    "sasl_mechanism": "kafka_sasl_mechanism",
    "sasl_plain_username": "kafka_sasl_username",
    "sasl_plain_password": "kafka_sasl_password_file",
    "sasl_oauth_token_provider": "kafka_sasl_oauth_token_file",
    "ssl_cafile": "kafka_ssl_cafile",
    "ssl_certfile": "kafka_ssl_certfile",
    "ssl_keyfile": "kafka_ssl_keyfile",
    "ssl_check_hostname": "kafka_ssl_check_hostname",
    "group_id": "group_id",
    "max_poll_records": "max_poll_records",
    "fetch_max_bytes": "fetch_max_bytes",
    "max_partition_fetch_bytes": "max_partition_fetch_bytes",
    "session_timeout_ms": "group_session_timeout_s",
}


def _client_properties_ok(value: dict[str, Any]) -> str | None:
    # imported here: `featsieve --help` and settings that never touch Kafka need not load kafka-python
    from connectors.kafka_io import ClientPropertyError, client_properties

    try:
        client_properties(value, OWNED_CLIENT_CONFIGS)
    except ClientPropertyError as exc:
        return str(exc)
    return None


S = Setting
SETTINGS: tuple[Setting, ...] = (
    # --- the first settings operators meet (README "Running it") ---
    S("bootstrap", "list", ["127.0.0.1:9092"], "Kafka bootstrap servers, comma-separated host:port", check=_bootstrap_ok),
    S("input_topics", "list", ["ad.impressions", "ad.clicks"], "input topics, comma-separated", check=_topics_ok),
    S("mask_topic", "str", "featsieve.masks", "compacted output topic for masks", check=_topic_ok),
    S("dlq_topic", "str", "featsieve.dlq", "dead-letter topic", check=_topic_ok),
    S("model_id", "str", "default", "model id (the mask message key)", check=lambda v: None if v and len(v) <= 200 else "must be 1..200 characters"),
    S("group_id", "str", "featsieve", "Kafka consumer group", check=lambda v: None if v else "must not be empty"),
    S("state_dir", "str", "./featsieve-state", "directory for checkpoints"),
    S("metrics_port", "int", 9400, "port of /metrics, /healthz, /readyz (0 disables)", minimum=0, maximum=65535),
    S("attribution_window_s", "float", 1800.0, "click attribution window in event-time seconds", minimum=1, maximum=7 * 86400),
    # --- more settings (free to add) ---
    S("metrics_addr", "str", "127.0.0.1", "address the metrics/health server binds to"),
    S("lateness_s", "float", 60.0, "allowed event-time disorder before the watermark passes an event", minimum=0, maximum=86400),
    S("max_future_s", "float", 3600.0, "events more than this far ahead of their shard's event time (its robust frontier, docs/internals.md) are dead-lettered", minimum=1),
    S("max_clock_skew_s", "float", 300.0, "events more than this far ahead of the wall clock are dead-lettered (ts_ahead_of_clock), a shard's first event included; /readyz fails while a watermark is further ahead", minimum=0, maximum=7 * 86400),
    S("watermark_quorum", "int", 32, "a source's event time counts for the watermark only once this many of its events reached it (its k-th largest timestamp): fewer outliers cannot move the watermark", minimum=1, maximum=10_000),
    S("max_pending_impressions", "int", 2_000_000, "bound of the join buffer (oldest emitted early as negatives)", minimum=1000),
    S("max_pending_bytes", "int", 1 << 30, "bound of the join buffer in bytes per shard: the waiting impressions' rows plus a fixed cost each (oldest emitted early as negatives; docs/internals.md)", minimum=1 << 16),
    S("checkpoint_interval_s", "float", 30.0, "wall-clock seconds between checkpoints", minimum=0.1),
    S("checkpoint_interval_events", "int", 500_000, "input events between checkpoints", minimum=1),
    S("keep_snapshots", "int", 3, "checkpoints kept on disk (older ones pruned)", minimum=2, maximum=100),
    S("mask_interval_s", "float", 10.0, "wall-clock seconds between policy evaluations", minimum=0.05),
    S("mask_republish_interval_s", "float", 300.0, "republish the current mask at least this often (old name: heartbeat_interval_s)", minimum=1),
    # above max_partition_fetch_bytes / event size, so that a poll drains the fetched records and
    # kafka-python sends the next fetch before the batch is processed (measured: poll 28 -> 13 us/event)
    S("max_poll_records", "int", 10_000, "records per consumer poll", minimum=1, maximum=1_000_000),
    S("fetch_max_bytes", "int", 52_428_800, "consumer fetch.max.bytes", minimum=1024),
    S("max_partition_fetch_bytes", "int", 4_194_304, "consumer max.partition.fetch.bytes", minimum=1024),
    S("ready_max_lag", "int", 100_000, "/readyz fails while total consumer lag exceeds this many records", minimum=0),
    S("coordination", "choice", "single", "single: this instance owns every partition it reads and writes masks; group: instances share partitions through the stats topic and elect one mask writer", choices=("single", "group")),
    S("stats_topic", "str", "featsieve.stats", "compacted topic of shard states and gate evidence (group mode)", check=_topic_ok),
    S("control_topic", "str", "featsieve.control", "single-partition topic whose owner is the mask writer (group mode)", check=_topic_ok),
    S("instance_id", "str", "", "name of this instance in the stats topic (default: host-pid)"),
    S("writer_session_timeout_s", "float", 10.0, "session timeout of the writer election group: failover time", minimum=6, maximum=300),
    S("group_session_timeout_s", "float", 45.0, "session timeout of the input consumer group: how long a crashed instance's partitions wait before others take them (and a rebalance begun while it died waits)", minimum=6, maximum=300),
    S("log_format", "choice", "text", "log line format", choices=("text", "json")),
    S("log_level", "choice", "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    # streaming MI
    S("mi_max_values", "int", 4096, "distinct values counted exactly per field (beyond: hashed into mi_max_values + mi_tail_buckets buckets)", minimum=16, maximum=1 << 24),
    S("mi_tail_buckets", "int", 1024, "extra hash buckets per field once it has more than mi_max_values values", minimum=1, maximum=1 << 22),
    S("mi_block_s", "float", 7200.0, "event-time length of one MI evidence block (0: no expiry)", minimum=0),
    S("mi_blocks", "int", 12, "number of MI evidence blocks kept (horizon = blocks x block length)", minimum=1, maximum=1000),
    S("pairs_top_n", "int", 8, "score pairs among the top-N fields (0 disables pairs)", minimum=0, maximum=64),
    S("max_pairs", "int", 96, "pairs counted at once online: the top fields' pairs, found interactions, and a slice of all pairs rotating by MI block (docs/estimator.md)", minimum=0, maximum=4096),
    S("pair_budget", "int", 2016, "offline (score --pairs, evaluate): score every pair while there are at most this many (2016: 64 fields)", minimum=0, maximum=1 << 20),
    S("max_fields", "int", 256, "distinct fields tracked (more are counted and ignored)", minimum=1, maximum=4096),
    S("field_admit_min_events", "int", 20, "accepted events a field name must be seen in before it gets a column (rarer names are counted, never tracked; docs/internals.md)", minimum=1, maximum=1_000_000),
    S("field_reclaim_events", "int", 1_000_000, "a tracked field seen in fewer than field_admit_min_events of the last this many accepted events loses its column, evidence and gate state (0: never)", minimum=0),
    # policy
    S("policy_mode", "choice", "budget", "budget: drop fields only while what they are worth, with confidence, fits drop_budget; mi, gates, both, either: threshold votes (docs/policy.md)", choices=("budget", "mi", "gates", "both", "either")),
    S("drop_budget", "float", 0.001, "mode budget: AUC points the dropped fields together may cost, with confidence drop_confidence_z (docs/policy.md)", minimum=0, maximum=1),
    S("drop_confidence_z", "float", 2.0, "mode budget: z of the upper confidence bound of the dropped fields' worth", minimum=0, maximum=10),
    S("drop_hysteresis", "float", 0.2, "mode budget: a kept field is dropped only within (1 - this) of the budget", minimum=0, maximum=0.99),
    S("pair_min_z", "float", 6.0, "a field whose best pair gains this many null sds over its parts is kept (pair_with)"),
    S("gate_min_windows", "int", 2, "completed gate windows before the gates may vote on fields", minimum=1),
    S("gate_max_disagreement", "float", 0.5, "the gates lose their vote when they close this share (or more) of the fields MI proves informative", minimum=0.01, maximum=1),
    S("gate_min_auc", "float", 0.55, "the gate model's own AUC needed before the gates may vote on fields", minimum=0, maximum=1),
    S("enter_threshold", "float", 2e-4, "score (nats) at or above which a dropped field is kept again"),
    S("exit_threshold", "float", 1e-4, "score (nats) below which a kept field is dropped"),
    S("min_examples", "int", 2000, "examples needed before a field may change on its score", minimum=0),
    S("min_positives", "int", 50, "positives needed before a field may change on its score", minimum=0),
    S("min_z", "float", 4.0, "significance (z) needed to keep a field on the strength of its score"),
    S("exit_z", "float", 2.0, "a kept field whose significance (z) falls below this is dropped as not_significant"),
    S("max_changes", "int", 0, "cap on fields changed per mask update (0: no cap)", minimum=0),
    S("protected_fields", "list", [], "fields always kept, comma-separated"),
    S("budget_k", "int", 0, "keep at most K fields (0: no budget)", minimum=0),
    S("drop_redundant", "bool", True, "voting modes: drop the weaker of two fields flagged as near-duplicates (mode budget drops a copy only through the budget)"),
    S("gate_enter", "float", 0.5, "gate_open (the field gate: 1 open, 0 closed; averaged over instances) at or above which the gates vote to keep a field", minimum=0, maximum=1),
    S("gate_exit", "float", 0.2, "gate_open (the field gate: 1 open, 0 closed; averaged over instances) below which the gates vote to drop a field", minimum=0, maximum=1),
    # gates
    S("gates", "bool", True, "train OptFS gates online beside the MI scorer"),
    S("decode_process", "bool", True, "decode and hash records in a worker process beside the poll loop (docs/internals.md; false: in the loop, for one core)"),
    S("gate_max_fields", "int", 64, "fields the gate model covers (columns beyond are scored by MI only)", minimum=1, maximum=1024),
    S("gate_buckets", "int", 16384, "hashed embedding rows per field", minimum=16, maximum=1 << 22),
    S("gate_window", "int", 200_000, "examples per continuation window", minimum=1000),
    S("gate_queue_batches", "int", 64, "bound of the training queue (batches)", minimum=1),
    S("closed_values_max_cardinality", "int", 1000, "list closed values for fields up to this cardinality", minimum=0),
    S("seed", "int", 0, "seed of every random choice", minimum=0),
    # sampling (docs/events.md, "Sampling")
    S("sample_rate", "rate", 1.0, "keep an impression and its clicks when the 64-bit hash of the record key is under this share, in (0, 1]; auto: lower it while consumer lag grows, raise it when lag is gone (docs/events.md)"),
    S("sample_rate_min", "float", 0.01, "sample_rate auto: the lowest rate it may choose", minimum=0.0001, maximum=1),
    # input limits
    S("max_message_bytes", "int", 65536, "larger input messages are dead-lettered", minimum=64),
    S("dlq_max_record_bytes", "int", 1_000_000, "dead letters larger than this (key, value, headers) are truncated, with the original size and sha256 in headers; keep it below the DLQ topic's max.message.bytes", minimum=4096, maximum=100_000_000),
    S("max_fields_per_event", "int", 512, "events with more features are dead-lettered", minimum=1),
    S("max_field_name_len", "int", 128, "longer field names are dead-lettered", minimum=1),
    S("max_value_len", "int", 1024, "longer string values are dead-lettered", minimum=1),
    # Kafka security
    S("kafka_security_protocol", "choice", "PLAINTEXT", "Kafka security protocol", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
    S("kafka_sasl_mechanism", "choice", "PLAIN", "SASL mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")),
    S("kafka_sasl_username", "str", "", "SASL username"),
    S("kafka_sasl_password", "secret", "", "SASL password (prefer kafka_sasl_password_file)"),
    S("kafka_sasl_password_file", "str", "", "file holding the SASL password (mounted secret)"),
    S("kafka_sasl_oauth_token_file", "str", "", "OAUTHBEARER: file holding the access token, read again at every login (whatever refreshes the token rewrites the file)"),
    S("kafka_ssl_cafile", "str", "", "CA bundle for verifying the brokers"),
    S("kafka_ssl_certfile", "str", "", "client certificate (mutual TLS)"),
    S("kafka_ssl_keyfile", "str", "", "client private key (mutual TLS)"),
    S("kafka_ssl_check_hostname", "bool", True, "verify the broker's hostname against its certificate"),
    S("kafka_client_properties", "table", {}, "extra kafka-python client configs for every consumer, producer and admin client featsieve makes (TOML table; env/flag: a JSON object), e.g. {\"client.rack\": \"eu-1a\"}; keys a featsieve setting controls are refused (deploy/README.md, Production clusters)", check=_client_properties_ok),
    # internal topics (mask, dead letters, stats, control) featsieve creates
    S("topic_replication_factor", "int", -1, "replicas of the internal topics featsieve creates (-1: the broker's default.replication.factor)", minimum=-1, maximum=32767, check=_broker_default_or_positive),
    S("topic_min_insync_replicas", "int", -1, "min.insync.replicas of the internal topics featsieve creates (-1: the broker's default)", minimum=-1, maximum=32767, check=_broker_default_or_positive),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

# Renamed settings, old name -> new name. The old spelling keeps working as TOML key, env var and
# flag (hidden from --help), with a deprecation warning; both spellings in one source is an error.
RENAMED: dict[str, str] = {
    # the mask republish interval, not Kafka's consumer heartbeat (heartbeat_interval_ms)
    "heartbeat_interval_s": "mask_republish_interval_s",
}
_OLD_NAMES: dict[str, tuple[str, ...]] = {
    new: tuple(old for old, n in RENAMED.items() if n == new) for new in set(RENAMED.values())
}

# The sections of ``--help`` (and of docs/cli.md): every setting is in exactly one (tests/test_cli.py).
SETTING_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka", ("bootstrap", "input_topics", "mask_topic", "dlq_topic", "dlq_max_record_bytes", "group_id", "group_session_timeout_s",
               "max_poll_records", "fetch_max_bytes", "max_partition_fetch_bytes", "topic_replication_factor",
               "topic_min_insync_replicas", "kafka_client_properties")),
    ("service", ("model_id", "state_dir", "metrics_port", "metrics_addr", "ready_max_lag", "log_format",
                 "log_level", "seed", "decode_process")),
    ("join (event time)", ("attribution_window_s", "lateness_s", "max_future_s", "max_clock_skew_s",
                           "watermark_quorum", "max_pending_impressions", "max_pending_bytes")),
    ("checkpoints and masks", ("checkpoint_interval_s", "checkpoint_interval_events", "keep_snapshots",
                               "mask_interval_s", "mask_republish_interval_s")),
    ("coordination (several instances)", ("coordination", "stats_topic", "control_topic", "instance_id",
                                          "writer_session_timeout_s")),
    ("MI", ("mi_max_values", "mi_tail_buckets", "mi_block_s", "mi_blocks", "pairs_top_n", "max_pairs",
            "pair_budget", "max_fields")),
    ("policy", ("policy_mode", "drop_budget", "drop_confidence_z", "drop_hysteresis", "pair_min_z", "enter_threshold", "exit_threshold", "min_examples", "min_positives", "min_z",
                "exit_z", "max_changes", "protected_fields", "budget_k", "drop_redundant", "gate_enter",
                "gate_exit")),
    ("gates", ("gates", "gate_max_fields", "gate_buckets", "gate_window", "gate_queue_batches",
               "gate_min_windows", "gate_min_auc", "gate_max_disagreement", "closed_values_max_cardinality")),
    ("limits (inputs beyond are dead-lettered)", ("max_message_bytes", "max_fields_per_event",
                                                  "max_field_name_len", "max_value_len")),
    ("fields (which names get a column)", ("field_admit_min_events", "field_reclaim_events")),
    ("sampling", ("sample_rate", "sample_rate_min")),
    ("security", ("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
                  "kafka_sasl_password_file", "kafka_sasl_oauth_token_file", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
                  "kafka_ssl_check_hostname")),
)


def _parse(setting: Setting, raw: Any, origin: str) -> Any:
    """Convert a raw value (TOML value or env/flag string) to the setting's type."""

    def bad(allowed: str) -> ConfigError:
        # a table may hold a secret (a client property such as ssl_password): never echoed
        shown = "***" if setting.kind == "secret" else "(not shown)" if setting.kind == "table" else repr(raw)
        return ConfigError(f"invalid setting {setting.name} ({origin}): {shown}; expected {allowed}")

    kind = setting.kind
    if kind in ("str", "secret"):
        if not isinstance(raw, str):
            raise bad("a string")
        return Secret(raw) if kind == "secret" else raw
    if kind == "choice":
        value = str(raw)
        # choices are matched case-insensitively, stored in their canonical spelling
        for choice in setting.choices:
            if value.lower() == choice.lower():
                return choice
        raise bad("one of " + ", ".join(setting.choices))
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return raw.lower() in ("1", "true", "yes", "on")
        raise bad("true or false")
    if kind == "list":
        if isinstance(raw, str):
            return [p.strip() for p in raw.split(",") if p.strip()]
        if isinstance(raw, list) and all(isinstance(p, str) for p in raw):
            return list(raw)
        raise bad("a comma-separated string or a list of strings")
    if kind == "table":
        if isinstance(raw, str):
            try:
                raw = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError:
                raise bad("a JSON object") from None
        if isinstance(raw, dict):
            return dict(raw)
        raise bad("a TOML table (or, in the environment or a flag, a JSON object)")
    if kind == "rate":  # a share in (0, 1], or "auto"
        if isinstance(raw, str) and raw.strip().lower() == "auto":
            return "auto"
        try:
            rate = float(raw) if not isinstance(raw, bool) else float("nan")
        except (TypeError, ValueError):
            rate = float("nan")
        if not 0 < rate <= 1:  # NaN fails too
            raise bad("a number in (0, 1] or auto")
        return rate
    if kind in ("int", "float"):
        if isinstance(raw, bool):
            raise bad(f"a number ({kind})")
        try:
            number: int | float = int(raw) if kind == "int" else float(raw)
        except (TypeError, ValueError):
            raise bad(f"a number ({kind})") from None
        if kind == "int" and isinstance(raw, float) and raw != int(raw):
            raise bad("a whole number")
        if number != number or number in (float("inf"), float("-inf")):
            raise bad("a finite number")
        lo, hi = setting.minimum, setting.maximum
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            rng = f"{lo if lo is not None else '-inf'} .. {hi if hi is not None else 'inf'}"
            raise bad(f"a number in {rng}")
        return number
    raise AssertionError(f"unknown kind {kind}")


class SettingValues:
    """The type of every setting, for mypy: ``settings.gate_windw`` is a type error.

    One annotation per entry of ``SETTINGS``, of the type ``_parse`` gives its kind
    (tests/test_config_typed.py checks both). Annotations only: this plain class is no
    dataclass, so they are not fields of :class:`Settings` and create no attributes;
    the values are found at run time by ``Settings.__getattr__``.
    """

    bootstrap: list[str]
    input_topics: list[str]
    mask_topic: str
    dlq_topic: str
    model_id: str
    group_id: str
    state_dir: str
    metrics_port: int
    attribution_window_s: float
    metrics_addr: str
    lateness_s: float
    max_future_s: float
    max_clock_skew_s: float
    watermark_quorum: int
    max_pending_impressions: int
    max_pending_bytes: int
    checkpoint_interval_s: float
    checkpoint_interval_events: int
    keep_snapshots: int
    mask_interval_s: float
    mask_republish_interval_s: float
    max_poll_records: int
    fetch_max_bytes: int
    max_partition_fetch_bytes: int
    ready_max_lag: int
    coordination: str
    stats_topic: str
    control_topic: str
    instance_id: str
    writer_session_timeout_s: float
    group_session_timeout_s: float
    log_format: str
    log_level: str
    mi_max_values: int
    mi_tail_buckets: int
    mi_block_s: float
    mi_blocks: int
    pairs_top_n: int
    max_pairs: int
    pair_budget: int
    max_fields: int
    field_admit_min_events: int
    field_reclaim_events: int
    policy_mode: str
    drop_budget: float
    drop_confidence_z: float
    drop_hysteresis: float
    pair_min_z: float
    gate_min_windows: int
    gate_max_disagreement: float
    gate_min_auc: float
    enter_threshold: float
    exit_threshold: float
    min_examples: int
    min_positives: int
    min_z: float
    exit_z: float
    max_changes: int
    protected_fields: list[str]
    budget_k: int
    drop_redundant: bool
    gate_enter: float
    gate_exit: float
    gates: bool
    decode_process: bool
    gate_max_fields: int
    gate_buckets: int
    gate_window: int
    gate_queue_batches: int
    closed_values_max_cardinality: int
    seed: int
    max_message_bytes: int
    dlq_max_record_bytes: int
    max_fields_per_event: int
    max_field_name_len: int
    max_value_len: int
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str
    kafka_sasl_password: Secret
    kafka_sasl_password_file: str
    kafka_sasl_oauth_token_file: str
    kafka_ssl_cafile: str
    kafka_ssl_certfile: str
    kafka_ssl_keyfile: str
    kafka_ssl_check_hostname: bool
    kafka_client_properties: dict[str, Any]
    topic_replication_factor: int
    topic_min_insync_replicas: int
    sample_rate: float | str  # a share in (0, 1], or "auto"
    sample_rate_min: float


@dataclass(frozen=True)
class Settings(SettingValues):
    """The validated settings of one process. Build with :func:`load_settings`.

    ``deprecations`` are warnings about old spellings of settings that were used
    (``RENAMED``); the CLI logs them once logging is set up.
    """

    values: Mapping[str, Any]
    origins: Mapping[str, str]
    deprecations: tuple[str, ...] = ()

    if not TYPE_CHECKING:  # hidden from mypy, which checks names against SettingValues instead

        def __getattr__(self, name: str) -> Any:
            try:  # through __dict__: an instance being unpickled has no values yet
                return self.__dict__["values"][name]
            except KeyError:
                raise AttributeError(name) from None

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some values replaced (validated like flags)."""
        raw = {k: v for k, v in self.values.items()}
        origins = dict(self.origins)
        for name, value in overrides.items():
            setting = SETTINGS_BY_NAME[name]
            raw[name] = _parse(setting, value, "override") if not isinstance(value, Secret) else value
            origins[name] = "override"
        return _validated(raw, origins, self.deprecations)

    def describe(self) -> dict[str, Any]:
        """Settings as printable data; secrets (and client properties that may hold one) appear as ``***``."""
        def shown(value: Any) -> Any:
            if isinstance(value, Secret):
                return "***" if value else value
            if isinstance(value, dict):
                from connectors.kafka_io import secret_property

                return {k: ("***" if secret_property(k) else v) for k, v in value.items()}
            return value

        return {k: shown(v) for k, v in self.values.items()}

    def sasl_password(self) -> Secret:
        """The SASL password, read from its file when ``kafka_sasl_password_file`` is set."""
        path = self.values["kafka_sasl_password_file"]
        if path:
            return Secret(Path(path).read_text(encoding="utf-8").rstrip("\r\n"))
        return self.values["kafka_sasl_password"]


def _validated(values: dict[str, Any], origins: dict[str, str], deprecations: Sequence[str] = ()) -> Settings:
    for name, value in values.items():
        setting = SETTINGS_BY_NAME[name]
        if setting.check is not None:
            problem = setting.check(value)
            if problem:
                raise ConfigError(f"invalid setting {name} ({origins[name]}): {problem}")
    if values["exit_z"] > values["min_z"]:
        raise ConfigError(f"invalid setting exit_z: must be <= min_z ({values['exit_z']} > {values['min_z']})")
    if values["exit_threshold"] > values["enter_threshold"]:
        raise ConfigError(
            "invalid setting exit_threshold: must be <= enter_threshold "
            f"({values['exit_threshold']} > {values['enter_threshold']})"
        )
    horizon = values["mi_block_s"] * values["mi_blocks"]
    if values["mi_block_s"] > 0 and horizon <= values["attribution_window_s"] + values["lateness_s"]:
        raise ConfigError(
            "invalid setting mi_blocks/mi_block_s: the MI horizon (blocks x block length = "
            f"{horizon:g} s) must exceed attribution_window_s + lateness_s "
            f"({values['attribution_window_s'] + values['lateness_s']:g} s)"
        )
    password_file = values["kafka_sasl_password_file"]
    if password_file and not Path(password_file).is_file():
        raise ConfigError(f"invalid setting kafka_sasl_password_file: {password_file} is not a readable file")
    for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
        if values[name] and not Path(values[name]).is_file():
            raise ConfigError(f"invalid setting {name}: {values[name]} is not a readable file")
    rf, isr = values["topic_replication_factor"], values["topic_min_insync_replicas"]
    if rf > 0 and isr > rf:
        raise ConfigError(
            f"invalid setting topic_min_insync_replicas: {isr} exceeds topic_replication_factor ({rf}); "
            "no write to the internal topics could ever succeed"
        )
    sasl = values["kafka_security_protocol"].startswith("SASL")
    if sasl and values["kafka_sasl_mechanism"] == "OAUTHBEARER":
        token_file = values["kafka_sasl_oauth_token_file"]
        if not token_file:
            raise ConfigError("invalid setting kafka_sasl_oauth_token_file: required when kafka_sasl_mechanism is OAUTHBEARER")
        if not Path(token_file).is_file():
            raise ConfigError(f"invalid setting kafka_sasl_oauth_token_file: {token_file} is not a readable file")
    elif sasl and not values["kafka_sasl_username"]:
        raise ConfigError("invalid setting kafka_sasl_username: required when kafka_security_protocol is SASL_*")
    return Settings(values=dict(values), origins=dict(origins), deprecations=tuple(deprecations))


# other spellings of a setting's flag: --bootstrap-server as Kafka's own tools spell it
_ALIASES: dict[str, tuple[str, ...]] = {"bootstrap": ("--bootstrap-server",)}


def add_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add one flag per setting (all by default), in the sections of ``SETTING_GROUPS``.

    Defaults stay None so we know what was given. A boolean setting is ``--name`` /
    ``--no-name``; the older ``--name true|false`` (any spelling the env takes) still works.
    """
    from daemon.cliparse import BoolFlag

    top = parser.add_argument_group("settings (flag > FEATSIEVE_* env > --config TOML > default)")
    top.add_argument("--config", metavar="FILE", help="TOML settings file")
    for title, members in SETTING_GROUPS:
        chosen = [SETTINGS_BY_NAME[n] for n in members if names is None or n in names]
        # never take secrets as flags: they would show in `ps` and shell history
        chosen = [s for s in chosen if s.kind != "secret"]
        if not chosen:
            continue
        group = parser.add_argument_group(f"{title} settings")
        for setting in chosen:
            default = setting.default
            shown = (",".join(default) if isinstance(default, list)
                     else json.dumps(default) if isinstance(default, dict) else default)
            text = f"{setting.help} [{setting.env}; default {shown!s}]"
            # an old name is its own flag (to tell which was given), hidden from --help
            for name in (setting.name, *_OLD_NAMES.get(setting.name, ())):
                flags = (flag_name(name), *_ALIASES.get(name, ()))
                shown_help = text if name == setting.name else argparse.SUPPRESS
                if setting.kind == "bool":
                    group.add_argument(*flags, action=BoolFlag, dest=f"setting_{name}", default=None, help=shown_help)
                    continue
                metavar = {"choice": "{" + ",".join(setting.choices) + "}", "table": "JSON"}.get(
                    setting.kind, setting.kind.upper())
                group.add_argument(*flags, dest=f"setting_{name}", metavar=metavar, default=None, help=shown_help)


def load_settings(
    args: argparse.Namespace | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Build and validate the settings; raise ConfigError naming the first bad one."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {s.name: (Secret(s.default) if s.kind == "secret" else s.default) for s in SETTINGS}
    origins = {s.name: "default" for s in SETTINGS}
    deprecations: list[str] = []
    path = config_path or (getattr(args, "config", None) if args is not None else None)
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"invalid setting --config: file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"invalid setting --config: cannot read {path} ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid setting --config: {path} is not valid TOML ({exc})") from None
        table = data.get("featsieve", data)
        if not isinstance(table, dict):
            raise ConfigError(f"invalid setting --config: [featsieve] in {path} is not a table")
        for key in table:
            if key not in SETTINGS_BY_NAME and key not in RENAMED:
                known = ", ".join(sorted(SETTINGS_BY_NAME))
                raise ConfigError(f"invalid setting {key} in {path}: unknown setting (known: {known})")
        for setting in SETTINGS:
            key = _spelling(setting, table.get, str, f" in {path}", deprecations)
            if key is not None:
                values[setting.name] = _parse(setting, table[key], f"from {path}")
                origins[setting.name] = f"from {path}"
    for setting in SETTINGS:
        name = _spelling(setting, lambda n: env.get(env_name(n)), env_name, "", deprecations)
        if name is not None:
            values[setting.name] = _parse(setting, env[env_name(name)], f"from {env_name(name)}")
            origins[setting.name] = f"from {env_name(name)}"
    if args is not None:
        for setting in SETTINGS:
            name = _spelling(setting, lambda n: getattr(args, f"setting_{n}", None), flag_name, "", deprecations)
            if name is not None:
                raw = getattr(args, f"setting_{name}")
                values[setting.name] = _parse(setting, raw, f"from {flag_name(name)}")
                origins[setting.name] = f"from {flag_name(name)}"
    return _validated(values, origins, deprecations)


def _spelling(setting: Setting, lookup: Callable[[str], Any], spell: Callable[[str], str], where: str,
              deprecations: list[str]) -> str | None:
    """Which name of ``setting`` (its own or an old one, ``RENAMED``) one source gives, or None.

    ``lookup(name)`` is the source's raw value or None and ``spell(name)`` how the source spells
    the name (TOML key, env var, flag). Both names at once is a ConfigError naming both; an old
    name adds a deprecation warning naming the new one.
    """
    given = [n for n in (setting.name, *_OLD_NAMES.get(setting.name, ())) if lookup(n) is not None]
    if len(given) > 1:
        new, old = spell(given[0]), spell(given[1])
        raise ConfigError(f"invalid setting {setting.name}{where}: both {new} and its old name {old} "
                          f"are given; keep only {new}")
    if given and given[0] != setting.name:
        deprecations.append(f"setting {spell(given[0])}{where} is deprecated: it was renamed "
                            f"{spell(setting.name)} (the old name still works)")
    return given[0] if given else None

