"""Prometheus metrics of the daemon, on a registry passed in.

Only start-up code chooses the registry; tests build their own. Values that
are cheap to read at scrape time (lag, ages, state size) are read then, in
``collect()``, instead of being pushed from the hot loop; counters and the
batch histogram are updated once per batch.

Every labelled counter starts at 0 for each label value the daemon knows in
advance (:data:`KNOWN_LABELS`), so ``rate()`` and ``increase()`` see the first
increment and alerts on them have a series to evaluate from start-up. The
``*_timestamp_seconds`` gauges are 0 until the first publish or checkpoint,
so "older than N seconds" alerts fire for a daemon that never got that far;
the ``*_age_seconds`` gauges (kept for existing dashboards) are NaN then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from connectors.codec import REASONS
from connectors.join import REJECT_REASON

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Label values known before the first event: each (counter attribute, label tuple) is created at 0.
KNOWN_LABELS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "events": (
        ("impression", "ok"), ("click", "ok"), ("labeled", "ok"),
        ("click", "orphan"), ("click", "duplicate"), ("any", "dead_letter"),
    ),
    "examples": (("positive",), ("negative",)),
    "dead_letters": tuple((r,) for r in sorted(REASONS | {REJECT_REASON})),
    "mask_publishes": (("change",), ("heartbeat",)),
    "rebalances": (("assigned",), ("revoked",), ("lost",)),
    "field_columns": (("admitted",), ("reclaimed",)),
    # the class name of any KafkaError is a label value too; these two are what the brokers going
    # away gives (the connection watch; a connect attempt that times out), which the Kafka-errors
    # alert should see from the first one
    "kafka_errors": (("Disconnected",), ("KafkaTimeoutError",)),
}


def featsieve_version() -> str:
    """The installed package's version; ``unknown`` when run from a tree that is not installed."""
    try:
        return package_version("featsieve")
    except PackageNotFoundError:
        return "unknown"


class DaemonMetrics:
    """Every metric the daemon exports. Names start with ``featsieve_``; labels stay bounded."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.events = Counter("featsieve_events", "Input events by type and outcome", ["type", "outcome"], registry=r)
        self.examples = Counter("featsieve_examples", "Labelled examples produced by the join", ["label"], registry=r)
        self.batch_seconds = Histogram(
            "featsieve_batch_duration_seconds", "Time to process one polled batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.orphans = Counter("featsieve_orphan_clicks", "Clicks whose impression is unknown or expired", registry=r)
        self.duplicate_clicks = Counter("featsieve_duplicate_clicks", "Repeated clicks counted once", registry=r)
        self.dead_letters = Counter("featsieve_dead_letters", "Events sent to the dead-letter topic", ["reason"], registry=r)
        self.checkpoint_seconds = Histogram(
            "featsieve_checkpoint_duration_seconds", "Duration of a checkpoint", buckets=LATENCY_BUCKETS, registry=r
        )
        self.checkpoints = Counter("featsieve_checkpoints", "Checkpoints written", registry=r)
        self.state_bytes = Gauge("featsieve_state_bytes", "Size of the last snapshot", registry=r)
        self.mask_version = Gauge("featsieve_mask_version", "Version of the last published mask", registry=r)
        self.mask_epoch = Gauge("featsieve_mask_epoch", "Writer epoch of this instance", registry=r)
        self.mask_publishes = Counter("featsieve_mask_publishes", "Mask messages published", ["trigger"], registry=r)
        self.fields = Gauge("featsieve_fields", "Fields by decision in the current mask", ["decision"], registry=r)
        self.field_score = Gauge("featsieve_field_score", "Cardinality-corrected MI (nats)", ["field"], registry=r)
        self.field_z = Gauge("featsieve_field_z", "Significance (z) of the field's MI", ["field"], registry=r)
        self.field_gate_open = Gauge("featsieve_field_gate_open", "Field gate decision: 1 open, 0 closed (a fraction: instances disagree, weighted by examples)", ["field"], registry=r)
        self.field_keep = Gauge("featsieve_field_keep", "1 if the field is kept in the current mask", ["field"], registry=r)
        self.gate_examples = Counter("featsieve_gate_examples", "Examples the gate model trained on", registry=r)
        self.gate_skipped = Counter(
            "featsieve_gate_skipped_examples", "Examples left out of gate training by subsampling", registry=r
        )
        self.sample_rate = Gauge("featsieve_sample_rate", "Share of record keys read (key-hash sampling, sample_rate)", registry=r)
        self.sampled_out = Counter(
            "featsieve_sampled_out_records", "Input records left out by key-hash sampling (never decoded)", registry=r
        )
        self.gate_sampling_rate = Gauge("featsieve_gate_sampling_rate", "Share of examples sent to gate training", registry=r)
        self.online_auc = Gauge("featsieve_online_auc", "Prequential ROC AUC", ["model"], registry=r)
        self.online_logloss = Gauge("featsieve_online_logloss", "Prequential log loss", ["model"], registry=r)
        self.rebalances = Counter("featsieve_rebalances", "Partition assignments, revocations and losses", ["kind"], registry=r)
        self.decode_worker_failures = Counter(
            "featsieve_decode_worker_failures", "Times the decode worker process failed (decoding then runs in the poll loop)", registry=r
        )
        self.field_columns = Counter("featsieve_field_columns", "Field columns given (admitted) and reclaimed",
                                     ["change"], registry=r)
        self.untracked_fields = Gauge("featsieve_untracked_fields", "Fields seen beyond max_fields", registry=r)
        self.ready = Gauge("featsieve_ready", "1 when /readyz would answer 200", registry=r)
        self.mask_writer = Gauge("featsieve_mask_writer", "1 while this instance is the elected mask writer", registry=r)
        self.stats_bytes = Counter("featsieve_stats_bytes", "Bytes of shard states and gate evidence published to the stats topic (group mode)", registry=r)
        self.kafka_errors = Counter("featsieve_kafka_errors", "Kafka client errors by class", ["error"], registry=r)
        self.build_info = Gauge("featsieve_build_info", "Always 1; the featsieve version as a label", ["version"], registry=r)
        self.build_info.labels(featsieve_version()).set(1)
        self.instance_info = Gauge(
            "featsieve_instance_info",
            "Always 1; the model id, consumer group and coordination mode of this instance",
            ["model", "group", "coordination"],
            registry=r,
        )
        for attr, values in KNOWN_LABELS.items():
            metric = getattr(self, attr)
            for labels in values:
                metric.labels(*labels)

    def set_instance(self, *, model: str, group: str, coordination: str) -> None:
        """Label ``featsieve_instance_info`` with what this instance works for: alerts join other
        series on it (e.g. the mask writers of a model in group mode)."""
        self.instance_info.labels(model, group, coordination).set(1)

    def attach(self, collector: Collector) -> None:
        self.registry.register(collector)


class LiveGauges(Collector):
    """Gauges read at scrape time from callables owned by the daemon."""

    def __init__(
        self,
        lag: Callable[[], dict[tuple[str, int], tuple[int, float]]],
        join_buffer: Callable[[], int],
        checkpoint_time: Callable[[], float | None],
        mask_time: Callable[[], float | None],
        *,
        group: str,
        mask_publish_timestamp: Callable[[], float | None],
        clock: Callable[[], float] = time.time,
        watermark: Callable[[], int | None] = lambda: None,
        dead_letters_waiting: Callable[[], int] = lambda: 0,
    ) -> None:
        """``checkpoint_time``/``mask_time`` feed the ages (NaN while None); ``mask_publish_timestamp``
        is this instance's last publish even after it stopped being the writer (0 while None)."""
        self._lag, self._join, self._ckpt, self._mask, self._clock = lag, join_buffer, checkpoint_time, mask_time, clock
        self._watermark, self._dlq_waiting = watermark, dead_letters_waiting
        self._group, self._mask_ts = group, mask_publish_timestamp

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # labelled like kafka-lag-exporter's series (group, topic, partition), so dashboards built for it fit
        labels = ["group", "topic", "partition"]
        records = GaugeMetricFamily("featsieve_consumer_lag_records", "Records behind the log end", labels=labels)
        seconds = GaugeMetricFamily(
            "featsieve_consumer_lag_seconds", "Event-time behind the newest record seen", labels=labels
        )
        for (topic, partition), (lag_records, lag_seconds) in sorted(self._lag().items()):
            records.add_metric([self._group, topic, str(partition)], lag_records)
            seconds.add_metric([self._group, topic, str(partition)], lag_seconds)
        yield records
        yield seconds
        yield GaugeMetricFamily("featsieve_join_buffer_impressions", "Impressions waiting for a click or expiry", value=self._join())
        now = self._clock()
        wm = self._watermark()
        yield GaugeMetricFamily(
            "featsieve_event_time_lag_seconds",
            "Wall clock minus the event-time watermark (the lowest of the shards held); negative: the watermark is ahead",
            value=(now - wm / 1000.0) if wm is not None else float("nan"),
        )
        yield GaugeMetricFamily(
            "featsieve_dead_letters_waiting", "Dead letters not yet acknowledged by the broker (consumption is paused while > 0)",
            value=self._dlq_waiting(),
        )
        for name, getter, text in (
            ("featsieve_checkpoint_age_seconds", self._ckpt, "Seconds since the last checkpoint"),
            ("featsieve_mask_age_seconds", self._mask, "Seconds since the last mask publish"),
        ):
            last = getter()
            yield GaugeMetricFamily(name, text + " (NaN before the first)", value=(now - last) if last is not None else float("nan"))
        for name, getter, text in (
            ("featsieve_last_checkpoint_timestamp_seconds", self._ckpt, "Unix time of the last checkpoint"),
            ("featsieve_last_mask_publish_timestamp_seconds", self._mask_ts,
             "Unix time of this instance's last mask publish"),
        ):
            last = getter()
            yield GaugeMetricFamily(name, text + " (0 before the first)", value=last if last is not None else 0.0)
