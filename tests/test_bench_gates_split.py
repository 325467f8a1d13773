"""``featsieve bench gates-split``: the labelled stream, the Kafka-like split and the suite's output."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from kafka.partitioner.default import DefaultPartitioner

from connectors.codec import Impression
from connectors.join import JoinBuffer
from daemon.tools.bench_gates_split import SEED, SIZES, kafka_partition, split_by_instance
from daemon.tools.synthetic import GeneratorConfig, generate, ground_truth, labelled_examples


def test_labelled_examples_label_as_the_join_does() -> None:
    # one impression a second: the join emits every negative whose window the watermark passed
    cfg = GeneratorConfig(seed=3, n_impressions=4000, event_rate=1.0)
    stream = labelled_examples(cfg)
    join = JoinBuffer(window_ms=int(cfg.attribution_window_s * 1000))
    events = list(generate(cfg))
    emitted = []
    for start in range(0, len(events), 500):
        emitted += join.process(events[start : start + 500], ("t", 0)).examples
        emitted += join.expire()
    wm = join.watermark_ms
    assert wm is not None
    closed = int(wm - cfg.attribution_window_s * 1000)
    assert np.all(np.diff(stream.ts) >= 0) and len(stream) == cfg.n_impressions
    mine = Counter((int(t), int(y)) for t, y in zip(stream.ts, stream.labels, strict=True) if t < closed)
    theirs = Counter((ex.ts, ex.label) for ex in emitted if ex.ts < closed)
    assert sum(y for _, y in mine.elements()) > 20  # positives, late and duplicate clicks occur
    assert mine == theirs
    first = next(e for e in events if isinstance(e, Impression))
    assert stream.ids[0] == first.id and stream.rows[0] == tuple(first.features[k] for k in stream.names)


class _SixPartitions:
    """The part of kafka-python's ClusterMetadata its producer partitioner reads: one topic, 6 partitions."""

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(6))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(6))


def test_split_follows_the_kafka_partitioner_and_keeps_order() -> None:
    ids = [f"7.{i:x}" for i in range(3000)]
    partitioner = DefaultPartitioner()
    parts = [kafka_partition(i) for i in ids]
    assert parts == [partitioner.partition("t", i, i.encode(), None, None, _SixPartitions()) for i in ids]
    assert set(parts) == set(range(6))
    for n in (1, 2, 3):
        shards = split_by_instance(ids, n)
        assert len(shards) == n
        joined = np.sort(np.concatenate(shards))
        np.testing.assert_array_equal(joined, np.arange(len(ids)))  # every example once
        for k, rows in enumerate(shards):
            assert np.all(np.diff(rows) > 0)  # input (event-time) order within a shard
            assert {parts[i] % n for i in rows.tolist()} == {k}
    with pytest.raises(ValueError, match="instances"):
        split_by_instance(ids, 7)


@pytest.mark.slow
def test_tiny_suite_shape_and_its_single_instance_equals_a_direct_run() -> None:
    import torch

    from daemon.config import load_settings
    from daemon.tools.bench import SUITES
    from models.gates import GateConfig, GatedCTR
    from models.interning import Interner

    settings = load_settings(env={})
    result = SUITES["gates-split"](settings, "tiny")
    impressions, window = SIZES["tiny"]
    assert result["suite"] == "gates-split" and result["examples"] == impressions
    assert [r["instances"] for r in result["runs"]] == [1, 2, 3]
    for r in result["runs"]:
        assert r["examples"] == impressions == sum(p["examples"] for p in r["per_instance"])
        assert len(r["per_instance"]) == r["instances"]
        assert all(p["windows"] >= 2 for p in r["per_instance"])
        assert 0.0 <= r["f1"] <= 1.0 and r["train_examples_per_s"] > 0
        assert set(r["metrics"]) >= {"auc_gated", "auc_ungated", "logloss_gated", "logloss_ungated"}
        assert set(r["vs_single"]) >= {"f1_diff", "f1_ratio", "auc_gated_diff", "logloss_gated_ratio"}
    # every run is compared with the single instance, recomputed here from the runs themselves
    base = result["runs"][0]
    for r in result["runs"]:
        vs, m, b = r["vs_single"], r["metrics"], base["metrics"]
        assert vs["f1_diff"] == r["f1"] - base["f1"]
        assert vs["f1_ratio"] == (r["f1"] / base["f1"] if base["f1"] else None)
        assert vs["held_f1_diff"] == r["held"]["f1"] - base["held"]["f1"]
        assert vs["auc_gated_diff"] == m["auc_gated"] - b["auc_gated"]
        assert vs["logloss_gated_ratio"] == m["logloss_gated"] / b["logloss_gated"]
    assert result["ratio"] == result["runs"][-1]["vs_single"]["f1_ratio"]

    # the baseline, computed without the suite: the whole stream in order through one model
    torch.set_num_threads(1)
    cfg = GeneratorConfig(seed=SEED, n_impressions=impressions)
    stream, truth = labelled_examples(cfg), ground_truth(cfg)
    interner = Interner()
    hashes = interner.encode([dict(zip(stream.names, row, strict=True)) for row in stream.rows]).hashes
    model = GatedCTR(GateConfig(window=window), seed=0)
    for i in range(0, len(stream), 1024):
        model.learn(hashes[i : i + 1024], stream.labels[i : i + 1024])
    kept = {interner.fields[c] for c, share in model.field_gates().items() if share >= 0.5}
    informative, useless = set(truth["informative"]), set(truth["noise"]) | set(truth["id_like"])
    tp, fp, fn = len(kept & informative), len(kept & useless), len(informative - kept)
    single = result["runs"][0]
    assert single["f1"] == 2 * tp / (2 * tp + fp + fn)
    assert single["metrics"]["auc_gated"] == model.metrics()["auc_gated"]
