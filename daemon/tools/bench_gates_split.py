"""``featsieve bench gates-split``: what splitting the gate search over N instances costs in quality.

In group mode each instance trains its own gate model on the examples of the
partitions it owns, and the mask writer combines their name-keyed reports with
:func:`daemon.cluster.combine_gate_reports`. This suite replays that without a
broker, so only the split itself differs between runs:

1. the default ~40-field generator (seeded) is joined into labelled examples
   (:func:`daemon.tools.synthetic.labelled_examples`);
2. each example goes to Kafka partition ``murmur2(impression id) % 6`` (the
   producer's default partitioner for keyed messages) and partition ``p`` to
   instance ``p % N`` (round-robin); each instance keeps event-time order;
3. each instance hashes its examples with its own :class:`models.interning.Interner`
   and trains a :class:`models.gates.GatedCTR` (the daemon's config from the
   settings, the same seed on every instance, as the daemon does) in batches
   of 1024, the gate worker's batch;
4. the reports go through :func:`daemon.masking.named_gate_report` and
   ``combine_gate_reports``; a field is kept when its combined ``gate_open``
   is at least the policy's ``gate_enter`` (what mode ``"gates"`` decides for
   a field without a previous decision) and scored against the ground truth
   as docs/gates.md does (informative should stay, noise and ID-like should
   close; the XOR pair and the duplicate are not scored). ``held`` scores the
   other reading the policy has: a field it already keeps (``initial_keep``)
   is dropped only below ``gate_exit``.

N = 1 is the baseline, in the same run. The gate window is per size so that
every instance of N = 3 completes at least two windows; the same window is
used for every N, so an instance of N = 3 decides on a third of the examples
per window that the single instance sees.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
from kafka.partitioner.default import murmur2

from daemon.cluster import combine_gate_reports
from daemon.config import Settings
from daemon.masking import named_gate_report
from daemon.settings_map import gate_config_from
from daemon.tools.synthetic import (
    GeneratorConfig,
    LabelledExamples,
    ground_truth,
    labelled_examples,
)
from models.interning import Interner
from models.policy import PolicyConfig

PARTITIONS = 6
BATCH = 1024  # the gate worker trains on the batches the poll loop hands it; 1024 is the bench's batch
INSTANCES = (1, 2, 3)
# impressions, gate window: N = 3 gives each instance ~1/3 of the examples, >= 2 windows of them
SIZES: dict[str, tuple[int, int]] = {"tiny": (12_000, 1_500), "small": (100_000, 15_000),
                                     "full": (400_000, 60_000)}
SEED = 7  # the generator seed docs/gates.md measures with


def kafka_partition(key: str, partitions: int = PARTITIONS) -> int:
    """The partition Kafka's default partitioner gives a message keyed by ``key`` (UTF-8)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def split_by_instance(ids: list[str], instances: int, partitions: int = PARTITIONS) -> list[np.ndarray]:
    """Indices of the examples each of ``instances`` owns, ascending (input order kept).

    Example ``i`` lives on partition ``kafka_partition(ids[i])``; partition ``p`` belongs to
    instance ``p % instances``. Raises ValueError if there are more instances than partitions
    (an instance would own nothing).
    """
    if not 1 <= instances <= partitions:
        raise ValueError(f"instances must be in 1..{partitions}; got {instances}")
    owner = np.fromiter((kafka_partition(i, partitions) % instances for i in ids), dtype=np.int64, count=len(ids))
    return [np.flatnonzero(owner == k) for k in range(instances)]


def train_instance(settings: Settings, stream: LabelledExamples, rows: np.ndarray, window: int) -> dict[str, Any]:
    """One instance's gate model trained on ``stream``'s examples ``rows`` in order, batches of 1024.

    Returns ``report`` (named as the instance publishes it), ``seconds`` of training and
    ``examples``. The examples are hashed as the daemon hashes them: one Interner per process,
    fed column-wise per batch.
    """
    from models.gates import GatedCTR

    config = replace(gate_config_from(settings), window=window)
    model = GatedCTR(config, seed=settings.seed)
    interner = Interner(settings.max_fields)
    names = stream.names
    elapsed = 0.0
    for start in range(0, len(rows), BATCH):
        part = rows[start : start + BATCH]
        batch = [stream.rows[i] for i in part.tolist()]
        encoded = interner.encode_columns(names, list(zip(*batch, strict=True)), len(batch))
        t0 = time.perf_counter()
        model.learn(encoded.hashes, stream.labels[part])
        elapsed += time.perf_counter() - t0
    report = named_gate_report(model.report(), interner)
    return {"report": report, "seconds": elapsed, "examples": len(rows), "windows": model.windows}


def field_quality(field_gates: dict[str, float], truth: dict[str, Any], enter: float) -> dict[str, Any]:
    """Field-level precision, recall and F1 of ``gate_open >= enter`` against the ground truth.

    Positives are the informative fields; noise and ID-like fields are negatives; other fields
    (the XOR pair, the duplicate) are not scored. A field without a gate counts as not kept.
    """
    informative = set(truth["informative"])
    useless = set(truth["noise"]) | set(truth["id_like"])
    kept = {name for name, share in field_gates.items() if share >= enter}
    tp, fp, fn = len(kept & informative), len(kept & useless), len(informative - kept)
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "informative_closed": sorted(informative - kept),
        "useless_kept": sorted(kept & useless),
    }


def run_split(settings: Settings, stream: LabelledExamples, truth: dict[str, Any], instances: int,
              window: int) -> dict[str, Any]:
    """Train ``instances`` gate models on the split stream and score their combined report."""
    policy = PolicyConfig()
    enter = policy.gate_enter
    trained = [train_instance(settings, stream, rows, window) for rows in split_by_instance(stream.ids, instances)]
    combined = combine_gate_reports([t["report"] for t in trained])
    if combined is None:
        raise RuntimeError(f"no instance of {instances} completed a gate window of {window} examples")
    gates = combined["field_gates"]
    seconds = sum(t["seconds"] for t in trained)
    out: dict[str, Any] = {"instances": instances, "examples": combined["examples"],
                           "train_seconds": seconds, "train_examples_per_s": combined["examples"] / seconds}
    out.update(field_quality(gates, truth, enter))
    out["held"] = field_quality(gates, truth, policy.gate_exit)
    out["metrics"] = combined["metrics"]
    out["split_fields"] = {n: round(v, 4) for n, v in gates.items() if 0.0 < v < 1.0}  # instances disagree
    out["per_instance"] = [
        {"examples": t["examples"], "windows": t["windows"],
         "f1": field_quality(t["report"]["field_gates"], truth, enter)["f1"],
         "auc_gated": t["report"]["metrics"].get("auc_gated")}
        for t in trained
    ]
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def suite_gates_split(settings: Settings, size: str, generator_seed: int = SEED,
                      impressions: int | None = None, window: int | None = None) -> dict[str, Any]:
    """Gate quality of 1, 2 and 3 instances on one split stream; differences and ratios against N = 1.

    ``impressions`` and ``window`` override the size's (for runs longer than ``full``).
    """
    import torch

    torch.set_num_threads(1)  # the gate worker's setting
    sized_impressions, sized_window = SIZES[size]
    impressions = impressions or sized_impressions
    window = window or sized_window
    config = GeneratorConfig(seed=generator_seed, n_impressions=impressions)
    t0 = time.perf_counter()
    stream = labelled_examples(config)
    truth = ground_truth(config)
    prepare_s = time.perf_counter() - t0
    runs = [run_split(settings, stream, truth, n, window) for n in INSTANCES]
    base = runs[0]
    for r in runs:
        m, b = r["metrics"], base["metrics"]
        r["vs_single"] = {
            "f1_diff": r["f1"] - base["f1"],
            "f1_ratio": _ratio(r["f1"], base["f1"]),
            "held_f1_diff": r["held"]["f1"] - base["held"]["f1"],
            "precision_diff": r["precision"] - base["precision"],
            "recall_diff": r["recall"] - base["recall"],
            "auc_gated_diff": _diff(m["auc_gated"], b["auc_gated"]),
            "auc_ungated_diff": _diff(m["auc_ungated"], b["auc_ungated"]),
            "logloss_gated_ratio": _ratio(m["logloss_gated"], b["logloss_gated"]),
            "logloss_ungated_ratio": _ratio(m["logloss_ungated"], b["logloss_ungated"]),
        }
    return {
        "suite": "gates-split",
        "impressions": impressions,
        "examples": len(stream),
        "positives": int(stream.labels.sum()),
        "generator_seed": generator_seed,
        "gate_window": window,
        "partitions": PARTITIONS,
        "batch": BATCH,
        "gate_enter": PolicyConfig().gate_enter,
        "gate_exit": PolicyConfig().gate_exit,
        "cores": os.cpu_count(),
        "prepare_seconds": prepare_s,
        "runs": runs,
        "ratio": runs[-1]["vs_single"]["f1_ratio"],  # F1 of the most instances over F1 of one
        "train_examples_per_s": base["train_examples_per_s"],
    }
