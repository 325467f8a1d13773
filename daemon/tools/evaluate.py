"""``featsieve evaluate``: prequential comparison of feature masks on a logged file.

Pipeline (docs/evaluation.md has the method and a worked example):

1. **read** the file with daemon/tools/tabular.py (CSV with a label column, or
   JSONL events joined exactly as the daemon joins them), intern values with
   the daemon's :class:`~models.interning.Interner`, and spill the encoded
   examples to a temporary directory (daemon/tools/timeorder.py), so memory does
   not grow with the file;
2. **replay in time order** in batches: the first ``warmup`` examples only
   teach the evidence (the daemon's MI state and an OptFS gate model with one
   continuation window the length of the warm-up); from then on every model is
   *prequential*: each batch is scored, then learnt;
3. **compare**, on the examples after the warm-up: all fields; featsieve's
   mask as it evolves (the daemon's :class:`~models.policy.MaskPolicy` in mode
   ``mi``, ``gates`` and ``both``, re-decided every ``mask_every`` examples on
   evidence learnt up to then); and fixed top-k subsets at each keep ratio by
   the MI ranking, the gate ranking (both read at the end of the warm-up,
   never later) and a seeded random order.

Every compared model is the gate model's CTR network (models/gates.py,
``GatedCTR``) with its gates held open: its continuation window is longer than
any file, so it never enters a gate search, and predictions use
``gated=False``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from daemon.tools.tabular import Batch, ReadMeter, input_format, read_batches
from daemon.tools.timeorder import TimeOrderedSpill
from models.evaluation import (
    ScoreHistogram,
    aukc,
    embedding_bytes,
    kept_count,
    mask_columns,
    random_order,
    ranking,
    subset_columns,
)
from models.evidence import FieldEvidence, GateEvidence, build_evidence
from models.interning import EncodedBatch, Interner
from models.mi import MIConfig, MIState, ranked_pairs
from models.policy import MaskPolicy, PolicyConfig

log = logging.getLogger(__name__)

# "featsieve" is the daemon's own policy as the settings give it (by default mode budget); the
# others force a voting mode on the same evidence
MASK_METHODS = ("featsieve", "featsieve-mi", "featsieve-gates", "featsieve-both")
TOPK_METHODS = ("topk-mi", "topk-gates", "topk-random")
METHODS = ("all", *MASK_METHODS, *TOPK_METHODS)
DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 11))
_NEVER = 1 << 50  # continuation window of the compared models: longer than any file, so no gate search


class EvaluationError(ValueError):
    """The input or the options cannot give an evaluation; the message says what to change."""


@dataclass(frozen=True)
class EvalConfig:
    """Options of one evaluation; ``warmup_rows`` None means ``warmup_share`` of the (capped) rows."""

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    batch_rows: int = 1024
    warmup_share: float = 0.2
    warmup_rows: int | None = None
    max_rows: int | None = None
    mask_every: int = 5000
    buckets: int = 8192
    dense_lr: float = 3e-2  # Adam step of the compared models' MLP and bias (see docs/evaluation.md)
    gate_max_fields: int = 64
    gate_window: int = 200_000  # the daemon's continuation window: method featsieve counts its windows
    max_fields: int = 256
    window_ms: int = 1_800_000
    time_column: str | None = None
    mi: MIConfig = field(default_factory=MIConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise EvaluationError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if not self.ratios or any(not 0.0 < r <= 1.0 for r in self.ratios):
            raise EvaluationError(f"--ratios must be numbers in (0, 1]; got {list(self.ratios)}")
        if self.batch_rows < 1 or self.mask_every < 1 or self.buckets < 2:
            raise EvaluationError("--batch-rows and --mask-every must be >= 1, --buckets >= 2")
        if not 0.0 < self.warmup_share < 1.0:
            raise EvaluationError(f"the warm-up share must be in (0, 1); got {self.warmup_share}")
        if self.warmup_rows is not None and self.warmup_rows < 100:
            raise EvaluationError("--warmup-rows must be >= 100 (the gate model needs a window of 100+)")
        if self.max_rows is not None and self.max_rows < 1:
            raise EvaluationError("--max-rows must be >= 1")


# ------------------------------------------------------------------ reading
def _time_of(value: Any, column: str) -> int:
    """A time cell as an integer sort key: a number as it is (x1000 if it has a fraction), or ISO 8601 in ms."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        try:
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError as exc:
            raise ValueError(f"time column {column!r}: {text!r} is neither a number nor ISO 8601") from exc
    if not math.isfinite(number):
        raise ValueError(f"time column {column!r}: {text!r} is not finite")
    return int(number) if number.is_integer() else int(number * 1000)


def _with_time(batches: Iterator[Batch], column: str, skipped: Counter[str]) -> Iterator[Batch]:
    for b in batches:
        feats, labels, ts = [], [], []
        for f, y in zip(b.features, b.labels.tolist(), strict=True):
            cell = f.pop(column, None)
            if cell is None:
                skipped["missing_time"] += 1
                continue
            try:
                ts.append(_time_of(cell, column))
            except ValueError:
                skipped["bad_time"] += 1
                continue
            feats.append(f)
            labels.append(y)
        yield Batch(feats, np.array(labels, np.int8), np.array(ts, np.int64))


def spill_file(path: str, label: str | None, cfg: EvalConfig, spill: TimeOrderedSpill, interner: Interner,
               skipped: Counter[str], progress: Callable[[int], None] | None = None, fmt: str | None = None,
               meter: ReadMeter | None = None) -> None:
    """Read, intern and spill every labelled example of the file (``fmt``: daemon/tools/tabular.py's formats)."""
    if cfg.time_column and input_format(path, fmt) != "csv":
        raise EvaluationError("--time-column applies to CSV input; JSONL events are ordered by their ts")
    batches = read_batches(path, label, 8192, cfg.window_ms, skipped, fmt, meter)
    if cfg.time_column:
        batches = _with_time(batches, cfg.time_column, skipped)
    for b in batches:
        if not len(b.labels):
            continue
        enc = interner.encode(b.features)
        spill.append(enc.hashes, b.labels, b.ts)
        if progress is not None:
            progress(spill.rows)


# ------------------------------------------------------------------ models
class PrequentialModel:
    """A ``GatedCTR`` with its gates held open, scored on each batch before it learns it.

    Thin adapter over models/gates.py's public API (constructor, ``predict``,
    ``learn``): the model's own window is longer than any file, so it only
    ever fits and its gates stay at their initial value.
    """

    def __init__(self, columns: int, buckets: int, seed: int, dense_lr: float) -> None:
        from models.gates import GateConfig, GatedCTR

        self.model = GatedCTR(GateConfig(max_fields=max(columns, 1), buckets_per_field=buckets, dense_lr=dense_lr,
                                         window=_NEVER, closed_card_max=0), seed=seed)
        self.hist = ScoreHistogram()

    def step(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        probs = self.model.predict(hashes, gated=False)
        self.hist.update(labels, probs)
        self.model.learn(hashes, labels)


@dataclass
class _MaskRun:
    """One evolving featsieve mask: its policy, its current keep vector and its model."""

    policy: MaskPolicy
    model: PrequentialModel | None = None
    keep: np.ndarray | None = None
    history: list[list[int]] = field(default_factory=list)  # [row, kept fields] at each change
    kept_rows: int = 0  # sum over evaluated rows of the fields kept for that row
    reasons: dict[str, str] = field(default_factory=dict)  # the last decision's reason per field
    changes: list[list[Any]] = field(default_factory=list)  # [row, "+field:reason" | "-field:reason", ...]
    positions: list[int] = field(default_factory=list)  # model column -> field column, in order of first keep

    def view(self, hashes: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """The batch as this mask's model sees it.

        A field gets a model column the first time it is kept and keeps it
        (the model's embedding rows are per column), so a mask change never
        moves a field. Fields never kept have no column (the model sees
        nothing of them); a field dropped after being kept reads MISSING.
        """
        placed = set(self.positions)
        self.positions.extend(c for c in np.flatnonzero(keep).tolist() if c not in placed)
        return mask_columns(subset_columns(hashes, self.positions), keep[self.positions])


def _evidence(mi: MIState, gates: GateEvidence | None) -> list[FieldEvidence]:
    """The policy's input, built as daemon/masking.py builds it: MI and pair scores, field gates."""
    scores, pairs = mi.scores_and_pairs()
    return build_evidence(scores, pairs, gates)


# ------------------------------------------------------------------ run
def evaluate_file(path: str, label: str | None = None, config: EvalConfig | None = None,
                  progress: bool = False, ground_truth: dict[str, Any] | None = None,
                  fmt: str | None = None) -> dict[str, Any]:
    """Run the comparison and return the result (JSON-able). Deterministic for a config."""
    import torch

    from models.gates import GateConfig, GatedCTR

    cfg = config or EvalConfig()
    if not Path(path).is_file():
        raise EvaluationError(f"no such input file: {path}")
    fmt = input_format(path, fmt)
    if fmt == "csv" and not label:
        raise EvaluationError(f"{path} is a CSV file: give the name of its 0/1 label column (--label COLUMN)")
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    skipped: Counter[str] = Counter()
    interner = Interner(cfg.max_fields)
    with tempfile.TemporaryDirectory(prefix="featsieve-eval-") as tmp:
        spill = TimeOrderedSpill(Path(tmp))
        meter = ReadMeter()
        with _bar("read", Path(path).stat().st_size, progress, "B") as bar:

            def show_read(rows: int) -> None:
                bar.n = meter.done()
                bar.set_postfix_str(f"{rows:,} rows", refresh=False)
                bar.refresh()

            spill_file(path, label, cfg, spill, interner, skipped, show_read if progress else None, fmt, meter)
            bar.n = bar.total
        _check_read(path, fmt, spill.rows, skipped)
        t_read = time.perf_counter() - t0
        rows = spill.rows if cfg.max_rows is None else min(cfg.max_rows, spill.rows)
        warmup = cfg.warmup_rows if cfg.warmup_rows is not None else max(100, int(rows * cfg.warmup_share))
        if rows - warmup < 10 * cfg.batch_rows and rows - warmup < 1000:
            raise EvaluationError(
                f"{path} gives {rows} examples, too few to evaluate after a warm-up of {warmup}: "
                f"lower --warmup-rows or use a longer file")
        names = list(interner.fields)
        n_fields = len(names)
        mi = MIState(replace(cfg.mi, block_ms=0, pairs_top_n=0))
        # offline there is one block: every pair is counted from the start, up to pair_budget
        # (beyond, the pairs of as many fields as fit, in order of first appearance)
        mi.set_pairs(ranked_pairs(names), limit=cfg.mi.pair_budget)
        gate_cols = min(cfg.gate_max_fields, n_fields)
        gates = GatedCTR(GateConfig(max_fields=gate_cols, buckets_per_field=cfg.buckets, window=warmup), seed=cfg.seed)
        runs = {m: _MaskRun(MaskPolicy(cfg.policy if m == "featsieve"
                                       else replace(cfg.policy, mode=m.split("-", 1)[1])))
                for m in cfg.methods if m in MASK_METHODS}
        strengths: dict[str, list[list[Any]]] = {m: [] for m in runs}  # [row, gate strength] at each change
        subsets: dict[str, dict[float, tuple[int, ...]]] = {}
        models: dict[tuple[int, ...], PrequentialModel] = {}
        rankings: dict[str, list[str]] = {}
        seen = 0
        evaluated = positives = 0
        next_mask = cfg.mask_every

        def gate_shares() -> dict[str, float]:
            return {names[c]: v for c, v in gates.field_gates().items() if c < n_fields}

        def gate_evidence() -> GateEvidence | None:
            shares = gate_shares()
            if not shares:
                return None
            metrics = gates.metrics()
            return GateEvidence(field_gates=shares, windows=int(gates.windows), examples=int(gates.examples),
                                auc=metrics.get("auc_ungated"), auc_gated=metrics.get("auc_gated"))

        def decide(at_row: int) -> None:
            g = gate_evidence()
            evidence = _evidence(mi, g)
            # method featsieve is the daemon with its settings: its gates have completed a window per
            # gate_window examples, not per warm-up (the variants' gate model and rankings)
            daemon_g = None if g is None else replace(g, windows=int(gates.examples) // cfg.gate_window)
            for m, run in runs.items():
                strength = run.policy.gate_strength(daemon_g if m == "featsieve" else g, evidence)
                if not strengths[m] or strengths[m][-1][1] != strength:
                    strengths[m].append([at_row, strength])
                decision = run.policy.update(evidence, strength)
                run.reasons = {n: d.reason for n, d in decision.fields.items()}
                keep = np.array([bool(decision.fields[n].keep) if n in decision.fields else True for n in names])
                if run.keep is None or not np.array_equal(keep, run.keep):
                    run.history.append([at_row, int(keep.sum())])
                    before = run.keep if run.keep is not None else np.ones(len(names), bool)
                    run.changes.append([at_row, *(("+" if k else "-") + f"{n}:{decision.fields[n].reason}"
                                                  for n, k, b in zip(names, keep, before, strict=True) if k != b)])
                run.keep = keep

        def start_models() -> None:
            scores = {s.name: s.score for s in mi.scores(with_pairs=False)}
            mi_scores = {n: scores.get(n, -math.inf) for n in names}
            shares = gate_shares()
            gate_scores = {n: shares.get(n, -math.inf) for n in names}
            rankings["mi"] = ranking(mi_scores)
            rankings["gates"] = ranking(gate_scores)
            rankings["random"] = random_order(names, cfg.seed)
            col = {n: i for i, n in enumerate(names)}
            models[tuple(range(n_fields))] = PrequentialModel(n_fields, cfg.buckets, cfg.seed, cfg.dense_lr)
            for m in cfg.methods:
                if m not in TOPK_METHODS:
                    continue
                order = rankings[m.split("-", 1)[1]]
                subsets[m] = {}
                for r in cfg.ratios:
                    cols = tuple(sorted(col[n] for n in order[: kept_count(r, n_fields)]))
                    subsets[m][r] = cols
                    if cols not in models:
                        models[cols] = PrequentialModel(len(cols), cfg.buckets, cfg.seed, cfg.dense_lr)
            for run in runs.values():
                run.model = PrequentialModel(n_fields, cfg.buckets, cfg.seed, cfg.dense_lr)

        def learn_evidence(h: np.ndarray, y: np.ndarray) -> None:
            mi.update(EncodedBatch(names, h), y, np.zeros(len(y), np.int64))
            gates.learn(h[:, :gate_cols], y)

        # pass 1: the warm-up teaches the evidence; the masks it decides are kept for pass 2
        timeline: dict[str, list[tuple[int, np.ndarray]]] = {m: [] for m in runs}
        for h, y, _ in spill.batches(cfg.batch_rows, max_rows=warmup):
            learn_evidence(h, y)
            seen += len(y)
            while seen >= next_mask and next_mask < warmup:
                decide(next_mask)
                for m, run in runs.items():
                    assert run.keep is not None
                    timeline[m].append((next_mask, run.keep))
                next_mask += cfg.mask_every
        decide(warmup)
        next_mask = warmup + cfg.mask_every
        start_models()

        def keep_at(m: str, row: int) -> np.ndarray:
            # Before the first decision the policy holds every field (initial_keep) for want of
            # evidence; a model trained on all of them would give every field a column for good. Those
            # warm-up rows are learnt under the first decided mask instead (decided on those very rows,
            # never on an evaluated one).
            first = timeline[m][0][1] if timeline[m] else runs[m].keep
            assert first is not None
            keep = first
            for at, k in timeline[m]:
                if at <= row:
                    keep = k
            return keep

        # pass 2: every model learns the warm-up (not scored), then is scored on each batch before learning it
        row = 0
        bar = _bar("evaluate", rows, progress, " rows")
        for h, y, _ in spill.batches(cfg.batch_rows, max_rows=rows):
            if row < warmup:
                cut = min(len(y), warmup - row)
                for cols, model in models.items():
                    model.model.learn(h[:cut] if len(cols) == n_fields else subset_columns(h[:cut], cols), y[:cut])
                for m, run in runs.items():
                    assert run.model is not None
                    run.model.model.learn(run.view(h[:cut], keep_at(m, row)), y[:cut])
                row += cut
                h, y = h[cut:], y[cut:]
                if not len(y):
                    continue
            for cols, model in models.items():
                model.step(h if len(cols) == n_fields else subset_columns(h, cols), y)
            for run in runs.values():
                assert run.model is not None and run.keep is not None
                run.model.step(run.view(h, run.keep), y)
                run.kept_rows += int(run.keep.sum()) * len(y)
            learn_evidence(h, y)
            seen += len(y)
            row += len(y)
            evaluated += len(y)
            positives += int(y.sum())
            if seen >= next_mask:
                decide(seen)
                next_mask += cfg.mask_every
            bar.n = row
            bar.refresh()
        bar.n = rows
        bar.close()
    result = _result(path, cfg, names, rows, warmup, evaluated, positives, dict(skipped), mi, models, subsets,
                     runs, rankings, ground_truth,
                     {"read_s": t_read, "total_s": time.perf_counter() - t0})
    for m, changes in strengths.items():
        result["methods"][m]["gate_evidence"] = changes
    return result


# ------------------------------------------------------------------ result
def _point(hist: ScoreHistogram) -> dict[str, float | None]:
    return {"auc": hist.auc(), "logloss": hist.logloss()}


def _result(path: str, cfg: EvalConfig, names: list[str], rows: int, warmup: int, evaluated: int,
            positives: int, skipped: dict[str, int], mi: MIState, models: dict[tuple[int, ...], PrequentialModel],
            subsets: dict[str, dict[float, tuple[int, ...]]], runs: dict[str, _MaskRun],
            rankings: dict[str, list[str]], truth: dict[str, Any] | None, timing: dict[str, float]) -> dict[str, Any]:
    n = len(names)
    card = {s.name: int(s.cardinality) for s in mi.scores(with_pairs=False)}
    dim = 8  # GateConfig's embedding width (the compared models use the default)
    full_bytes = embedding_bytes(card, names, cfg.buckets, dim)

    def memory(fields: Sequence[str]) -> dict[str, float | int]:
        b = embedding_bytes(card, fields, cfg.buckets, dim)
        return {"embedding_bytes": b, "memory_saved": 1.0 - b / full_bytes if full_bytes else 0.0}

    all_model = models[tuple(range(n))]
    methods: dict[str, Any] = {
        "all": {"kind": "all", "points": [{"ratio": 1.0, "kept_fields": n, **_point(all_model.hist), **memory(names)}]}
    }
    for m, by_ratio in subsets.items():
        points: list[dict[str, Any]] = []
        for r in sorted(by_ratio):
            fields = [names[c] for c in by_ratio[r]]
            points.append({"ratio": r, "kept_fields": len(fields), **_point(models[by_ratio[r]].hist),
                           **memory(fields), "fields": fields})
        scored = [p for p in points if p["auc"] is not None]
        methods[m] = {"kind": "topk", "points": points,
                      "aukc": aukc([p["kept_fields"] / n for p in scored], [p["auc"] for p in scored])
                      if scored else None}
    for m, run in runs.items():
        assert run.model is not None and run.keep is not None
        final = [nm for nm, k in zip(names, run.keep.tolist(), strict=True) if k]
        methods[m] = {"kind": "mask", "points": [{
            "kept_fields": len(final), "mean_kept_fields": run.kept_rows / evaluated if evaluated else None,
            **_point(run.model.hist), **memory(final), "fields": final}],
            "mask_history": run.history, "changes": run.changes, "reasons": run.reasons}
    result: dict[str, Any] = {
        "input": os.path.basename(path),
        "rows": rows, "warmup_rows": warmup, "evaluated_rows": evaluated, "evaluated_positives": positives,
        "fields": names, "skipped_rows": skipped, "seed": cfg.seed,
        "ratios": sorted(cfg.ratios), "methods": methods,
        "aukc": {m: v["aukc"] for m, v in methods.items() if v["kind"] == "topk"},
        # does the gate ranking earn its vote here? (> 0: better than a random order of fields)
        "gate_ranking_vs_random": (methods["topk-gates"]["aukc"] - methods["topk-random"]["aukc"]
                                   if methods.get("topk-gates", {}).get("aukc") is not None
                                   and methods.get("topk-random", {}).get("aukc") is not None else None),
        "rankings": {k: v for k, v in rankings.items()},
        "models_trained": len(models) + len(runs),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("mi", "policy")}
        | {"mi": asdict(cfg.mi), "policy": {k: (sorted(v) if isinstance(v, frozenset) else v)
                                            for k, v in asdict(cfg.policy).items()}},
        "timing": timing | {"rows_per_s": rows / timing["total_s"] if timing["total_s"] > 0 else None},
    }
    if truth is not None:
        result["ground_truth"] = _truth_check(result, truth)
    return result


def _truth_check(result: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """The "must show" claims against a generator's ground truth (featsieve generate --ground-truth)."""
    informative = list(truth.get("informative", []))
    limit = math.ceil(len(informative) * 1.1 - 1e-9)
    methods = result["methods"]
    all_auc = methods["all"]["points"][0]["auc"]
    out: dict[str, Any] = {"informative": informative, "field_limit": limit, "all_auc": all_auc, "masks": {}}
    for m in MASK_METHODS:
        if m not in methods:
            continue
        p = methods[m]["points"][0]
        kept = set(p["fields"])
        gap = None if p["auc"] is None or all_auc is None else all_auc - p["auc"]
        out["masks"][m] = {
            "kept_fields": p["kept_fields"], "informative_kept": len(kept & set(informative)),
            "others_kept": sorted(kept - set(informative)), "auc_gap": gap,
            "claim_holds": gap is not None and gap <= 0.002 and p["kept_fields"] <= limit,
        }
    if "topk-random" in methods and "topk-mi" in methods:
        out["aukc_mi_minus_random"] = methods["topk-mi"]["aukc"] - methods["topk-random"]["aukc"]
    return out


def _bar(stage: str, total: int, enabled: bool, unit: str) -> Any:
    """A progress bar on stderr (total, rate, ETA); a silent one when not ``enabled``."""
    from connectors.progress import bar

    return bar(total, stage, unit, enabled)


def _check_read(path: str, fmt: str, rows: int, skipped: Counter[str]) -> None:
    """Fail loudly when the file gave nothing to evaluate, or a label column that is not 0/1."""
    from daemon.tools.tabular import MAX_BAD_LABEL_SHARE

    bad = skipped.get("bad_label", 0)
    if fmt == "csv" and bad > MAX_BAD_LABEL_SHARE * (rows + bad):
        raise EvaluationError(f"the label column of {path} is not a 0/1 column: {bad:,} of {rows + bad:,} rows "
                              "have another value (allowed: 0 1 true false)")
    if rows == 0 and skipped.total():
        reasons = ", ".join(f"{n:,} {r}" for r, n in skipped.most_common(3))
        raise EvaluationError(f"no example could be read from {path} ({reasons})")


# ------------------------------------------------------------------ outputs
def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """evaluation.json, auc_vs_fields.png and report.md in ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "evaluation.json", "plot": out_dir / "auc_vs_fields.png",
             "report": out_dir / "report.md"}
    paths["json"].write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    plot(result, paths["plot"])
    paths["report"].write_text(report(result, paths["plot"].name), encoding="utf-8")
    return paths


_STYLE = {"featsieve": ("black", "*"), "topk-mi": ("tab:blue", "o"), "topk-gates": ("tab:orange", "s"), "topk-random": ("tab:gray", "x"),
          "featsieve-mi": ("tab:green", "*"), "featsieve-gates": ("tab:red", "P"),
          "featsieve-both": ("tab:purple", "D")}


def plot(result: dict[str, Any], path: Path) -> None:
    """AUC vs kept fields: one line per top-k method, a marker per featsieve mask, all fields dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    methods = result["methods"]
    all_auc = methods["all"]["points"][0]["auc"]
    if all_auc is not None:
        ax.axhline(all_auc, color="black", linestyle="--", linewidth=1, label=f"all fields ({all_auc:.4f})")
    for m, v in methods.items():
        color, marker = _STYLE.get(m, ("black", "."))
        pts = [p for p in v["points"] if p["auc"] is not None]
        if not pts:
            continue
        if v["kind"] == "topk":
            ax.plot([p["kept_fields"] for p in pts], [p["auc"] for p in pts], marker=marker, color=color,
                    label=f"{m} (AUKC {v['aukc']:.4f})")
        elif v["kind"] == "mask":
            p = pts[0]
            ax.plot([p["kept_fields"]], [p["auc"]], marker=marker, color=color, markersize=12, linestyle="none",
                    label=f"{m}: {p['kept_fields']} fields ({p['auc']:.4f})")
    truth = result.get("ground_truth")
    if truth:
        ax.axvline(len(truth["informative"]), color="tab:green", linestyle=":", linewidth=1,
                   label=f"informative fields ({len(truth['informative'])})")
    ax.set_xlabel(f"kept fields (of {len(result['fields'])})")
    ax.set_ylabel("prequential ROC AUC")
    ax.set_title(f"{result['input']}: {result['evaluated_rows']:,} examples after a {result['warmup_rows']:,} warm-up")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _f(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def report(result: dict[str, Any], plot_name: str) -> str:
    """A short markdown report of the result."""
    m = result["methods"]
    lines = [
        f"# featsieve evaluate: {result['input']}", "",
        f"{result['rows']:,} examples in time order; the first {result['warmup_rows']:,} teach the evidence "
        f"(MI, gates), the other {result['evaluated_rows']:,} ({result['evaluated_positives']:,} clicks) are "
        f"scored before each model learns them. {len(result['fields'])} fields, seed {result['seed']}, "
        f"{result['models_trained']} models, {result['timing']['total_s']:.0f} s.", "",
        f"![AUC vs kept fields]({plot_name})", "",
        "| method | kept fields | AUC | log loss | embedding memory saved |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, v in m.items():
        for p in v["points"]:
            label = name if v["kind"] != "topk" else f"{name} @ {p['ratio']:.0%}"
            kept = str(p["kept_fields"]) + (f" (mean {p['mean_kept_fields']:.1f})" if "mean_kept_fields" in p else "")
            lines.append(f"| {label} | {kept} | {_f(p['auc'])} | {_f(p['logloss'])} | {p['memory_saved']:.1%} |")
    lines += ["", "| method | AUKC (mean AUC over kept-field shares) |", "| --- | ---: |"]
    lines += [f"| {k} | {_f(v)} |" for k, v in result["aukc"].items()]
    if result.get("gate_ranking_vs_random") is not None:
        lines += ["", f"Gate ranking AUKC minus random: {result['gate_ranking_vs_random']:+.4f}."]
    for name, v in m.items():
        if v.get("gate_evidence"):
            steps = ", ".join(f"{s} from row {r:,}" for r, s in v["gate_evidence"])
            lines.append(f"* {name}: gate evidence {steps}")
    truth = result.get("ground_truth")
    if truth:
        lines += ["", f"Ground truth: {len(truth['informative'])} informative fields, limit "
                      f"{truth['field_limit']} fields; all-fields AUC {_f(truth['all_auc'])}.", ""]
        for name, c in truth["masks"].items():
            lines.append(f"* {name}: {c['kept_fields']} fields ({c['informative_kept']} informative, others: "
                         f"{', '.join(c['others_kept']) or 'none'}), AUC gap to all fields {_f(c['auc_gap'])}; "
                         f"claim {'holds' if c['claim_holds'] else 'does not hold'}")
    return "\n".join(lines) + "\n"


def evaluate_command(args: Any, settings: Any) -> int:
    """CLI entry: parse the evaluate flags, run, write the outputs, print where they are."""
    from daemon.cliparse import progress_wanted
    from daemon.settings_map import mi_config_from, policy_config_from

    try:
        ratios = tuple(float(x) for x in args.ratios.split(",") if x.strip())
    except ValueError:
        print(f"featsieve evaluate: --ratios must be comma-separated numbers in (0, 1]; got {args.ratios!r}",
              file=sys.stderr)
        return 2
    methods = tuple(x.strip() for x in args.methods.split(",") if x.strip())
    if "all" not in methods:
        methods = ("all", *methods)
    truth = None
    if args.ground_truth:
        try:
            truth = orjson.loads(Path(args.ground_truth).read_bytes())
        except orjson.JSONDecodeError as exc:
            raise EvaluationError(f"--ground-truth {args.ground_truth} is not JSON ({exc})") from None
    try:
        cfg = EvalConfig(
            ratios=ratios, methods=methods, seed=args.seed, batch_rows=args.batch_rows,
            warmup_rows=args.warmup_rows, max_rows=args.max_rows, mask_every=args.mask_every,
            buckets=args.buckets, dense_lr=args.dense_lr, gate_max_fields=settings.gate_max_fields, max_fields=settings.max_fields,
            gate_window=settings.gate_window,
            window_ms=int(settings.attribution_window_s * 1000), time_column=args.time_column,
            mi=mi_config_from(settings), policy=policy_config_from(settings),
        )
        import torch

        torch.set_num_threads(args.threads)
        result = evaluate_file(args.input, args.label, cfg, progress=progress_wanted(args), ground_truth=truth,
                               fmt=args.input_format)
    except (EvaluationError, ValueError, FileNotFoundError) as exc:
        print(f"featsieve evaluate: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(result, Path(args.output_dir))
    print(f"featsieve evaluate: {paths['json']}, {paths['plot']}, {paths['report']}", file=sys.stderr)
    return 0
