"""The OptFS-style gate model: closing noise, keeping signal, reopening after drift, exact snapshots."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models.gates import GateConfig, GatedCTR, GateSnapshotError

torch.set_num_threads(1)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
CFG = GateConfig(buckets_per_field=1 << 10, window=50_000)


def _hash(ids: np.ndarray) -> np.ndarray:
    cols = np.arange(ids.shape[1], dtype=np.uint64) * np.uint64(1_000_003)
    return (ids.astype(np.uint64) + np.uint64(7)) * GOLDEN + cols


def _data(rng: np.random.Generator, n: int, drifted: bool) -> tuple[np.ndarray, np.ndarray]:
    """8 fields of 10 values: 0 and 1 informative (1 only before the drift), 2 only after it, 3-7 noise.

    Field 0: values 0-2 raise the click rate, 3-5 lower it, 6-9 sit at the field's average.
    """
    ids = rng.integers(0, 10, (n, 8))
    logit = -3 + 1.2 * (ids[:, 0] < 3) - 1.2 * ((ids[:, 0] >= 3) & (ids[:, 0] < 6))
    logit = logit + (0.0 if drifted else 0.8) * (ids[:, 1] % 2)
    if drifted:
        logit = logit + 1.0 * (ids[:, 2] < 4)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return _hash(ids), y


def _run(model: GatedCTR, rng: np.random.Generator, windows: int, drifted: bool) -> list[dict[int, float]]:
    shares = []
    for _ in range(windows):
        for _ in range(100):
            h, y = _data(rng, 500, drifted)
            model.learn(h, y)
        shares.append(model.field_gates())
    return shares


@pytest.fixture(scope="module")
def trained() -> tuple[GatedCTR, list[dict[int, float]], list[dict[int, float]]]:
    rng = np.random.default_rng(0)
    model = GatedCTR(CFG, seed=1)
    before = _run(model, rng, 3, drifted=False)
    after = _run(model, rng, 2, drifted=True)
    return model, before, after


def test_noise_fields_close_and_informative_ones_stay_open(trained) -> None:
    _, before, _ = trained
    last = before[-1]
    assert last[0] >= 0.5 and last[1] >= 0.4  # field 1: half its values carry the signal
    # value-level gates are a noisy search: most pure-noise fields close in every window, none stays wide open
    closed = [n for n in (3, 4, 5, 6, 7) if last[n] < 0.2]
    assert len(closed) >= 4 and max(last[n] for n in (3, 4, 5, 6, 7)) < 0.5, last


def test_drift_reopens_a_field_that_gains_signal_and_closes_one_that_loses_it(trained) -> None:
    _, before, after = trained
    assert before[-1][1] >= 0.4
    assert max(a[2] for a in after) >= 0.5, after  # within two windows of the drift
    assert min(a[1] for a in after) < 0.2, after


def test_closed_values_name_the_values_without_signal(trained) -> None:
    model, _, _ = trained
    closed = set(model.closed_values(0))
    values = {v: int(_hash(np.full((1, 8), v))[0, 0]) for v in range(10)}
    # a closed value is treated as the field's average value: 6-9 lose nothing by it, 0-5 would
    average = {values[v] for v in range(6, 10)}
    assert closed and closed <= average, (closed, average)


def test_report_and_metrics(trained) -> None:
    model, _, _ = trained
    report = model.report()
    assert set(report) == {"field_gates", "value_gates", "closed_values", "metrics"}
    m = report["metrics"]
    assert m["auc_ungated"] > 0.6 and m["auc_gated"] > 0.6
    assert m["windows"] == 5 and m["examples"] == 250_000


def test_no_evidence_before_the_first_window() -> None:
    model = GatedCTR(CFG, seed=0)
    h, y = _data(np.random.default_rng(1), 1000, False)
    model.learn(h, y)
    assert model.field_gates() == {} and model.closed_values(0) == []


def test_snapshot_restore_continues_identically() -> None:
    rng = np.random.default_rng(3)
    batches = [_data(rng, 500, i > 60) for i in range(140)]
    cfg = GateConfig(buckets_per_field=1 << 9, window=20_000)
    straight = GatedCTR(cfg, seed=5)
    for h, y in batches:
        straight.learn(h, y)
    first = GatedCTR(cfg, seed=5)
    for h, y in batches[:70]:
        first.learn(h, y)
    resumed = GatedCTR.restore(pickle.loads(pickle.dumps(first.snapshot())))
    for h, y in batches[70:]:
        resumed.learn(h, y)
    probe, _ = _data(np.random.default_rng(9), 200, True)
    np.testing.assert_array_equal(straight.predict(probe), resumed.predict(probe))
    np.testing.assert_array_equal(straight.predict(probe, gated=False), resumed.predict(probe, gated=False))
    assert straight.field_gates() == resumed.field_gates()
    assert straight.metrics() == resumed.metrics()


def test_columns_may_grow_and_extra_columns_are_ignored() -> None:
    model = GatedCTR(GateConfig(max_fields=4, buckets_per_field=64, window=1000), seed=0)
    rng = np.random.default_rng(2)
    model.learn(_hash(rng.integers(0, 5, (300, 2))), (rng.random(300) < 0.1).astype(np.int8))
    model.learn(_hash(rng.integers(0, 5, (300, 6))), (rng.random(300) < 0.1).astype(np.int8))
    model.learn(_hash(rng.integers(0, 5, (600, 6))), (rng.random(600) < 0.1).astype(np.int8))
    assert model.columns == 4 and set(model.field_gates()) <= {0, 1, 2, 3}


@pytest.mark.parametrize(("field", "value"), [("window", 10), ("t_max", 0.5), ("penalty", -1.0)])
def test_bad_config_names_the_setting(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        GateConfig(**{field: value})


def test_a_snapshot_of_another_format_is_refused_by_name() -> None:
    snap = GatedCTR(GateConfig(max_fields=2, buckets_per_field=16, window=1000), seed=0).snapshot()
    snap["format"] = 1
    with pytest.raises(GateSnapshotError, match="format 1"):
        GatedCTR.restore(snap)


def test_the_worker_starts_fresh_when_the_snapshot_is_of_another_format() -> None:
    from daemon.gate_worker import GateTrainer

    cfg = GateConfig(max_fields=2, buckets_per_field=16, window=1000)
    snap = GatedCTR(cfg, seed=0).snapshot()
    snap["format"] = 1

    def factory(snapshot: dict | None = None) -> GatedCTR:
        return GatedCTR.restore(snapshot) if snapshot is not None else GatedCTR(cfg, seed=0)

    trainer = GateTrainer(factory).start(snap)
    try:
        assert trainer.error is None and trainer.restore_skipped and "format 1" in trainer.restore_skipped
        assert trainer.call(lambda m: m.examples) == 0
    finally:
        trainer.stop()


def _default_stream(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """The default ~40-field generator as labelled examples, labelled as the join labels them and
    hashed as the daemon hashes them (columns are the interner's)."""
    from daemon.tools.synthetic import GeneratorConfig, ground_truth, labelled_examples
    from models.interning import Interner

    cfg = GeneratorConfig(seed=seed, n_impressions=n, late_click_rate=0.0, duplicate_click_rate=0.0)
    ex = labelled_examples(cfg)
    encoded = Interner().encode([dict(zip(ex.names, row, strict=True)) for row in ex.rows])
    return encoded.fields, encoded.hashes, ex.labels, ground_truth(cfg)


@pytest.mark.slow
def test_default_generator_fields_are_decided_and_the_gated_model_loses_no_auc() -> None:
    """The issue's quality targets at CI size: field-level F1 >= 0.95 (informative kept, noise and
    ID-like closed) in every window after the first, gated AUC within 0.002 of the ungated twin."""
    names, hashes, labels, truth = _default_stream(200_000, seed=7)
    informative = set(truth["informative"])
    useless = set(truth["noise"]) | set(truth["id_like"])
    model = GatedCTR(GateConfig(window=50_000), seed=0)
    scores = []
    for i in range(0, len(labels), 1024):
        before = model.windows
        model.learn(hashes[i : i + 1024], labels[i : i + 1024])
        if model.windows > before and model.windows > 1:
            kept = {names[c] for c, share in model.field_gates().items() if share >= 0.5}
            tp, fp, fn = len(kept & informative), len(kept & useless), len(informative - kept)
            scores.append((2 * tp / (2 * tp + fp + fn), sorted(informative - kept), sorted(kept & useless)))
    assert len(scores) == model.windows - 1 >= 2
    assert all(f1 >= 0.95 for f1, _, _ in scores), scores
    m = model.metrics()
    assert m["auc_gated"] is not None and m["auc_ungated"] is not None
    assert m["auc_gated"] >= m["auc_ungated"] - 0.002, m


@pytest.mark.slow
def test_bench_gates_suite_covers_both_phases_of_a_window() -> None:
    from daemon.config import load_settings
    from daemon.tools.bench import suite_gates

    result = suite_gates(load_settings(env={}), "tiny")
    assert result["suite"] == "gates" and result["examples"] == 20_000 and result["fields"] == 40
    for prefix in ("", "one_thread_"):
        assert all(result[f"{prefix}{phase}_examples_per_s"] > 0 for phase in ("train", "fit", "search"))


def test_the_worker_reports_new_masks_at_once_and_metrics_at_a_bounded_rate() -> None:
    from daemon.gate_worker import GateTrainer

    cfg = GateConfig(max_fields=8, buckets_per_field=64, window=2000)
    reports: list[float] = []

    def report(model: GatedCTR) -> dict:
        reports.append(model.examples)
        return model.report()

    trainer = GateTrainer(lambda: GatedCTR(cfg, seed=0), report=report, report_every=2, report_min_examples=3000,
                          batch_rows=500).start()  # batches as offered: this counts reports per batch
    try:
        rng = np.random.default_rng(4)
        for _ in range(12):
            h, y = _data(rng, 500, False)
            assert trainer.offer(h, y) == 0
        assert trainer.call(lambda m: m.examples) == 6000
    finally:
        trainer.stop()
    # the first report at batch 2; one on each window close (2000, 4000, 6000); none in between
    # sooner than 3000 examples after the last
    assert reports == [1000, 2000, 4000, 6000], reports
