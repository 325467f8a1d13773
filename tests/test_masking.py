"""MaskBuilder: evidence from a real MI state and a gate report → the mask message's fields."""

from __future__ import annotations

import numpy as np

from daemon.cluster import combine_gate_reports
from daemon.config import load_settings
from daemon.masking import MaskBuilder, named_gate_report, typed_closed_values
from daemon.settings_map import mi_config_from
from featsieve_client import apply, decode, encode
from models.interning import Interner, value_hash
from models.mi import MIState

STRONG = {"windows": 2.0, "auc_ungated": 0.7}  # a gate model that has earned its vote (docs/policy.md)


class _Versions:
    """The two things MaskBuilder asks of a publisher (the real one needs a broker: tests/test_masks_e2e.py)."""

    epoch = 1

    def __init__(self) -> None:
        self.version = 0

    def next_version(self) -> int:
        return self.version + 1


def _mi_with_two_informative_fields(
    pairs: list[tuple[str, str]] | None = None,
) -> tuple[MIState, Interner]:
    rng = np.random.default_rng(3)
    n = 40_000
    a = rng.integers(0, 4, n)
    b = rng.integers(0, 4, n)
    c = rng.integers(0, 4, n)  # noise
    p = 0.02 + 0.05 * (a == 0) + 0.05 * (b == 1)
    y = (rng.random(n) < p).astype(np.int8)
    interner = Interner()
    encoded = interner.encode([{"a": f"a{i}", "b": f"b{j}", "c": f"c{k}"} for i, j, k in zip(a, b, c, strict=True)])
    settings = load_settings(env={})
    mi = MIState(mi_config_from(settings))
    # every pair counted (online they rotate in): strong gates drop a field only once its pairs were
    mi.set_pairs([("a", "b"), ("a", "c"), ("b", "c")] if pairs is None else pairs)
    mi.update(encoded, y, np.full(n, 1_700_000_000_000, dtype=np.int64))
    return mi, interner


def test_closed_values_are_published_only_for_fields_the_gates_keep_open() -> None:
    mi, _ = _mi_with_two_informative_fields()
    builder = MaskBuilder(load_settings(env={"FEATSIEVE_PROTECTED_FIELDS": "c"}))
    msg, changed = builder.build(mi, _report(windows=2, auc=0.7), _Versions(), watermark_ms=0)
    assert changed and msg.version == 1
    assert msg.policy is not None and msg.policy["gate_evidence"] == "strong"
    a, b, c = msg.fields["a"], msg.fields["b"], msg.fields["c"]
    assert a.keep and b.keep and c.keep, (a, b, c)
    assert a.closed_values == ("a3",) and b.closed_values is None
    # c is kept (protected) though its field gate is closed: all its values read as closed, and
    # publishing them would make apply() drop a field the mask keeps
    assert c.closed_values is None and c.gate_open == 0.0
    # unprotected, the strong gates' closed field gate drops c (MI does not vouch for it)
    msg, _ = MaskBuilder(load_settings(env={})).build(mi, _report(windows=2, auc=0.7), _Versions(), watermark_ms=0)
    assert (msg.fields["c"].keep, msg.fields["c"].reason, msg.fields["c"].closed_values) == (False, "gate_closed", None)
    # before c's pairs were counted (online, pairs rotate through the MI state) the same gates do not
    # drop it: an interaction of c with a field carrying no signal alone would be invisible to MI
    young, _ = _mi_with_two_informative_fields(pairs=[("a", "b")])
    msg, _ = MaskBuilder(load_settings(env={})).build(young, _report(windows=2, auc=0.7), _Versions(), watermark_ms=0)
    assert msg.fields["c"].keep and msg.fields["c"].reason != "gate_closed", msg.fields["c"]


def _report(windows: int, auc: float) -> dict[str, object]:
    return {
        "field_gates": {"a": 1.0, "b": 1.0, "c": 0.0},
        "closed_values": {"a": ["a3"], "c": ["c0", "c1", "c2", "c3"]},
        "metrics": {"windows": float(windows), "auc_ungated": auc},
        "examples": 40_000,
    }


def test_gates_that_close_a_field_mi_proves_informative_get_no_vote() -> None:
    mi, _ = _mi_with_two_informative_fields()
    report = _report(windows=2, auc=0.7)
    report["field_gates"] = {"a": 1.0, "b": 0.0, "c": 0.0}
    msg, _ = MaskBuilder(load_settings(env={})).build(mi, report, _Versions(), watermark_ms=0)
    assert msg.policy is not None and msg.policy["gate_evidence"] == "weak"
    assert msg.fields["b"].keep and all(f.closed_values is None for f in msg.fields.values())


def test_gates_that_have_not_earned_a_vote_close_no_value_and_the_mask_says_so() -> None:
    mi, _ = _mi_with_two_informative_fields()
    for report, strength in ((_report(windows=1, auc=0.7), "weak"), (_report(windows=5, auc=0.5), "weak")):
        msg, _ = MaskBuilder(load_settings(env={})).build(mi, report, _Versions(), watermark_ms=0)
        assert msg.policy is not None and msg.policy["gate_evidence"] == strength
        assert msg.policy["mode"] == "budget" and msg.policy["drop_budget"] == 0.001
        assert all(f.closed_values is None for f in msg.fields.values())


def test_no_gate_report_means_no_closed_values() -> None:
    mi, _ = _mi_with_two_informative_fields()
    msg, _ = MaskBuilder(load_settings(env={})).build(mi, None, _Versions(), watermark_ms=0)
    assert all(f.closed_values is None and f.gate_open is None for f in msg.fields.values())


def test_closed_values_keep_their_json_type_from_the_events_to_the_mask() -> None:
    # the interner remembers each value as the event carried it; the mask carries its JSON type
    interner = Interner()
    values = ["3", 3, 3.0, 2.5, True, "true", 1]
    interner.encode([{"a": v} for v in values])
    hashes = [value_hash(v) for v in values]
    report = named_gate_report({"closed_values": {0: hashes}, "field_gates": {0: 1.0}}, interner)
    assert report is not None
    closed = report["closed_values"]["a"]
    # 3 and 3.0 are one value by the rule; True and 1, "3" and 3 are not
    assert closed == [True, 1, 2.5, 3, "3", "true"]
    assert [type(v) for v in closed] == [bool, int, float, int, str, str]

    mi, _ = _mi_with_two_informative_fields()
    msg, _ = MaskBuilder(load_settings(env={})).build(
        mi, {**report, "field_gates": {"a": 1.0, "b": 1.0}, "metrics": STRONG}, _Versions(), watermark_ms=0)
    raw = encode(msg)
    assert b'"closed_values":[true,1,2.5,3,"3","true"]' in raw
    published = decode(raw)
    assert apply(published, {"a": 3.0}) == {"a": None}
    assert apply(published, {"a": 1}) == {"a": None}
    assert apply(published, {"a": "1"}) == {"a": "1"}
    assert apply(published, {"a": False}) == {"a": False}


def test_a_closed_value_changing_type_is_a_mask_change() -> None:
    mi, _ = _mi_with_two_informative_fields()
    builder = MaskBuilder(load_settings(env={}))
    report = {"field_gates": {"a": 1.0, "b": 1.0}, "closed_values": {"a": [1]}, "metrics": STRONG, "examples": 1}
    first, changed = builder.build(mi, report, _Versions(), watermark_ms=0)
    assert changed
    builder.published(first)
    _, changed = builder.build(mi, {**report, "closed_values": {"a": [1.0]}}, _Versions(), watermark_ms=0)
    assert not changed  # the same value by the rule
    _, changed = builder.build(mi, {**report, "closed_values": {"a": [True]}}, _Versions(), watermark_ms=0)
    assert changed  # True == 1 in Python, but not in the mask


def test_instances_vote_on_closed_values_by_type() -> None:
    def report(values: list[object]) -> dict[str, object]:
        return {"field_gates": {"a": 1.0}, "closed_values": {"a": values}, "metrics": {}, "examples": 10}

    # one instance closes True, another 1, the third nothing: neither value has a majority
    assert combine_gate_reports([report([True]), report([1]), report([])])["closed_values"]["a"] == []
    # 1 and 1.0 are one value: two of three instances close it
    merged = combine_gate_reports([report([1]), report([1.0]), report(["1"])])
    assert merged["closed_values"]["a"] == [1]
    assert typed_closed_values([2**70, "x"]) == ["x"]  # a mask cannot carry it: serving passes it
