"""Field and value gates trained online under continuation (after OptFS), on a small CTR model, CPU, torch.

Model. Every field value (its 64-bit hash, folded into ``buckets_per_field``
rows of its field's slice of one table) has one table row: an embedding
(``dim``) and a linear weight. The prediction is ``bias + linear + FM + MLP``
over the looked-up rows. Two kinds of gate sit on the rows:

* a **field gate** per column, which decides the field on the evidence of
  its whole traffic, so a wide field whose values are each seen a few times
  is still judged on everything it does to the prediction. Its evidence is
  found by probing: on the held model, the log loss with the field closed
  minus the log loss with it open, on the same examples, less
  ``field_penalty`` per example (the gate's 0/1 decision taken by finite
  difference; a relaxed field gate's gradient was too noisy to decide on);
* a **value gate** per row, of the OptFS form ``g(m) = sigmoid(T * m) /
  sigmoid(init)`` (1 at ``T = 1, m = init``, a 0/1-like step as the
  temperature ``T`` grows), which only refines an open field: it steps by its
  gradient summed over the batch, so a value needs to be seen often to close.

A gate interpolates between the row and its field's *closed* row ``c_f``, the
traffic-weighted mean row of the field: ``row_eff = c_f + g (row - c_f)``.
Closing therefore means "treat as an average value of the field" rather than
"zero", which the MLP was never trained on; the gated model is scored the same
way, with the hard masks.

Online continuation. Training runs in windows of ``window`` examples, two
phases each (a batch that straddles a boundary is split). *Fit* (the first
``1 - search_share``): every gate at 1; the table (sparse Adagrad on the rows
touched), bias and MLP (Adam) learn, so every value keeps learning,
including closed ones, and can reopen. *Search* (the rest): the model is
held; closed rows are computed, the value gates start again at ``init``,
``T`` rises geometrically from ``t_start`` to ``t_max``, the field evidence
starts again at zero; the value gates move under log loss plus ``penalty``
times the gates each example uses, and every batch is probed for the field
evidence. Holding the model matters: trained jointly, rows grow to
compensate shrinking gates and the penalty stops discriminating. At the
window's end the hard masks are read (field: mean evidence plus a clipped
hysteresis term > 0; value: gate at ``t_max`` >= 1/2) and become the current
mask; a field that gains or loses signal after a drift flips in the first
window or the second.

Evidence for the policy (after the first completed window):

* ``field_gates()``: per column, 1.0 if the field gate is open, 0.0 if not;
  ``value_gates()``: the share of the field's traffic whose value gate is open;
* ``closed_values(col)``: hashes of the closed values of fields with at most
  ``closed_card_max`` distinct values (a bounded set of hashes per column);
* ``metrics()``: prequential ROC AUC and log loss (river.metrics, rolling)
  over the last ``eval_window`` examples, each batch scored before it is
  learnt, with the hard masks applied (``gated``) and by its ungated twin,
  the same weights with every gate at 1, i.e. all features (``ungated``).

Memory: ``max_fields * buckets_per_field * (dim + 1)`` floats, twice (rows
and Adagrad state), plus about 21 bytes a row for value gates, traffic
counts and masks: ~100 MB with the defaults (64 fields, 16384 rows, dim 8).
Pure: no clock, no I/O; randomness from the seed only.

Layout. This module holds the settings (``GateConfig``), the snapshot format
and the orchestration (``GatedCTR``: the window schedule, prequential scoring,
the evidence read-outs) and imports no torch, so ``GateConfig`` costs nothing
to import; the torch parts load with the first model: models/gate_net.py (the
network and its optimisers), models/gate_search.py (closed rows, field probe,
value gates, hard masks), models/gate_state.py (snapshot and restore).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SNAPSHOT_FORMAT = 2


class GateSnapshotError(ValueError):
    """A snapshot this version cannot restore (another format): start a fresh gate model instead."""


@dataclass(frozen=True)
class GateConfig:
    """The gate model's settings, validated on construction (a ``ValueError`` names the bad setting)."""

    max_fields: int = 64
    buckets_per_field: int = 1 << 14
    window: int = 200_000
    dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    lr: float = 0.05  # sparse Adagrad, table rows (embedding and linear weight)
    dense_lr: float = 1e-3  # Adam, MLP and bias
    gate_lr: float = 1.0  # SGD on batch sums, value gates (reset every window)
    penalty: float = 3e-4  # per value gate an example uses
    search_share: float = 0.5  # the last half of each window searches the gates on the held model
    init: float = 0.2
    t_start: float = 1.0
    t_max: float = 50.0
    closed_card_max: int = 64
    eval_window: int = 20_000
    field_penalty: float = 2e-4  # nats per example a field must be worth to stay open
    probe: int = 512  # examples per search batch on which each field's closing is tried
    field_memory: float = 0.5  # hysteresis: the last decision's margin (at most one penalty) carried over, times this
    adagrad_init: float = 0.01  # initial Adagrad accumulator: damps the first steps of rare rows
    search_steps: int = 1  # gate steps per search batch (the lookups are reused: the model is held)

    def __post_init__(self) -> None:
        checks = {
            "max_fields": self.max_fields >= 1,
            "buckets_per_field": self.buckets_per_field >= 2,
            "window": self.window >= 100,
            "dim": self.dim >= 1,
            "hidden": all(h >= 1 for h in self.hidden),
            "lr": self.lr > 0, "dense_lr": self.dense_lr > 0, "gate_lr": self.gate_lr > 0,
            "penalty": self.penalty >= 0,
            "search_share": 0.0 < self.search_share <= 1.0,
            "init": self.init > 0,
            "t_start": self.t_start > 0,
            "t_max": self.t_max >= self.t_start,
            "closed_card_max": self.closed_card_max >= 0,
            "eval_window": self.eval_window >= 100,
            "field_penalty": self.field_penalty >= 0,
            "probe": self.probe >= 1,
            "field_memory": 0.0 <= self.field_memory < 1.0,
            "adagrad_init": self.adagrad_init > 0,
            "search_steps": self.search_steps >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid gate setting {name}: {getattr(self, name)!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


def river_metrics(labels: np.ndarray, probs: np.ndarray) -> tuple[float | None, float | None]:
    """Rolling ROC AUC and log loss of a window of predictions, with river.metrics."""
    from river import metrics, utils

    if len(labels) == 0 or labels.min() == labels.max():
        return None, None
    roc = metrics.RollingROCAUC(window_size=len(labels))
    loss: Any = utils.Rolling(metrics.LogLoss, window_size=len(labels))  # river's stubs type get() as object
    for y, p in zip(labels.tolist(), np.clip(probs, 1e-7, 1 - 1e-7).tolist(), strict=True):
        roc.update(bool(y), p)
        loss.update(bool(y), p)
    return float(roc.get()), float(loss.get())


class GatedCTR:
    """One CTR model with a gate per field and per table row; ``learn`` is prequential.

    Orchestration: the network (models/gate_net.py) learns in each window's fit
    phase and is held in its search phase, where the gates (models/gate_search.py)
    move; snapshots are models/gate_state.py's. Read the evidence with
    ``field_gates``, ``value_gates``, ``closed_values``, ``metrics`` or ``report``.
    """

    def __init__(self, config: GateConfig | None = None, seed: int = 0) -> None:
        import torch

        from models.gate_net import GateNet
        from models.gate_search import GateSearch

        self.config = cfg = config or GateConfig()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.rows = cfg.max_fields * cfg.buckets_per_field
        self.search = GateSearch(cfg)
        self.net = GateNet(cfg, self.generator)
        self.in_window = 0  # examples learnt in the current window
        self.windows = 0  # completed windows
        self.examples = 0
        self.seen_values: dict[int, set[int]] = {}  # low-cardinality columns: their value hashes
        self.wide_columns: set[int] = set()
        self.columns = 0
        self.eval_labels = np.zeros(0, dtype=np.int8)
        self.eval_gated = np.zeros(0, dtype=np.float32)
        self.eval_ungated = np.zeros(0, dtype=np.float32)

    # the search's state, read-only, as attributes of the model
    @property
    def temperature(self) -> float:
        return self.search.temperature

    @property
    def mask(self) -> np.ndarray | None:
        """Hard mask of the last window, per table row: field and value open (None before the first)."""
        return self.search.mask

    @property
    def field_mask(self) -> np.ndarray | None:
        return self.search.field_mask

    @property
    def value_mask(self) -> np.ndarray | None:
        return self.search.value_mask

    @property
    def last_freq(self) -> np.ndarray:
        """Examples per table row in the last completed window."""
        return self.search.last_freq

    # --------------------------------------------------------------- learn
    def learn(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        """Score the batch (for the online metrics), then train on it."""
        cfg = self.config
        hashes = np.ascontiguousarray(hashes[:, : cfg.max_fields], dtype=np.uint64)
        n = len(labels)
        if n == 0 or hashes.shape[1] == 0:
            return
        self.columns = max(self.columns, hashes.shape[1])
        self._track_values(hashes)
        search_from = self._search_from()
        start = 0
        while start < n:  # never let one call run past a phase or window boundary
            end = search_from if self.in_window < search_from else cfg.window
            take = min(n - start, end - self.in_window)
            self._learn_part(hashes[start : start + take], np.asarray(labels[start : start + take]))
            start += take

    def clear_column(self, col: int) -> None:
        """Forget everything learnt about column ``col`` (its field's column was reclaimed and may
        be given to another field): its rows' embeddings and linear weights to zero, Adagrad state,
        value gates, field gate, evidence and closed row to their initial values, its hard masks
        open, its traffic counts and seen values gone. Columns past ``max_fields`` have no state."""
        import torch

        cfg = self.config
        if not 0 <= col < cfg.max_fields:
            return
        rows = slice(col * cfg.buckets_per_field, (col + 1) * cfg.buckets_per_field)
        net, search = self.net, self.search
        with torch.no_grad():
            net.table[rows] = 0.0
            net.ada[rows] = cfg.adagrad_init
            search.value_gate[rows] = cfg.init
            search.field_gate[col] = 0.0
            search.closed_rows[col] = 0.0
        search.field_evidence[col] = 0.0
        search.freq[rows] = 0
        search.last_freq[rows] = 0
        if search.mask is not None and search.field_mask is not None and search.value_mask is not None:
            search.mask[rows] = True
            search.field_mask[col] = True
            search.value_mask[rows] = True
            search.set_mask(search.mask, search.field_mask, search.value_mask)
        self.seen_values.pop(col, None)
        self.wide_columns.discard(col)

    def _search_from(self) -> int:
        """Position in the window of the first search example."""
        return int(self.config.window * (1.0 - self.config.search_share))

    def _learn_part(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        """A batch within one phase of one window: score it, then fit on it or search on it."""
        cfg, net, search = self.config, self.net, self.search
        idx = net.rows(hashes)
        flat = idx.reshape(-1)
        y = net.targets(labels)
        n = len(labels)
        search_from = self._search_from()
        searching = self.in_window >= search_from
        if searching and self.in_window == search_from:
            search.open(net)
        looked_up = net.lookup(idx)
        # before any step: prequential
        gated = None if search.hard is None else net.probabilities(search.masked(looked_up, idx))
        if not searching:
            ungated = net.fit(flat, looked_up, y)  # its forward is the ungated twin's score
        else:
            ungated = net.probabilities(looked_up)
        self._record(labels, ungated if gated is None else gated, ungated)
        if searching:
            search.anneal((self.in_window - search_from) / max(cfg.window - search_from, 1))
            search.probe(net, looked_up, y)
            for _ in range(cfg.search_steps):
                search.step(net, idx, flat, looked_up, y)
        search.count(flat)
        self.in_window += n
        self.examples += n
        if self.in_window >= cfg.window:
            search.close()
            self.windows += 1
            self.in_window = 0

    def _track_values(self, hashes: np.ndarray) -> None:
        limit = self.config.closed_card_max
        for col in range(hashes.shape[1]):
            if col in self.wide_columns:
                continue
            seen = self.seen_values.setdefault(col, set())
            seen.update(np.unique(hashes[:, col]).tolist())
            if len(seen) > limit:
                self.wide_columns.add(col)
                del self.seen_values[col]

    def _record(self, labels: np.ndarray, gated: Any, ungated: Any) -> None:
        keep = self.config.eval_window
        self.eval_labels = np.concatenate([self.eval_labels, labels.astype(np.int8)])[-keep:]
        self.eval_gated = np.concatenate([self.eval_gated, gated.numpy().astype(np.float32)])[-keep:]
        self.eval_ungated = np.concatenate([self.eval_ungated, ungated.numpy().astype(np.float32)])[-keep:]

    # ------------------------------------------------------------ evidence
    def predict(self, hashes: np.ndarray, gated: bool = True) -> np.ndarray:
        """Click probabilities (hard masks applied when ``gated`` and a window has completed)."""
        hashes = np.ascontiguousarray(hashes[:, : self.config.max_fields], dtype=np.uint64)
        idx = self.net.rows(hashes)
        rows = self.net.lookup(idx)
        if gated and self.search.hard is not None:
            rows = self.search.masked(rows, idx)
        return self.net.probabilities(rows).numpy().copy()

    def field_gates(self) -> dict[int, float]:
        """Per column with traffic in the last window: 1.0 if its field gate is open, 0.0 if closed.

        The field is decided on the evidence of its whole traffic; value gates only refine an open
        field (see ``value_gates`` and ``closed_values``) and never decide it: a closed value is
        treated as the field's average value, so a field's most popular value, which sits near
        that average, is the first to close, and a share of traffic would penalise exactly the
        fields with a dominant value.
        """
        if self.field_mask is None:
            return {}
        b = self.config.buckets_per_field
        return {col: float(self.field_mask[col]) for col in range(self.columns)
                if self.last_freq[col * b : (col + 1) * b].any()}

    def value_gates(self) -> dict[int, float]:
        """Per column with traffic: the share of the last window's traffic whose value gate is open."""
        if self.value_mask is None:
            return {}
        b = self.config.buckets_per_field
        out = {}
        for col in range(self.columns):
            freq = self.last_freq[col * b : (col + 1) * b]
            total = int(freq.sum())
            if total:
                out[col] = float((freq * self.value_mask[col * b : (col + 1) * b]).sum() / total)
        return out

    def field_open(self) -> dict[int, bool]:
        """Per column: the field gate's hard decision of the last window."""
        if self.field_mask is None:
            return {}
        return {col: bool(self.field_mask[col]) for col in range(self.columns)}

    def closed_values(self, col: int) -> list[int]:
        if self.mask is None or col in self.wide_columns or col not in self.seen_values:
            return []
        b = np.uint64(self.config.buckets_per_field)
        base = col * self.config.buckets_per_field
        return sorted(h for h in self.seen_values[col] if not self.mask[base + int(np.uint64(h) % b)])

    def metrics(self) -> dict[str, float | None]:
        auc_gated, logloss_gated = river_metrics(self.eval_labels, self.eval_gated)
        auc_ungated, logloss_ungated = river_metrics(self.eval_labels, self.eval_ungated)
        return {
            "auc_gated": auc_gated,
            "auc_ungated": auc_ungated,
            "logloss_gated": logloss_gated,
            "logloss_ungated": logloss_ungated,
            "examples": float(self.examples),
            "windows": float(self.windows),
            "temperature": float(self.temperature),
        }

    def report(self) -> dict[str, Any]:
        closed = {col: self.closed_values(col) for col in range(self.columns)}
        return {
            "field_gates": self.field_gates(),
            "value_gates": self.value_gates(),
            "closed_values": {c: v for c, v in closed.items() if v},
            "metrics": self.metrics(),
        }

    # --------------------------------------------------------- persistence
    def snapshot(self) -> dict[str, Any]:
        """The model's state as plain data; see models/gate_state.py."""
        from models.gate_state import snapshot

        return snapshot(self)

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> GatedCTR:
        """A model equal to the snapshot's: the same predictions and the same continuation.

        Raises ``GateSnapshotError`` for a snapshot of another format."""
        from models.gate_state import restore

        return restore(cls, snap)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)
