"""MaskBuilder: evidence from a real MI state and a gate report → the mask message's fields."""

from __future__ import annotations

import numpy as np

from daemon.config import load_settings
from daemon.masking import MaskBuilder
from daemon.settings_map import mi_config_from
from models.interning import Interner
from models.mi import MIState


class _Versions:
    """The two things MaskBuilder asks of a publisher (the real one needs a broker: tests/test_masks_e2e.py)."""

    epoch = 1

    def __init__(self) -> None:
        self.version = 0

    def next_version(self) -> int:
        return self.version + 1


def _mi_with_two_informative_fields() -> tuple[MIState, Interner]:
    rng = np.random.default_rng(3)
    n = 40_000
    a = rng.integers(0, 4, n)
    b = rng.integers(0, 4, n)
    p = 0.02 + 0.05 * (a == 0) + 0.05 * (b == 1)
    y = (rng.random(n) < p).astype(np.int8)
    interner = Interner()
    encoded = interner.encode([{"a": f"a{i}", "b": f"b{j}"} for i, j in zip(a, b, strict=True)])
    settings = load_settings(env={})
    mi = MIState(mi_config_from(settings))
    mi.update(encoded, y, np.full(n, 1_700_000_000_000, dtype=np.int64))
    return mi, interner


def test_closed_values_are_published_only_for_fields_the_gates_keep_open() -> None:
    mi, _ = _mi_with_two_informative_fields()
    builder = MaskBuilder(load_settings(env={}))  # policy_mode mi: both fields kept on their MI
    report = {
        "field_gates": {"a": 1.0, "b": 0.0},
        "closed_values": {"a": ["a3"], "b": ["b0", "b1", "b2", "b3"]},
        "metrics": {},
        "examples": 40_000,
    }
    msg, changed = builder.build(mi, report, _Versions(), watermark_ms=0)
    assert changed and msg.version == 1
    a, b = msg.fields["a"], msg.fields["b"]
    assert a.keep and b.keep, (a, b)
    assert a.closed_values == ("a3",)
    # b's field gate is closed: all its values read as closed; publishing them would drop a kept field
    assert b.closed_values is None and b.gate_open == 0.0


def test_no_gate_report_means_no_closed_values() -> None:
    mi, _ = _mi_with_two_informative_fields()
    msg, _ = MaskBuilder(load_settings(env={})).build(mi, None, _Versions(), watermark_ms=0)
    assert all(f.closed_values is None and f.gate_open is None for f in msg.fields.values())
