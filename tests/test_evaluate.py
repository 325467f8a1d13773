"""featsieve evaluate: the pure pieces (models/evaluation.py), time order, the CLI on a small CSV, and (slow) the
claims on generated data with a known ground truth."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.tools.timeorder import TimeOrderedSpill
from models.evaluation import (
    ScoreHistogram,
    aukc,
    exact_auc,
    kept_count,
    mask_columns,
    random_order,
    ranking,
    subset_columns,
    top_k,
)
from models.interning import MISSING


# ------------------------------------------------------------------ pure pieces
def test_aukc_of_a_hand_computed_curve() -> None:
    # trapezoids over [0.25, 1]: (0.25 * (0.6 + 0.7) + 0.5 * (0.7 + 0.8)) / 2 = 0.5375; / span 0.75
    assert aukc([0.25, 0.5, 1.0], [0.6, 0.7, 0.8]) == pytest.approx(0.5375 / 0.75)
    assert aukc([1.0, 0.25, 0.5], [0.8, 0.6, 0.7]) == pytest.approx(0.5375 / 0.75)  # order does not matter
    assert aukc([0.1, 1.0], [0.7, 0.7]) == pytest.approx(0.7)
    assert aukc([0.5], [0.66]) == pytest.approx(0.66)
    with pytest.raises(ValueError):
        aukc([0.1, 0.2], [0.5])


def test_top_k_breaks_ties_by_name_whatever_the_insertion_order() -> None:
    scores = {"b": 1.0, "a": 1.0, "c": 2.0, "d": float("nan"), "e": 0.5}
    assert top_k(scores, 3) == ["c", "a", "b"]
    shuffled = dict(reversed(list(scores.items())))
    assert ranking(shuffled) == ranking(scores) == ["c", "a", "b", "e", "d"]
    assert top_k(scores, 0) == []


def test_random_order_depends_on_seed_and_names_only() -> None:
    names = [f"f{i}" for i in range(20)]
    assert random_order(names, 3) == random_order(list(reversed(names)), 3)
    assert random_order(names, 3) != random_order(names, 4)
    assert sorted(random_order(names, 3)) == sorted(names)


def test_kept_count_rounds_up_and_keeps_one() -> None:
    assert kept_count(0.1, 40) == 4
    assert kept_count(0.3, 10) == 3  # not 4 from 0.30000000000000004 * 10
    assert kept_count(0.01, 40) == 1
    assert kept_count(1.0, 39) == 39
    with pytest.raises(ValueError):
        kept_count(0.0, 10)


def test_histogram_auc_matches_exact_auc_and_merges() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(20_000) < 0.1
    p = 1.0 / (1.0 + np.exp(-(rng.normal(size=20_000) + 1.2 * y - 2.0)))
    whole = ScoreHistogram()
    whole.update(y, p)
    assert whole.auc() == pytest.approx(exact_auc(y, p), abs=1e-4)
    ll = -np.mean(np.where(y, np.log(p), np.log1p(-p)))
    assert whole.logloss() == pytest.approx(ll, rel=1e-9)
    a, b = ScoreHistogram(), ScoreHistogram()
    a.update(y[:7000], p[:7000])
    b.update(y[7000:], p[7000:])
    a.merge(b)
    assert a.auc() == whole.auc() and a.logloss() == pytest.approx(whole.logloss())
    tied = ScoreHistogram()
    tied.update(np.array([0, 1, 0, 1]), np.full(4, 0.3))
    assert tied.auc() == 0.5
    assert ScoreHistogram().auc() is None


def test_field_subset_views() -> None:
    h = np.arange(12, dtype=np.uint64).reshape(3, 4)
    assert subset_columns(h, [2, 0]).tolist() == [[2, 0], [6, 4], [10, 8]]
    masked = mask_columns(h, np.array([True, False, True, False]))
    assert masked[:, 1].tolist() == [MISSING] * 3 and masked[:, 0].tolist() == [0, 4, 8]
    assert h[0, 1] == 1  # the input is not modified


def test_spill_merges_chunks_in_time_order_with_arrival_tiebreak(tmp_path: Path) -> None:
    spill = TimeOrderedSpill(tmp_path, chunk_rows=7)
    rng = np.random.default_rng(1)
    ts = rng.integers(0, 15, size=50)
    for lo in range(0, 50, 5):
        width = 2 if lo < 20 else 3  # a field appears mid-file
        hashes = np.full((5, width), lo, dtype=np.uint64)
        hashes[:, 0] = np.arange(lo, lo + 5)  # arrival number
        spill.append(hashes, np.zeros(5, np.int8), ts[lo : lo + 5])
    out = list(spill.batches(batch_rows=8, block_rows=3))
    assert [len(b[1]) for b in out] == [8] * 6 + [2]
    got = np.concatenate([b[0] for b in out])
    assert got[:, 0].tolist() == np.argsort(ts, kind="stable").tolist()
    assert (got[got[:, 0] < 20][:, 2] == MISSING).all()
    assert len(np.concatenate([b[1] for b in spill.batches(8, max_rows=13)])) == 13


# ------------------------------------------------------------------ the command on a small CSV
def _write_csv(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t", "clicked", "strong", "weak", "noise_a", "noise_b", "noise_c"])
        for i in range(rows):
            strong, weak = int(rng.integers(0, 6)), int(rng.integers(0, 4))
            logit = -2.2 + 0.7 * (strong - 2.5) + 0.4 * (weak == 1)
            y = int(rng.random() < 1 / (1 + math.exp(-logit)))
            # rows come slightly out of time order: --time-column must restore it
            w.writerow([i + int(rng.integers(-3, 4)), y, f"s{strong}", weak, int(rng.integers(0, 50)),
                        f"n{int(rng.integers(0, 8))}", "" if rng.random() < 0.1 else int(rng.integers(0, 3))])


def _evaluate(csv_path: Path, out: Path, seed: int = 0) -> dict:
    code = main(["evaluate", "--input", str(csv_path), "--label", "clicked", "--time-column", "t",
                 "--output-dir", str(out), "--seed", str(seed), "--warmup-rows", "1000", "--batch-rows", "256",
                 "--mask-every", "500", "--buckets", "256", "--ratios", "0.2,0.6,1.0", "--min-examples", "500",
                 "--min-positives", "20"])
    assert code == 0
    return json.loads((out / "evaluation.json").read_text())


def test_evaluate_cli_on_a_small_csv(tmp_path: Path) -> None:
    data = tmp_path / "small.csv"
    _write_csv(data, 4000, seed=5)
    a = _evaluate(data, tmp_path / "a")
    for key in ("rows", "warmup_rows", "evaluated_rows", "fields", "methods", "aukc", "rankings", "timing"):
        assert key in a
    assert a["rows"] == 4000 and a["evaluated_rows"] == 3000 and "t" not in a["fields"]
    assert set(a["methods"]) == {"all", "featsieve", "featsieve-mi", "featsieve-gates", "featsieve-both", "topk-mi",
                                 "topk-gates", "topk-random"}
    for m, v in a["methods"].items():
        for p in v["points"]:
            assert 0.0 <= p["auc"] <= 1.0 and p["logloss"] > 0 and 0.0 <= p["memory_saved"] <= 1.0, m
    assert [p["kept_fields"] for p in a["methods"]["topk-mi"]["points"]] == [1, 3, 5]
    assert a["rankings"]["mi"][0] == "strong"
    # the informative field alone beats a random single field here (seed 0 does not draw "strong" first)
    assert a["rankings"]["random"][0] != "strong"
    assert a["methods"]["topk-mi"]["points"][0]["auc"] > a["methods"]["topk-random"]["points"][0]["auc"] + 0.05
    assert (tmp_path / "a" / "auc_vs_fields.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| topk-mi @ 20% |" in (tmp_path / "a" / "report.md").read_text()
    b = _evaluate(data, tmp_path / "b")
    a.pop("timing"), b.pop("timing")
    assert a == b


def test_evaluate_names_what_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "tiny.csv"
    _write_csv(data, 300, seed=1)
    assert main(["evaluate", "--input", str(data), "--label", "clicked", "--output-dir", str(tmp_path)]) == 2
    assert "lower --warmup-rows" in capsys.readouterr().err
    assert main(["evaluate", "--input", str(data), "--output-dir", str(tmp_path)]) == 2
    assert "--label" in capsys.readouterr().err
    assert main(["evaluate", "--input", str(data), "--label", "clicked", "--methods", "oracle"]) == 2
    assert "unknown method" in capsys.readouterr().err


# ------------------------------------------------------------------ the claims, on generated data
@pytest.mark.slow
def test_featsieve_mask_reaches_all_fields_auc_on_generated_data(tmp_path: Path) -> None:
    events, truth_path = tmp_path / "events.jsonl", tmp_path / "truth.json"
    assert main(["generate", "--output", str(events), "--ground-truth", str(truth_path),
                 "--impressions", "100000", "--seed", "7"]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", "--input", str(events), "--output-dir", str(out), "--ground-truth", str(truth_path),
                 "--methods", "featsieve-mi,topk-mi,topk-random", "--ratios", "0.1,0.2,0.5,1.0"]) == 0
    r = json.loads((out / "evaluation.json").read_text())
    truth = json.loads(truth_path.read_text())
    limit = math.ceil(len(truth["informative"]) * 1.1 - 1e-9)
    all_auc = r["methods"]["all"]["points"][0]["auc"]
    mask = r["methods"]["featsieve-mi"]["points"][0]
    assert mask["auc"] >= all_auc - 0.002, (mask, all_auc)
    assert mask["kept_fields"] <= limit, mask["fields"]
    random_pts = {p["ratio"]: p["auc"] for p in r["methods"]["topk-random"]["points"]}
    mi_pts = {p["ratio"]: p["auc"] for p in r["methods"]["topk-mi"]["points"]}
    for ratio in (0.1, 0.2):
        assert random_pts[ratio] < mi_pts[ratio] - 0.05, (random_pts, mi_pts)
    assert r["aukc"]["topk-random"] < r["aukc"]["topk-mi"] - 0.02
    assert (out / "auc_vs_fields.png").stat().st_size > 10_000


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula, ties given their average rank (written here, not
    imported: an independent check of the evaluation's streaming histograms)."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # 1-based average rank of the tie
        i = j + 1
    pos = labels.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_every_reported_auc_is_the_rank_auc_of_the_predictions_it_scored(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each method's AUC in evaluation.json, recomputed from the very predictions it was made of."""
    seen: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    reported: dict[int, float | None] = {}
    update, merge, auc = ScoreHistogram.update, ScoreHistogram.merge, ScoreHistogram.auc

    def recording_update(self: ScoreHistogram, labels: np.ndarray, probs: np.ndarray) -> None:
        seen.setdefault(id(self), []).append((np.asarray(labels).copy(), np.asarray(probs, dtype=np.float64).copy()))
        update(self, labels, probs)

    def recording_merge(self: ScoreHistogram, other: ScoreHistogram) -> None:
        seen.setdefault(id(self), []).extend(seen.get(id(other), []))
        merge(self, other)

    def recording_auc(self: ScoreHistogram) -> float | None:
        reported[id(self)] = value = auc(self)
        return value

    monkeypatch.setattr(ScoreHistogram, "update", recording_update)
    monkeypatch.setattr(ScoreHistogram, "merge", recording_merge)
    monkeypatch.setattr(ScoreHistogram, "auc", recording_auc)
    data = tmp_path / "small.csv"
    _write_csv(data, 4000, seed=5)
    result = _evaluate(data, tmp_path / "out")

    recomputed = {}
    for key, value in reported.items():
        y = np.concatenate([labels for labels, _ in seen[key]])
        p = np.clip(np.concatenate([probs for _, probs in seen[key]]), 1e-7, 1 - 1e-7)
        assert len(y) == result["evaluated_rows"]  # every evaluated row scored once, by every method
        recomputed[value] = _rank_auc(y, np.log(p) - np.log1p(-p))
    points = [(m, p) for m, v in result["methods"].items() for p in v["points"]]
    assert len(points) >= 10
    for method, point in points:
        assert point["auc"] in recomputed, (method, point)
        # the histogram ranks logits in 2**15 bins over [-16, 16]: ties within a bin cost at most this
        assert point["auc"] == pytest.approx(recomputed[point["auc"]], abs=2e-3), (method, point)
    assert len({round(v, 6) for v in recomputed.values()}) > 3  # the methods do differ
