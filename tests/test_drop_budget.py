"""The default mask rule (mode ``budget``): drop only what, with confidence, costs less than the budget.

Every rule of models/drop_budget.py and docs/policy.md has a test here: under-powered evidence is
kept, a mask is never empty, the dropped set's bound stays within the budget, pairs keep their
fields, gates only vote once they have earned it, hysteresis never holds a field the budget test
would refuse, and the evidence builder the daemon and ``evaluate`` share.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.evidence import FieldEvidence, GateEvidence, auc_budget_nats, build_evidence, click_rate
from models.interning import Interner
from models.mi import MIConfig, MIState
from models.policy import REASONS, MaskPolicy, PolicyConfig

N, POS = 200_000, 6_000  # 3% CTR


def ev(name: str, score: float, sd: float = 1e-5, *, examples: int = N, positives: int = POS,
       card: int = 10, gate: float | None = None, pair: str | None = None, pair_z: float = 0.0) -> FieldEvidence:
    z = score / sd if sd > 0 else 0.0
    return FieldEvidence(name=name, score=score, z=z, sd=sd, examples=examples, positives=positives,
                         cardinality=card, gate_open=gate, pair_with=pair, pair_gain=1e-3 if pair else 0.0,
                         pair_z=pair_z)


def strong_field(name: str = "strong") -> FieldEvidence:
    return ev(name, 2e-2, 1e-4)


def decide(evidence: list[FieldEvidence], policy: MaskPolicy | None = None, gates: str = "none") -> dict[str, tuple[bool, str]]:
    d = (policy or MaskPolicy(PolicyConfig())).update(evidence, gates)
    return {n: (f.keep, f.reason) for n, f in d.fields.items()}


def test_the_budget_is_the_information_whose_loss_costs_the_stated_auc() -> None:
    evidence = [strong_field(), ev("b", 1e-2, 1e-4)]
    p = click_rate(evidence)
    nats = auc_budget_nats(evidence, 0.002, 2.0)
    # binormal check: AUC(I) = Phi(sqrt(I / p(1-p))); losing `nats` of the proven information costs 0.002
    proven = sum(e.score - 2.0 * e.sd for e in evidence)

    def auc(info: float) -> float:
        return 0.5 * (1 + math.erf(math.sqrt(info / (p * (1 - p))) / math.sqrt(2)))

    assert auc(proven) - auc(proven - nats) == pytest.approx(0.002, rel=0.05)
    assert auc_budget_nats([ev("noise", 0.0, 1e-4)], 0.002, 2.0) == 0.0  # nothing proven: nothing cheap


def test_noise_is_dropped_and_signal_kept() -> None:
    out = decide([strong_field(), ev("noise1", 1e-6, 1e-5), ev("noise2", -2e-6, 1e-5)])
    assert out == {"strong": (True, "exceeds_drop_budget"), "noise1": (False, "within_drop_budget"),
                   "noise2": (False, "within_drop_budget")}


@pytest.mark.parametrize("weak", [
    ev("weak", 0.0, examples=500, positives=100),  # too few examples
    ev("weak", 0.0, positives=10),  # too few positives
    ev("weak", math.nan),
    ev("weak", 0.0, sd=1e-2),  # too wide to show it fits the budget even alone
], ids=["few-examples", "few-positives", "nan-score", "wide"])
def test_under_powered_evidence_is_kept(weak: FieldEvidence) -> None:
    policy = MaskPolicy(PolicyConfig(initial_keep=False))
    assert decide([strong_field(), weak], policy)["weak"] == (True, "insufficient_evidence")


def test_the_dropped_set_never_exceeds_the_budget_and_the_cheapest_go_first() -> None:
    policy = MaskPolicy(PolicyConfig())
    fields = [strong_field()] + [ev(f"f{i}", i * 2e-5, 2e-5) for i in range(12)]
    d = policy.update(fields, "none")
    dropped = [f for f in fields if not d.fields[f.name].keep]
    assert dropped and d.drop_budget is not None and d.drop_bound is not None
    bound = sum(f.score for f in dropped) + 2.0 * math.sqrt(sum(f.sd**2 for f in dropped))
    assert bound == pytest.approx(d.drop_bound) and bound <= d.drop_budget * (1 - 0.2)
    kept_scores = [f.score for f in fields[1:] if d.fields[f.name].keep]
    assert min(kept_scores) > max(f.score for f in dropped)  # cheapest first
    assert {d.fields[f.name].reason for f in fields[1:] if d.fields[f.name].keep} == {"exceeds_drop_budget"}


def test_a_significant_pair_keeps_both_fields_unless_the_partner_is_id_like() -> None:
    base = [strong_field(), ev("xa", 0.0, pair="xb", pair_z=50.0), ev("xb", 0.0, pair="xa", pair_z=50.0)]
    out = decide(base)
    assert out["xa"] == (True, "pair_with:xb") and out["xb"] == (True, "pair_with:xa")
    chance = [strong_field(), ev("a", 0.0, pair="b", pair_z=4.5), ev("b", 0.0, pair="a", pair_z=4.5)]
    assert not decide(chance)["a"][0]  # below pair_min_z (6): a chance gain among many pairs
    ident = [strong_field(), ev("a", 0.0, pair="id", pair_z=50.0), ev("id", 0.0, card=N, pair="a", pair_z=50.0)]
    out = decide(ident)
    assert out["a"] == (False, "within_drop_budget") and out["id"] == (False, "id_like")


def test_id_like_fields_are_dropped_without_drawing_on_the_budget() -> None:
    policy = MaskPolicy(PolicyConfig())
    d = policy.update([strong_field(), ev("req", 0.0, sd=5e-4, card=N // 2)], "none")
    assert (d.fields["req"].keep, d.fields["req"].reason) == (False, "id_like") and d.drop_bound == 0.0


@pytest.mark.parametrize("strength", ["none", "weak"])
def test_gates_without_a_vote_neither_keep_nor_drop(strength: str) -> None:
    out = decide([strong_field(), ev("n", 0.0, gate=1.0), ev("w", 0.0, sd=5e-4, gate=0.0)], gates=strength)
    assert out["n"] == (False, "within_drop_budget")
    assert out["w"] == (True, "insufficient_evidence")


def test_strong_gates_keep_an_open_field_and_drop_a_closed_one_mi_cannot_vouch_for() -> None:
    out = decide([strong_field(), ev("open", 0.0, gate=1.0), ev("wide", 0.0, sd=5e-4, gate=0.0),
                  ev("site", 3e-3, sd=1e-4, gate=0.0)], gates="strong")
    assert out["open"] == (True, "gate_open")
    assert out["wide"] == (False, "gate_closed")
    assert out["site"] == (True, "exceeds_drop_budget")  # MI proves it is worth more than the budget


def test_gate_strength_needs_windows_and_a_model_better_than_chance() -> None:
    policy = MaskPolicy(PolicyConfig(gate_min_windows=2, gate_min_auc=0.55))
    gates = {"a": 1.0}
    assert policy.gate_strength(None) == "none"
    assert policy.gate_strength(GateEvidence(field_gates={}, windows=3, auc=0.8)) == "none"
    assert policy.gate_strength(GateEvidence(field_gates=gates, windows=1, auc=0.8)) == "weak"
    assert policy.gate_strength(GateEvidence(field_gates=gates, windows=2, auc=0.52)) == "weak"
    assert policy.gate_strength(GateEvidence(field_gates=gates, windows=2, auc=None)) == "weak"
    assert policy.gate_strength(GateEvidence(field_gates=gates, windows=2, auc=0.55)) == "strong"
    # gates that close a field MI shows is informative have not earned a vote on the others
    sure = [ev("a", 5e-3, 1e-4), ev("b", 0.0, 1e-4)]
    assert policy.gate_strength(GateEvidence(field_gates={"a": 0.0, "b": 1.0}, windows=2, auc=0.8), sure) == "weak"
    assert policy.gate_strength(GateEvidence(field_gates={"a": 1.0, "b": 0.0}, windows=2, auc=0.8), sure) == "strong"
    # one of three significant fields closed: a cold model's slip, not a contradiction
    three = [ev("a", 5e-3, 1e-4), ev("c", 4e-3, 1e-4), ev("d", 3e-3, 1e-4)]
    one = GateEvidence(field_gates={"a": 0.0, "c": 1.0, "d": 1.0}, windows=2, auc=0.8)
    assert policy.gate_strength(one, three) == "strong"
    two = GateEvidence(field_gates={"a": 0.0, "c": 0.0, "d": 1.0}, windows=2, auc=0.8)
    assert policy.gate_strength(two, three) == "weak"
    # gates whose own closings cost the model more than the drop budget have not earned a vote
    assert policy.gate_strength(GateEvidence(field_gates=gates, windows=2, auc=0.7, auc_gated=0.697)) == "weak"
    assert policy.gate_strength(GateEvidence(field_gates=gates, windows=2, auc=0.7, auc_gated=0.699)) == "strong"


@pytest.mark.parametrize("mode", ["budget", "mi", "gates", "both", "either"])
def test_no_mode_ever_decides_an_empty_mask(mode: str) -> None:
    policy = MaskPolicy(PolicyConfig(mode=mode))
    # every field is noise, and the gates close all of them
    evidence = [ev(f"n{i}", 0.0, gate=0.0, card=N if i == 0 else 10) for i in range(4)]
    d = policy.update(evidence, "strong")
    assert d.kept == tuple(sorted(e.name for e in evidence))
    assert {f.reason for f in d.fields.values()} == {"empty_mask_refused"}
    assert "empty_mask_refused" in REASONS


def test_hysteresis_holds_a_drop_but_never_one_the_budget_refuses() -> None:
    sd = 2e-6
    policy = MaskPolicy(PolicyConfig())
    budget = policy.update([strong_field(), ev("f", 0.0, sd)], "none").drop_budget
    assert budget is not None and budget > 10 * sd
    assert not policy.current()["f"]
    # a kept field needs 0.8 of the budget; a dropped one stays dropped up to the whole budget
    near = budget * 0.9 - 2 * sd
    d = policy.update([strong_field(), ev("f", near, sd)], "none")
    assert (d.fields["f"].keep, d.fields["f"].reason) == (False, "within_drop_budget")
    fresh = MaskPolicy(PolicyConfig()).update([strong_field(), ev("f", near, sd)], "none")
    assert (fresh.fields["f"].keep, fresh.fields["f"].reason) == (True, "exceeds_drop_budget")
    over = policy.update([strong_field(), ev("f", budget * 1.1, sd)], "none")
    assert (over.fields["f"].keep, over.fields["f"].reason) == (True, "exceeds_drop_budget")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e-4, 3e-3), st.floats(1e-6, 4e-4)), min_size=1, max_size=12),
       st.integers(0, 2**31))
def test_decisions_never_depend_on_order_and_the_bound_always_holds(fields: list[tuple[float, float]], seed: int) -> None:
    evidence = [strong_field()] + [ev(f"f{i}", s, sd) for i, (s, sd) in enumerate(fields)]
    shuffled = list(evidence)
    np.random.default_rng(seed).shuffle(shuffled)
    a, b = MaskPolicy(PolicyConfig()), MaskPolicy(PolicyConfig())
    for _ in range(2):  # a second update exercises the hysteresis
        da, db = a.update(evidence, "none"), b.update(shuffled, "none")
        assert da.fields == db.fields
        dropped = [e for e in evidence if da.fields[e.name].reason == "within_drop_budget"]
        assert da.drop_budget is not None
        if dropped:
            bound = sum(e.score for e in dropped) + 2.0 * math.sqrt(sum(e.sd**2 for e in dropped))
            assert bound <= da.drop_budget * (1 + 1e-9)
    back = MaskPolicy.restore(PolicyConfig(), pickle.loads(pickle.dumps(a.snapshot())))
    assert back.update(evidence, "none").fields == a.update(evidence, "none").fields


def test_evidence_builder_takes_the_best_pair_and_the_noise_scale() -> None:
    rng = np.random.default_rng(3)
    n = 30_000
    xa, xb, c = rng.integers(0, 2, n), rng.integers(0, 2, n), rng.integers(0, 4, n)
    labels = (rng.random(n) < np.where(xa ^ xb, 0.15, 0.03) + 0.01 * c).astype(np.int8)
    rows = [{"xa": int(a), "xb": int(b), "c": int(k)} for a, b, k in zip(xa, xb, c, strict=True)]
    state = MIState(MIConfig(block_ms=0, pairs_top_n=0))
    state.set_pairs([("xa", "xb"), ("c", "xa"), ("c", "xb")])
    state.update(Interner().encode(rows), labels, np.zeros(n, np.int64))
    scores, pairs = state.scores_and_pairs()
    evidence = {e.name: e for e in build_evidence(scores, pairs, GateEvidence(field_gates={"c": 1.0}))}
    assert evidence["xa"].pair_with == "xb" and evidence["xb"].pair_with == "xa"
    assert evidence["xa"].pair_z > 20 and evidence["c"].gate_open == 1.0 and evidence["xa"].gate_open is None
    for e in evidence.values():
        assert e.sd > 0 and e.z == pytest.approx(e.score / e.sd)


def test_budget_mode_drops_a_near_duplicate_only_through_the_budget() -> None:
    twin = FieldEvidence(name="copy", score=2e-2, z=200.0, sd=1e-4, examples=N, positives=POS,
                         cardinality=10, redundant_with="strong")
    budget = MaskPolicy(PolicyConfig(drop_redundant=True)).update([strong_field(), twin], "none")
    assert (budget.fields["copy"].keep, budget.fields["copy"].reason) == (True, "exceeds_drop_budget")
    voting = MaskPolicy(PolicyConfig(mode="mi", drop_redundant=True)).update([strong_field(), twin], "none")
    assert (voting.fields["copy"].keep, voting.fields["copy"].reason) == (False, "redundant_with:strong")


def test_a_field_whose_interaction_with_an_informative_field_is_unmeasured_is_kept() -> None:
    """Frappe's context fields: no signal alone, their pairs with the item too wide to count exactly."""
    ctx = FieldEvidence(name="daytime", score=0.0, z=0.0, sd=1e-5, examples=N, positives=POS, cardinality=7,
                        unmeasured_with="strong")
    d = decide([strong_field(), ctx])
    assert d["daytime"] == (True, "insufficient_evidence")
    # strong gates have measured it given every other field: their closed gate drops it
    closed = FieldEvidence(**{**ctx.__dict__, "gate_open": 0.0})
    assert decide([strong_field(), closed], gates="strong")["daytime"] == (False, "gate_closed")


def test_strong_gates_drop_a_field_only_once_each_of_its_pairs_was_counted() -> None:
    """Online, pairs rotate through the MI state: a pure interaction of two fields that carry no
    signal alone (the default generator's XOR pair) is invisible until its turn comes, and a young
    gate model that has not learnt it closes both fields."""
    xor = FieldEvidence(name="xor_a", score=0.0, z=0.0, sd=1e-6, examples=N, positives=POS, cardinality=2,
                        gate_open=0.0, pairs_uncounted=1)
    assert decide([strong_field(), xor], gates="strong")["xor_a"][1] != "gate_closed"
    counted = FieldEvidence(**{**xor.__dict__, "pairs_uncounted": 0})
    assert decide([strong_field(), counted], gates="strong")["xor_a"] == (False, "gate_closed")


def test_the_evidence_builder_counts_the_pairs_not_counted_yet() -> None:
    rng = np.random.default_rng(5)
    n = 5_000
    rows = [{"a": int(x), "b": int(y), "c": int(z)} for x, y, z in rng.integers(0, 3, (n, 3))]
    labels = (rng.random(n) < 0.1).astype(np.int8)
    state = MIState(MIConfig(block_ms=0, pairs_top_n=0))
    state.set_pairs([("a", "b")])
    state.update(Interner().encode(rows), labels, np.zeros(n, np.int64))
    scores, pairs = state.scores_and_pairs()
    uncounted = {e.name: e.pairs_uncounted for e in build_evidence(scores, pairs)}
    assert uncounted == {"a": 1, "b": 1, "c": 2}
    assert {e.name: e.pairs_uncounted for e in build_evidence(scores, [])} == {"a": 2, "b": 2, "c": 2}


def test_the_evidence_builder_names_an_unmeasured_interaction() -> None:
    rng = np.random.default_rng(4)
    n = 20_000
    wide = rng.integers(0, 3000, n)  # counted exactly alone; with ctx, more joint values than max_values
    ctx, other = rng.integers(0, 7, n), rng.integers(0, 3, n)
    labels = (rng.random(n) < 0.02 + 0.3 * (wide % 7 == 0)).astype(np.int8)
    rows = [{"wide": int(w), "ctx": int(c), "other": int(o)} for w, c, o in zip(wide, ctx, other, strict=True)]
    state = MIState(MIConfig(block_ms=0, pairs_top_n=0, max_values=4096))
    state.set_pairs([("ctx", "wide"), ("ctx", "other"), ("other", "wide")])
    state.update(Interner().encode(rows), labels, np.zeros(n, np.int64))
    scores, pairs = state.scores_and_pairs()
    assert {p.fields: p.hashed for p in pairs} == {("ctx", "wide"): True, ("ctx", "other"): False,
                                                  ("other", "wide"): True}
    evidence = {e.name: e for e in build_evidence(scores, pairs)}
    assert evidence["ctx"].unmeasured_with == "wide" and evidence["wide"].unmeasured_with is None
    measured = {e.name: e for e in build_evidence(scores, [p for p in pairs if not p.hashed])}
    assert measured["ctx"].unmeasured_with == "wide"  # not counted at all is unmeasured too


def test_a_pair_counted_too_thinly_to_show_an_interaction_worth_the_budget_keeps_the_field() -> None:
    thin = FieldEvidence(name="ctx", score=0.0, z=0.0, sd=1e-5, examples=N, positives=POS, cardinality=7,
                         interaction_sd=1e-2)
    assert decide([strong_field(), thin])["ctx"] == (True, "insufficient_evidence")
    enough = FieldEvidence(**{**thin.__dict__, "interaction_sd": 1e-6})
    assert decide([strong_field(), enough])["ctx"] == (False, "within_drop_budget")


def test_a_closed_gate_on_a_near_duplicate_is_no_contradiction() -> None:
    policy = MaskPolicy(PolicyConfig())
    copy = FieldEvidence(name="b", score=5e-3, z=50.0, sd=1e-4, examples=N, positives=POS, redundant_with="a")
    gates = GateEvidence(field_gates={"a": 1.0, "b": 0.0}, windows=2, auc=0.8)
    assert policy.gate_strength(gates, [ev("a", 5e-3, 1e-4), copy]) == "strong"
