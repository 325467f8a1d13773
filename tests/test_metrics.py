"""What /metrics shows before anything happened: build info, zeroed counters, timestamps at 0."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connectors.codec import REASONS
from connectors.join import REJECT_REASON
from daemon.metrics import DaemonMetrics, LiveGauges, featsieve_version


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _fresh(last_checkpoint: float | None = None, last_publish: float | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    metrics.set_instance(model="m", group="g", coordination="group")
    metrics.attach(LiveGauges(lambda: {("t.clicks", 3): (7, 1.5)}, lambda: 0, lambda: last_checkpoint,
                              lambda: last_publish, group="g", mask_publish_timestamp=lambda: last_publish,
                              clock=lambda: 1000.0))
    return registry


def test_build_and_instance_info_are_one() -> None:
    samples = _samples(_fresh())
    assert samples[("featsieve_build_info", (("version", featsieve_version()),))] == 1.0
    assert featsieve_version() != "unknown"  # the package is installed in the test venv
    info = (("coordination", "group"), ("group", "g"), ("model", "m"))
    assert samples[("featsieve_instance_info", info)] == 1.0


def test_labelled_counters_start_at_zero_for_every_known_value() -> None:
    samples = _samples(_fresh())
    for reason in REASONS | {REJECT_REASON}:
        assert samples[("featsieve_dead_letters_total", (("reason", reason),))] == 0.0, reason
    for kind in ("impression", "click", "labeled"):
        assert samples[("featsieve_events_total", (("outcome", "ok"), ("type", kind)))] == 0.0
    for outcome in ("orphan", "duplicate"):
        assert samples[("featsieve_events_total", (("outcome", outcome), ("type", "click")))] == 0.0
    assert samples[("featsieve_events_total", (("outcome", "dead_letter"), ("type", "any")))] == 0.0
    for label, name in (("positive", "examples"), ("negative", "examples"), ("change", "mask_publishes"),
                        ("heartbeat", "mask_publishes"), ("assigned", "rebalances"), ("revoked", "rebalances"),
                        ("lost", "rebalances")):
        key = {"examples": "label", "mask_publishes": "trigger", "rebalances": "kind"}[name]
        assert samples[(f"featsieve_{name}_total", ((key, label),))] == 0.0
    for error in ("Disconnected", "KafkaTimeoutError"):
        assert samples[("featsieve_kafka_errors_total", (("error", error),))] == 0.0
    assert samples[("featsieve_decode_worker_failures_total", ())] == 0.0
    assert samples[("featsieve_orphan_clicks_total", ())] == 0.0


def test_timestamps_are_zero_and_ages_nan_before_the_first() -> None:
    samples = _samples(_fresh())
    assert samples[("featsieve_last_checkpoint_timestamp_seconds", ())] == 0.0
    assert samples[("featsieve_last_mask_publish_timestamp_seconds", ())] == 0.0
    assert math.isnan(samples[("featsieve_checkpoint_age_seconds", ())])
    assert math.isnan(samples[("featsieve_mask_age_seconds", ())])
    samples = _samples(_fresh(last_checkpoint=990.0, last_publish=940.0))
    assert samples[("featsieve_last_checkpoint_timestamp_seconds", ())] == 990.0
    assert samples[("featsieve_last_mask_publish_timestamp_seconds", ())] == 940.0
    assert samples[("featsieve_checkpoint_age_seconds", ())] == 10.0
    assert samples[("featsieve_mask_age_seconds", ())] == 60.0


def test_lag_is_labelled_by_group_topic_and_partition() -> None:
    samples = _samples(_fresh())
    labels = (("group", "g"), ("partition", "3"), ("topic", "t.clicks"))
    assert samples[("featsieve_consumer_lag_records", labels)] == 7.0
    assert samples[("featsieve_consumer_lag_seconds", labels)] == 1.5
