"""Snapshot and restore of a ``GatedCTR``: plain data (NumPy arrays, numbers, lists, dicts) in, an equal model out.

Contract. ``snapshot(model)`` captures everything the model's future depends
on: config and seed, the network's weights and optimiser state, the gates and
their evidence, the hard masks, the window's traffic counts and position, the
seen values and the prequential evaluation window. It is pickle-able and
holds no torch objects. ``restore(cls, snap)`` returns a model that predicts
exactly as the snapshot's and, fed the same batches, continues bit-for-bit as
the original would have (the snapshot may be taken anywhere, mid-window and
mid-search included: resume is after the last batch learnt).

The layout is versioned by ``SNAPSHOT_FORMAT`` (in models/gates.py); a
snapshot of another format raises ``GateSnapshotError`` before anything is
built, and the caller starts a fresh model instead.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.gates import SNAPSHOT_FORMAT, GateConfig, GateSnapshotError

if TYPE_CHECKING:
    from models.gates import GatedCTR


def _arrays(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _arrays(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [_arrays(v) for v in state]
    if isinstance(state, torch.Tensor):
        return state.detach().numpy().copy()
    return state


def _tensors(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _tensors(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_tensors(v) for v in state]
    if isinstance(state, np.ndarray):
        return torch.from_numpy(state.copy())
    return state


def snapshot(model: GatedCTR) -> dict[str, Any]:
    """The model's whole state as plain data (format ``SNAPSHOT_FORMAT``)."""
    net, search = model.net, model.search
    return {
        "format": SNAPSHOT_FORMAT,
        "config": {f.name: getattr(model.config, f.name) for f in fields(model.config)},
        "seed": model.seed,
        "params": {
            "table": net.table.numpy().copy(),
            "ada": net.ada.numpy().copy(),
            "value_gate": search.value_gate.numpy().copy(),
            "field_gate": search.field_gate.numpy().copy(),
            "closed_rows": search.closed_rows.numpy().copy(),
            "bias": net.bias.detach().numpy().copy(),
            "mlp": _arrays(net.mlp.state_dict()),
        },
        "optimisers": {"opt_dense": _arrays(net.opt_dense.state_dict())},
        "field_probed": search.field_probed,
        "field_evidence": search.field_evidence.copy(),
        "generator": model.generator.get_state().numpy().copy(),
        "temperature": search.temperature, "in_window": model.in_window, "windows": model.windows,
        "examples": model.examples, "columns": model.columns,
        "mask": None if search.mask is None else search.mask.copy(),
        "field_mask": None if search.field_mask is None else search.field_mask.copy(),
        "value_mask": None if search.value_mask is None else search.value_mask.copy(),
        "freq": search.freq.copy(), "last_freq": search.last_freq.copy(),
        "seen_values": {c: sorted(v) for c, v in model.seen_values.items()},
        "wide_columns": sorted(model.wide_columns),
        "eval": [model.eval_labels.copy(), model.eval_gated.copy(), model.eval_ungated.copy()],
    }


def restore(cls: type[GatedCTR], snap: dict[str, Any]) -> GatedCTR:
    """A model equal to the snapshot's: the same predictions and the same continuation."""
    if snap.get("format") != SNAPSHOT_FORMAT:
        raise GateSnapshotError(f"gate snapshot format {snap.get('format')!r} is not {SNAPSHOT_FORMAT}")
    cfg = dict(snap["config"])
    cfg["hidden"] = tuple(cfg["hidden"])
    model = cls(GateConfig(**cfg), seed=int(snap["seed"]))
    net, search = model.net, model.search
    p = snap["params"]
    with torch.no_grad():
        for name in ("table", "ada"):
            getattr(net, name).copy_(torch.from_numpy(p[name]))
        for name in ("value_gate", "closed_rows", "field_gate"):
            getattr(search, name).copy_(torch.from_numpy(p[name]))
        net.bias.copy_(torch.from_numpy(p["bias"]))
    net.mlp.load_state_dict(_tensors(p["mlp"]))
    net.opt_dense.load_state_dict(_tensors(snap["optimisers"]["opt_dense"]))
    model.generator.set_state(torch.from_numpy(snap["generator"]))
    search.field_probed = int(snap["field_probed"])
    search.field_evidence = np.asarray(snap["field_evidence"], dtype=np.float64).copy()
    search.temperature = float(snap["temperature"])
    model.in_window = int(snap["in_window"])
    model.windows = int(snap["windows"])
    model.examples = int(snap["examples"])
    model.columns = int(snap["columns"])
    if snap["mask"] is not None:
        search.set_mask(np.asarray(snap["mask"], dtype=bool).copy(),
                        np.asarray(snap["field_mask"], dtype=bool).copy(),
                        np.asarray(snap["value_mask"], dtype=bool).copy())
    search.freq[:] = np.asarray(snap["freq"], dtype=np.int64)
    search.last_freq = np.asarray(snap["last_freq"], dtype=np.int64).copy()
    model.seen_values = {int(c): set(v) for c, v in snap["seen_values"].items()}
    model.wide_columns = set(snap["wide_columns"])
    model.eval_labels, model.eval_gated, model.eval_ungated = (np.asarray(a).copy() for a in snap["eval"])
    return model
