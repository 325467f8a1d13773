"""MaskPolicy's voting modes (mi, gates, both, either): every decision rule, hysteresis, budget,
change cap, order and restore. The default mode, ``budget``, has its own tests
(tests/test_drop_budget.py); here ``PolicyConfig`` defaults to mode ``both``."""

from __future__ import annotations

import json
import math
import pickle
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.policy import (
    MODES,
    REASONS,
    FieldEvidence,
    MaskDecision,
    MaskPolicy,
    PolicyStateError,
)
from models.policy import PolicyConfig as _PolicyConfig


def PolicyConfig(**kw: object) -> _PolicyConfig:  # noqa: N802 - stands in for the class
    """The voting-mode config these tests exercise: mode ``both`` unless given; one field may be
    dropped alone (the empty-mask refusal has its own tests in tests/test_drop_budget.py)."""
    return _PolicyConfig(**{"mode": "both", "refuse_empty": False, **kw})  # type: ignore[arg-type]


ENTER, EXIT = PolicyConfig().enter_threshold, PolicyConfig().exit_threshold
MIN_Z, EXIT_Z = PolicyConfig().min_z, PolicyConfig().exit_z
FIXED_REASONS = frozenset(r for r in REASONS if not r.endswith("<field>"))
SETTINGS = settings(max_examples=150, deadline=None)


def ev(
    name: str,
    score: float = 1e-3,
    *,
    z: float = 10.0,
    examples: int = 10_000,
    positives: int = 500,
    gate: float | None = None,
    twin: str | None = None,
) -> FieldEvidence:
    return FieldEvidence(
        name=name,
        score=score,
        mi=max(score, 0.0),
        z=z,
        examples=examples,
        positives=positives,
        cardinality=10,
        gate_open=gate,
        redundant_with=twin,
    )


def decide(policy: MaskPolicy, *evidence: FieldEvidence) -> MaskDecision:
    return policy.update(list(evidence))


def keeps(decision: MaskDecision) -> dict[str, bool]:
    return {n: d.keep for n, d in decision.fields.items()}


def reasons(decision: MaskDecision) -> dict[str, str]:
    return {n: d.reason for n, d in decision.fields.items()}


def dropped_policy(*names: str, config: PolicyConfig | None = None) -> MaskPolicy:
    """A policy that has already dropped ``names`` (score 0)."""
    policy = MaskPolicy(config or PolicyConfig())
    decide(policy, *(ev(n, 0.0) for n in names))
    assert not any(policy.current()[n] for n in names)
    return policy


# ------------------------------------------------------------------ defaults
def test_defaults_are_the_documented_ones() -> None:
    assert _PolicyConfig().mode == "budget"
    cfg = PolicyConfig()
    assert (cfg.mode, cfg.enter_threshold, cfg.exit_threshold) == ("both", 2e-4, 1e-4)
    assert (cfg.min_z, cfg.exit_z, cfg.min_examples, cfg.min_positives) == (4.0, 2.0, 2000, 50)
    assert (cfg.gate_enter, cfg.gate_exit, cfg.initial_keep) == (0.5, 0.2, True)
    assert cfg.max_changes_per_update is None and cfg.budget_k is None
    assert cfg.budget_share is None and cfg.drop_redundant is False


# ----------------------------------------------------------------- protected
def test_protected_field_is_kept_whatever_the_evidence() -> None:
    policy = MaskPolicy(PolicyConfig(protected=["site"], initial_keep=False))
    for e in (ev("site", 0.0), ev("site", math.nan, examples=0, positives=0), ev("site", z=-9)):
        d = decide(policy, e).fields["site"]
        assert (d.keep, d.reason) == (True, "protected")


def test_protected_bypasses_the_change_cap_and_budget() -> None:
    cfg = PolicyConfig(protected=["p"], max_changes_per_update=1, budget_k=1)
    policy = dropped_policy("p", "a", config=PolicyConfig())
    policy = MaskPolicy.restore(cfg, policy.snapshot())
    d = decide(policy, ev("p", 0.0), ev("a", 1e-2))
    # p re-enters although a's keep already uses the cap; the budget slot is p's.
    assert d.fields["p"].keep and d.fields["p"].reason == "protected"
    assert (d.fields["a"].keep, d.fields["a"].reason) == (False, "over_budget")
    assert d.kept == ("p",) and d.changed == ("p",)


# ------------------------------------------------------ insufficient evidence
@pytest.mark.parametrize(
    "evidence",
    [
        ev("f", 0.0, examples=1999, positives=500),
        ev("f", 0.0, examples=10_000, positives=49),
        ev("f", math.nan),
        ev("f", math.inf),
        ev("f", -math.inf),
        ev("f", 0.0, z=math.nan),
    ],
    ids=["few-examples", "few-positives", "nan-score", "inf-score", "-inf-score", "nan-z"],
)
@pytest.mark.parametrize("initial_keep", [True, False])
def test_insufficient_evidence_keeps_a_new_field_whatever_initial_keep(
    evidence: FieldEvidence, initial_keep: bool
) -> None:
    d = decide(MaskPolicy(PolicyConfig(initial_keep=initial_keep)), evidence).fields["f"]
    assert (d.keep, d.reason) == (True, "insufficient_evidence")


def test_insufficient_evidence_keeps_even_a_field_dropped_before() -> None:
    """Under-powered evidence is never a reason to drop: a field whose evidence thins out is kept."""
    policy = dropped_policy("f")  # initial_keep is True: the drop is a real decision
    assert policy.current()["f"] is False
    d = decide(policy, ev("f", 1.0, examples=10, positives=5)).fields["f"]
    assert (d.keep, d.reason) == (True, "insufficient_evidence")
    policy = MaskPolicy(PolicyConfig(initial_keep=False))
    decide(policy, ev("f", 1e-2))
    d = decide(policy, ev("f", 0.0, examples=10, positives=5)).fields["f"]
    assert (d.keep, d.reason) == (True, "insufficient_evidence")


def test_exact_minimum_evidence_is_enough() -> None:
    d = decide(MaskPolicy(PolicyConfig()), ev("f", 0.0, examples=2000, positives=50)).fields["f"]
    assert (d.keep, d.reason) == (False, "score_below_exit")


def test_gates_mode_without_a_gate_window_keeps() -> None:
    policy = MaskPolicy(PolicyConfig(mode="gates", initial_keep=False))
    d = decide(policy, ev("f", 1.0, gate=None)).fields["f"]
    assert (d.keep, d.reason) == (True, "insufficient_evidence")


@pytest.mark.parametrize("strength", ["weak", "none"])
def test_gates_that_have_not_earned_a_vote_never_drop(strength: str) -> None:
    for mode in ("gates", "both"):
        policy = MaskPolicy(PolicyConfig(mode=mode))
        d = policy.update([ev("f", 1e-2, gate=0.0)], gate_evidence=strength).fields["f"]
        assert d.keep, (mode, strength, d.reason)
    strong = MaskPolicy(PolicyConfig(mode="both")).update([ev("f", 1e-2, gate=0.0)], gate_evidence="strong")
    assert (strong.fields["f"].keep, strong.fields["f"].reason) == (False, "gate_closed")


# ---------------------------------------------------------------- hysteresis
def test_band_score_holds_either_decision() -> None:
    kept = decide(MaskPolicy(PolicyConfig()), ev("f", 1.5e-4)).fields["f"]
    assert (kept.keep, kept.reason) == (True, "held_in_band")
    dropped = decide(dropped_policy("f"), ev("f", 1.5e-4)).fields["f"]
    assert (dropped.keep, dropped.reason) == (False, "held_in_band")


def test_thresholds_are_inclusive_as_documented() -> None:
    # A kept field at exactly the exit threshold stays; just below, it goes.
    assert decide(MaskPolicy(PolicyConfig()), ev("f", EXIT)).fields["f"].keep
    d = decide(MaskPolicy(PolicyConfig()), ev("f", math.nextafter(EXIT, 0))).fields["f"]
    assert (d.keep, d.reason) == (False, "score_below_exit")
    # A dropped field at exactly the enter threshold and min_z comes back.
    d = decide(dropped_policy("f"), ev("f", ENTER, z=MIN_Z)).fields["f"]
    assert (d.keep, d.reason) == (True, "score_above_enter")
    d = decide(dropped_policy("f"), ev("f", math.nextafter(ENTER, 0), z=MIN_Z)).fields["f"]
    assert (d.keep, d.reason) == (False, "held_in_band")


band_scores = st.floats(EXIT, ENTER, exclude_min=True, exclude_max=True)


@SETTINGS
@given(
    first=st.booleans(),
    scores=st.lists(band_scores, min_size=1, max_size=30),
    zs=st.lists(st.floats(EXIT_Z, 1e3), min_size=30, max_size=30),
)
def test_scores_between_the_thresholds_never_flap(
    first: bool, scores: list[float], zs: list[float]
) -> None:
    policy = MaskPolicy(PolicyConfig())
    decide(policy, ev("f", 1e-2 if first else 0.0))  # first decision: keep or drop
    for s, z in zip(scores, zs, strict=False):
        d = decide(policy, ev("f", s, z=z))
        assert d.changed == () and d.fields["f"].keep is first
        assert d.fields["f"].reason == "held_in_band"


@SETTINGS
@given(
    first=st.booleans(),
    steps=st.lists(
        st.tuples(st.floats(EXIT, 1.0), st.floats(EXIT_Z, MIN_Z, exclude_max=True)),
        min_size=1,
        max_size=30,
    ),
)
def test_significance_between_exit_z_and_min_z_never_flaps(
    first: bool, steps: list[tuple[float, float]]
) -> None:
    policy = MaskPolicy(PolicyConfig())
    decide(policy, ev("f", 1e-2 if first else 0.0))
    for s, z in steps:
        d = decide(policy, ev("f", s, z=z))
        assert d.changed == () and d.fields["f"].keep is first


@SETTINGS
@given(
    first=st.booleans(),
    gates=st.lists(st.floats(0.2, 0.5, exclude_max=True), min_size=1, max_size=30),
)
def test_gate_share_between_the_gate_thresholds_never_flaps(
    first: bool, gates: list[float]
) -> None:
    policy = MaskPolicy(PolicyConfig(mode="gates"))
    decide(policy, ev("f", gate=0.9 if first else 0.0))
    for g in gates:
        d = decide(policy, ev("f", gate=g))
        assert d.changed == () and d.fields["f"].keep is first


def test_gate_thresholds() -> None:
    cfg = PolicyConfig(mode="gates")
    d = decide(MaskPolicy(cfg), ev("f", gate=0.19)).fields["f"]
    assert (d.keep, d.reason) == (False, "gate_closed")
    assert decide(MaskPolicy(cfg), ev("f", gate=0.2)).fields["f"].reason == "held_in_band"
    policy = MaskPolicy(PolicyConfig(mode="gates", initial_keep=False))
    assert decide(policy, ev("f", gate=0.49)).fields["f"].keep is False
    d = decide(policy, ev("f", gate=0.5)).fields["f"]
    assert (d.keep, d.reason) == (True, "gate_open")


# ------------------------------------------------------------ entering and z
def test_entering_needs_the_enter_score_and_min_z() -> None:
    d = decide(dropped_policy("f"), ev("f", 1e-2, z=MIN_Z - 0.01)).fields["f"]
    assert (d.keep, d.reason) == (False, "not_significant")
    d = decide(dropped_policy("f"), ev("f", 1e-2, z=MIN_Z)).fields["f"]
    assert (d.keep, d.reason) == (True, "score_above_enter")


def test_a_new_field_with_initial_keep_false_enters_like_a_dropped_one() -> None:
    policy = MaskPolicy(PolicyConfig(initial_keep=False))
    d = decide(policy, ev("a", 1e-2), ev("b", 1e-2, z=3.0), ev("c", 1.5e-4))
    assert keeps(d) == {"a": True, "b": False, "c": False}
    assert d.changed == ("a",)


def test_min_z_minus_inf_disables_the_entry_significance_test() -> None:
    cfg = PolicyConfig(min_z=-math.inf, exit_z=-math.inf)
    policy = dropped_policy("f", config=cfg)
    assert decide(policy, ev("f", 1e-2, z=-50.0)).fields["f"].keep


# ----------------------------------------------------------------- exit rules
def test_kept_field_below_exit_is_dropped() -> None:
    d = decide(MaskPolicy(PolicyConfig()), ev("f", 5e-5)).fields["f"]
    assert (d.keep, d.reason) == (False, "score_below_exit")


def test_kept_noise_field_in_band_is_dropped_as_not_significant() -> None:
    # The case that motivated exit_z: an ID-like field scores 1.5e-4 nats by chance.
    policy = MaskPolicy(PolicyConfig())
    decide(policy, ev("user_id", 1e-3))
    d = decide(policy, ev("user_id", 1.5e-4, z=1.0))
    assert (d.fields["user_id"].keep, d.fields["user_id"].reason) == (False, "not_significant")
    assert d.changed == ("user_id",)


def test_kept_field_with_a_high_score_but_no_significance_is_dropped() -> None:
    d = decide(MaskPolicy(PolicyConfig()), ev("f", 1e-2, z=0.0)).fields["f"]
    assert (d.keep, d.reason) == (False, "not_significant")
    d = decide(MaskPolicy(PolicyConfig()), ev("f", 1e-2, z=-math.inf)).fields["f"]
    assert (d.keep, d.reason) == (False, "not_significant")


def test_exit_z_is_inclusive_and_the_z_band_holds() -> None:
    d = decide(MaskPolicy(PolicyConfig()), ev("f", 1e-2, z=EXIT_Z)).fields["f"]
    assert (d.keep, d.reason) == (True, "held_in_band")
    d = decide(MaskPolicy(PolicyConfig()), ev("f", 1e-2, z=math.nextafter(EXIT_Z, 0))).fields["f"]
    assert (d.keep, d.reason) == (False, "not_significant")
    d = decide(MaskPolicy(PolicyConfig()), ev("f", 1e-2, z=MIN_Z)).fields["f"]
    assert (d.keep, d.reason) == (True, "score_above_enter")


def test_score_below_exit_is_the_reason_when_both_exits_apply() -> None:
    d = decide(MaskPolicy(PolicyConfig()), ev("f", 0.0, z=0.0)).fields["f"]
    assert (d.keep, d.reason) == (False, "score_below_exit")


def test_exit_z_minus_inf_restores_the_old_hold() -> None:
    policy = MaskPolicy(PolicyConfig(exit_z=-math.inf))
    for z in (1.0, -50.0, -math.inf):
        d = decide(policy, ev("f", 1.5e-4, z=z)).fields["f"]
        assert (d.keep, d.reason) == (True, "held_in_band")


def test_not_significant_drops_compete_by_relative_margin() -> None:
    # margins: a (2 - (-5)) / 2 = 3.5, b (1e-4 - 0) / 1e-4 = 1, c (2 - 1.9) / 2 = 0.05
    evidence = [ev("a", 1e-3, z=-5.0), ev("b", 0.0), ev("c", 1e-3, z=1.9)]
    d = MaskPolicy(PolicyConfig(max_changes_per_update=1)).update(evidence)
    assert d.changed == ("a",) and d.deferred == ("b", "c")
    d = MaskPolicy(PolicyConfig(max_changes_per_update=2)).update(evidence)
    assert d.changed == ("a", "b") and d.deferred == ("c",)


def test_significance_does_not_touch_gate_only_decisions() -> None:
    d = decide(MaskPolicy(PolicyConfig(mode="gates")), ev("f", 0.0, z=0.0, gate=0.9))
    assert (d.fields["f"].keep, d.fields["f"].reason) == (True, "gate_open")


# ---------------------------------------------------------------------- modes
def test_mode_mi_ignores_gates() -> None:
    d = decide(MaskPolicy(PolicyConfig(mode="mi")), ev("f", 1e-2, gate=0.0)).fields["f"]
    assert (d.keep, d.reason) == (True, "score_above_enter")


def test_mode_gates_ignores_mi() -> None:
    cfg = PolicyConfig(mode="gates")
    assert decide(MaskPolicy(cfg), ev("f", 0.0, gate=0.9)).fields["f"].keep
    d = decide(MaskPolicy(cfg), ev("f", 1e-2, gate=0.0)).fields["f"]
    assert (d.keep, d.reason) == (False, "gate_closed")


def test_mode_both_needs_every_available_vote() -> None:
    cfg = PolicyConfig(mode="both")
    d = decide(MaskPolicy(cfg), ev("f", 1e-2, gate=0.1)).fields["f"]
    assert (d.keep, d.reason) == (False, "gate_closed")
    d = decide(MaskPolicy(cfg), ev("f", 0.0, gate=0.9)).fields["f"]
    assert (d.keep, d.reason) == (False, "score_below_exit")
    d = decide(MaskPolicy(cfg), ev("f", 1e-2, gate=0.9)).fields["f"]
    assert (d.keep, d.reason) == (True, "score_above_enter")
    d = decide(dropped_policy("f", config=cfg), ev("f", 1e-2, gate=0.3)).fields["f"]
    assert (d.keep, d.reason) == (False, "held_in_band")  # the gate is not yet convinced


def test_mode_either_needs_one_vote() -> None:
    cfg = PolicyConfig(mode="either")
    d = decide(MaskPolicy(cfg), ev("f", 0.0, gate=0.9)).fields["f"]
    assert (d.keep, d.reason) == (True, "gate_open")
    d = decide(MaskPolicy(cfg), ev("f", 1e-2, z=0.0, gate=0.9)).fields["f"]
    assert (d.keep, d.reason) == (True, "gate_open")
    d = decide(MaskPolicy(cfg), ev("f", 1e-2, gate=0.0)).fields["f"]
    assert (d.keep, d.reason) == (True, "score_above_enter")
    d = decide(MaskPolicy(cfg), ev("f", 0.0, gate=0.0)).fields["f"]
    assert d.keep is False and d.reason in ("score_below_exit", "gate_closed")


def field_evidence(names: list[str], with_gates: bool = True) -> st.SearchStrategy:
    scores = st.sampled_from([0.0, 5e-5, EXIT, 1.5e-4, ENTER, 3e-4, 1e-3, 0.05, math.nan])
    zs = st.sampled_from([-math.inf, -1.0, 0.0, 1.0, EXIT_Z, 3.0, MIN_Z, 10.0, math.nan])
    gates = st.sampled_from([None, 0.0, 0.1, 0.2, 0.35, 0.5, 0.9, 1.0]) if with_gates else st.none()
    examples = st.sampled_from([0, 1999, 2000, 50_000])

    def one(name: str) -> st.SearchStrategy:
        return st.builds(
            lambda s, z, g, n, p, t: ev(
                name, s, z=z, gate=g, examples=n, positives=min(p, n), twin=t
            ),
            scores,
            zs,
            gates,
            examples,
            st.sampled_from([0, 49, 50, 1000]),
            st.sampled_from([None, *names]),
        )

    return st.tuples(*(one(n) for n in names)).map(list)


NAMES = ["a", "b", "c", "d", "e"]


@SETTINGS
@given(
    mode=st.sampled_from(["both", "either"]),
    history=st.lists(field_evidence(NAMES, with_gates=False), min_size=1, max_size=4),
)
def test_missing_gate_evidence_is_neutral(mode: str, history: list[list[FieldEvidence]]) -> None:
    with_mode, mi_only = MaskPolicy(PolicyConfig(mode=mode)), MaskPolicy(PolicyConfig(mode="mi"))
    for evidence in history:
        assert with_mode.update(evidence) == mi_only.update(evidence)


# -------------------------------------------------------------------- reasons
configs = st.builds(
    PolicyConfig,
    mode=st.sampled_from(MODES),
    initial_keep=st.booleans(),
    exit_z=st.sampled_from([-math.inf, 0.0, EXIT_Z]),
    max_changes_per_update=st.sampled_from([None, 1, 2]),
    budget_k=st.sampled_from([None, 1, 2, 3]),
    budget_share=st.sampled_from([None, 0.5]),
    drop_redundant=st.booleans(),
    protected=st.sets(st.sampled_from(NAMES), max_size=2),
)


@SETTINGS
@given(cfg=configs, history=st.lists(field_evidence(NAMES), min_size=1, max_size=4))
def test_every_reason_is_machine_readable(
    cfg: PolicyConfig, history: list[list[FieldEvidence]]
) -> None:
    policy = MaskPolicy(cfg)
    for evidence in history:
        d = policy.update(evidence)
        for name, fd in d.fields.items():
            twin = re.fullmatch(r"redundant_with:(.+)", fd.reason)
            assert fd.reason in FIXED_REASONS or (twin and twin.group(1) in d.fields), fd.reason
            assert (fd.reason == "protected") == (name in cfg.protected)
            assert (fd.reason == "change_deferred") == (name in d.deferred)


# ----------------------------------------------------------------- redundancy
def test_redundant_twin_is_dropped_when_the_stronger_is_kept() -> None:
    evidence = [ev("a", 1e-2), ev("b", 5e-3, twin="a")]
    d = MaskPolicy(PolicyConfig(drop_redundant=True)).update(evidence)
    assert keeps(d) == {"a": True, "b": False}
    assert d.fields["b"].reason == "redundant_with:a"
    assert keeps(MaskPolicy(PolicyConfig(drop_redundant=False)).update(evidence)) == {
        "a": True,
        "b": True,
    }


def test_redundancy_never_drops_both_twins() -> None:
    cfg = PolicyConfig(drop_redundant=True)
    d = MaskPolicy(cfg).update([ev("a", 0.0), ev("b", 5e-3, twin="a")])  # a itself dropped
    assert keeps(d) == {"a": False, "b": True}
    d = MaskPolicy(cfg).update([ev("b", 5e-3, twin="a")])  # a not in this update
    assert keeps(d) == {"b": True}


def test_redundancy_spares_protected_insufficient_and_already_dropped_fields() -> None:
    cfg = PolicyConfig(drop_redundant=True, protected=["p"])
    d = MaskPolicy(cfg).update(
        [
            ev("a", 1e-2),
            ev("p", 5e-3, twin="a"),
            ev("q", 5e-3, twin="a", examples=10, positives=1),
            ev("r", 0.0, twin="a"),
        ]
    )
    assert reasons(d) == {
        "a": "score_above_enter",
        "p": "protected",
        "q": "insufficient_evidence",
        "r": "score_below_exit",
    }


def test_redundancy_chain_resolves_strongest_first() -> None:
    # c duplicates b, b duplicates a: b goes, so c (whose twin is no longer kept) stays.
    d = MaskPolicy(PolicyConfig(drop_redundant=True)).update(
        [ev("a", 3e-2), ev("b", 2e-2, twin="a"), ev("c", 1e-2, twin="b")]
    )
    assert keeps(d) == {"a": True, "b": False, "c": True}


# --------------------------------------------------------------------- budget
def test_budget_k_keeps_the_top_by_score() -> None:
    evidence = [ev("a", 1e-3), ev("b", 4e-3), ev("c", 2e-3), ev("d", 3e-3)]
    d = MaskPolicy(PolicyConfig(budget_k=2)).update(evidence)
    assert d.kept == ("b", "d")
    assert reasons(d)["a"] == reasons(d)["c"] == "over_budget"


def test_budget_share_and_the_smaller_limit_wins() -> None:
    evidence = [ev("a", 1e-3), ev("b", 4e-3), ev("c", 2e-3), ev("d", 3e-3)]
    assert MaskPolicy(PolicyConfig(budget_share=0.5)).update(evidence).kept == ("b", "d")
    assert MaskPolicy(PolicyConfig(budget_share=0.5, budget_k=1)).update(evidence).kept == ("b",)
    assert PolicyConfig(budget_share=0.29).budget_limit(100) == 29
    assert PolicyConfig(budget_share=0.5).budget_limit(3) == 1
    assert PolicyConfig().budget_limit(10) is None


def test_budget_ties_break_by_name() -> None:
    d = MaskPolicy(PolicyConfig(budget_k=1)).update([ev("b", 1e-3), ev("a", 1e-3)])
    assert d.kept == ("a",)


def test_budget_counts_protected_fields() -> None:
    cfg = PolicyConfig(budget_k=2, protected=["p"])
    d = MaskPolicy(cfg).update([ev("p", 0.0), ev("a", 1e-3), ev("b", 2e-3)])
    assert d.kept == ("b", "p")


def test_budget_challenger_must_beat_the_incumbent_by_the_band() -> None:
    policy = MaskPolicy(PolicyConfig(budget_k=1))
    decide(policy, ev("a", 3e-4), ev("b", 0.0))  # a kept, b dropped
    d = decide(policy, ev("a", 3e-4), ev("b", 3e-4 + 0.9 * (ENTER - EXIT)))
    assert d.kept == ("a",) and d.fields["b"].reason == "over_budget"
    d = decide(policy, ev("a", 3e-4), ev("b", 3e-4 + 1.1 * (ENTER - EXIT)))
    assert d.kept == ("b",) and d.fields["a"].reason == "over_budget"


@SETTINGS
@given(
    cap=st.sampled_from([None, 1, 2]),
    k=st.integers(1, 3),
    history=st.lists(field_evidence(NAMES), min_size=1, max_size=6),
)
def test_budget_is_never_exceeded_once_met(
    cap: int | None, k: int, history: list[list[FieldEvidence]]
) -> None:
    policy = MaskPolicy(PolicyConfig(budget_k=k, max_changes_per_update=cap, initial_keep=False))
    for evidence in history:
        assert len(policy.update(evidence).kept) <= k


# ----------------------------------------------------------------- change cap
def test_change_cap_applies_the_largest_margins_first_and_defers_the_rest() -> None:
    policy = MaskPolicy(PolicyConfig(max_changes_per_update=1))
    decide(policy, ev("a", 1e-2), ev("b", 1e-2), ev("c", 1e-2))
    evidence = [ev("a", 9e-5), ev("b", 0.0), ev("c", 5e-5)]  # margins 0.1, 1.0, 0.5
    d = policy.update(evidence)
    assert d.changed == ("b",) and d.deferred == ("a", "c")
    assert reasons(d) == {"a": "change_deferred", "b": "score_below_exit", "c": "change_deferred"}
    assert keeps(d) == {"a": True, "b": False, "c": True}  # deferred fields keep their decision
    d = policy.update(evidence)
    assert d.changed == ("c",) and d.deferred == ("a",)
    d = policy.update(evidence)
    assert d.changed == ("a",) and d.deferred == ()
    assert policy.update(evidence).changed == ()


def test_change_cap_ties_break_by_name() -> None:
    d = MaskPolicy(PolicyConfig(max_changes_per_update=1)).update([ev("b", 0.0), ev("a", 0.0)])
    assert d.changed == ("a",) and d.deferred == ("b",)


def test_change_cap_swap_in_a_full_budget_drops_first() -> None:
    policy = MaskPolicy(PolicyConfig(budget_k=1, max_changes_per_update=1))
    decide(policy, ev("a", 3e-4), ev("b", 0.0))
    d = decide(policy, ev("a", 3e-4), ev("b", 1e-2))
    # The keep of b must wait for the slot; the budget is never exceeded in between.
    assert d.changed == ("a",) and d.deferred == ("b",) and d.kept == ()
    d = decide(policy, ev("a", 3e-4), ev("b", 1e-2))
    assert d.changed == ("b",) and d.kept == ("b",)


@SETTINGS
@given(
    cfg=configs,
    history=st.lists(field_evidence(NAMES), min_size=1, max_size=5),
)
def test_changes_never_exceed_the_cap_except_protected(
    cfg: PolicyConfig, history: list[list[FieldEvidence]]
) -> None:
    policy = MaskPolicy(cfg)
    for evidence in history:
        before = policy.current()
        d = policy.update(evidence)
        assert set(d.changed) == {
            n for n, f in d.fields.items() if f.keep != before.get(n, cfg.initial_keep)
        }
        free = [n for n in d.changed if n not in cfg.protected]
        if cfg.max_changes_per_update is not None:
            assert len(free) <= cfg.max_changes_per_update
        assert not set(d.changed) & set(d.deferred)


# ----------------------------------------------------------- order and state
@SETTINGS
@given(
    cfg=configs,
    history=st.lists(field_evidence(NAMES), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_decisions_do_not_depend_on_evidence_order(
    cfg: PolicyConfig, history: list[list[FieldEvidence]], seed: int
) -> None:
    rng = random.Random(seed)
    ordered, shuffled = MaskPolicy(cfg), MaskPolicy(cfg)
    for evidence in history:
        mixed = list(evidence)
        rng.shuffle(mixed)
        a, b = ordered.update(evidence), shuffled.update(mixed)
        assert a == b
        assert list(a.fields) == sorted(a.fields)
    assert repr(ordered.snapshot()) == repr(shuffled.snapshot())


def test_duplicate_evidence_is_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate evidence for field 'a'"):
        MaskPolicy(PolicyConfig()).update([ev("a"), ev("a", 0.0)])


def test_fields_absent_from_an_update_keep_their_state() -> None:
    policy = MaskPolicy(PolicyConfig())
    decide(policy, ev("a", 0.0), ev("b"))
    d = decide(policy, ev("b"))
    assert list(d.fields) == ["b"] and policy.current() == {"a": False, "b": True}
    assert decide(policy, ev("a", 1.5e-4)).fields["a"].keep is False  # still dropped, in band


def test_history_records_changes_and_is_bounded() -> None:
    policy = MaskPolicy(PolicyConfig(history_len=3))
    for s in (1e-2, 1e-2, 0.0, 1e-2, 0.0, 1e-2):
        decide(policy, ev("f", s))
    hist = policy.history("f")
    assert len(hist) == 3 and [h.update for h in hist] == [4, 5, 6]
    assert [(h.keep, h.reason) for h in hist] == [
        (True, "score_above_enter"),
        (False, "score_below_exit"),
        (True, "score_above_enter"),
    ]
    assert policy.updates == 6 and policy.history("unknown") == ()


def play(policy: MaskPolicy, history: list[list[FieldEvidence]]) -> list[MaskDecision]:
    return [policy.update(evidence) for evidence in history]


@SETTINGS
@given(
    cfg=configs,
    before=st.lists(field_evidence(NAMES), min_size=0, max_size=4),
    after=st.lists(field_evidence(NAMES), min_size=1, max_size=4),
)
def test_snapshot_restore_continues_identically(
    cfg: PolicyConfig, before: list[list[FieldEvidence]], after: list[list[FieldEvidence]]
) -> None:
    original = MaskPolicy(cfg)
    play(original, before)
    snap = pickle.loads(pickle.dumps(original.snapshot()))
    restored = MaskPolicy.restore(cfg, snap)
    # Compared by repr: a NaN score in the history is never == itself.
    assert repr(restored.snapshot()) == repr(original.snapshot())
    assert play(restored, after) == play(original, after)
    assert repr(restored.snapshot()) == repr(original.snapshot())


def test_snapshot_is_plain_json_data() -> None:
    policy = MaskPolicy(PolicyConfig())
    decide(policy, ev("a", 0.0), ev("b"))
    snap = policy.snapshot()
    again = MaskPolicy.restore(PolicyConfig(), json.loads(json.dumps(snap)))
    assert again.snapshot() == snap


def test_snapshot_from_before_exit_z_restores() -> None:
    # Written by the policy before exit_z existed: the state is decisions only.
    old = {
        "format": 1,
        "updates": 7,
        "keep": {"site": True, "user_id": True, "hour": False},
        "history": {
            "site": [[1, True, "score_above_enter", 0.003]],
            "user_id": [[1, True, "held_in_band", 0.00015]],
            "hour": [[1, True, "insufficient_evidence", 0.0], [5, False, "score_below_exit", 0.0]],
        },
    }
    policy = MaskPolicy.restore(PolicyConfig(), old)
    assert policy.updates == 7 and policy.current() == {
        "hour": False,
        "site": True,
        "user_id": True,
    }
    d = decide(policy, ev("site", 3e-3), ev("user_id", 1.5e-4, z=1.0), ev("hour", 1.5e-4))
    assert keeps(d) == {"hour": False, "site": True, "user_id": False}
    assert d.fields["user_id"].reason == "not_significant" and d.update == 8


def test_restore_truncates_history_to_the_new_length() -> None:
    policy = MaskPolicy(PolicyConfig())
    for s in (1e-2, 0.0, 1e-2, 0.0):
        decide(policy, ev("f", s))
    restored = MaskPolicy.restore(PolicyConfig(history_len=2), policy.snapshot())
    assert [h.update for h in restored.history("f")] == [3, 4]


@pytest.mark.parametrize(
    "snap",
    [
        None,
        [],
        {"format": 2, "updates": 0, "keep": {}, "history": {}},
        {"format": 1, "keep": {}, "history": {}},
        {"format": 1, "updates": "3", "keep": {}, "history": {}},
        {"format": 1, "updates": True, "keep": {}, "history": {}},
        {"format": 1, "updates": 0, "keep": {"a": 1}, "history": {}},
        {"format": 1, "updates": 0, "keep": [], "history": {}},
        {"format": 1, "updates": 0, "keep": {}, "history": {"a": [[1, True, "x"]]}},
        {"format": 1, "updates": 0, "keep": {}, "history": {"a": [[1, True, "x", "y"]]}},
    ],
)
def test_malformed_snapshots_raise_policy_state_error(snap: object) -> None:
    with pytest.raises(PolicyStateError):
        MaskPolicy.restore(PolicyConfig(), snap)  # type: ignore[arg-type]


# --------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"mode": "all"}, "mode"),
        ({"enter_threshold": math.nan}, "enter_threshold"),
        ({"exit_threshold": math.inf}, "exit_threshold"),
        ({"exit_threshold": 3e-4}, "exit_threshold"),
        ({"gate_exit": 0.6}, "gate_exit"),
        ({"gate_enter": 1.5}, "gate_enter"),
        ({"gate_exit": -0.1}, "gate_exit"),
        ({"min_examples": -1}, "min_examples"),
        ({"min_positives": -1}, "min_positives"),
        ({"min_z": math.nan}, "min_z"),
        ({"exit_z": math.nan}, "exit_z"),
        ({"exit_z": 5.0}, "exit_z"),
        ({"min_z": -math.inf}, "exit_z"),
        ({"max_changes_per_update": 0}, "max_changes_per_update"),
        ({"budget_k": 0}, "budget_k"),
        ({"budget_share": 0.0}, "budget_share"),
        ({"budget_share": 1.5}, "budget_share"),
        ({"history_len": 0}, "history_len"),
    ],
)
def test_config_errors_name_the_setting(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        PolicyConfig(**kwargs)


def test_config_accepts_edge_values() -> None:
    PolicyConfig(exit_z=-math.inf)
    PolicyConfig(min_z=-math.inf, exit_z=-math.inf)
    PolicyConfig(exit_z=4.0)
    PolicyConfig(enter_threshold=1e-4, exit_threshold=1e-4, gate_enter=0.3, gate_exit=0.3)
    assert PolicyConfig(protected=["a", "a"]).protected == frozenset({"a"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "name"),
        ({"name": "f", "gate_open": 1.5}, "gate_open"),
        ({"name": "f", "gate_open": -0.1}, "gate_open"),
        ({"name": "f", "examples": 10, "positives": 11}, "positives"),
        ({"name": "f", "examples": -1}, "examples"),
    ],
)
def test_field_evidence_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FieldEvidence(score=0.0, **kwargs)


def test_decision_carries_its_evidence() -> None:
    d = MaskPolicy(PolicyConfig()).update([ev("f", 3e-4, z=7.5, examples=5000, positives=60, gate=0.7)])
    fd = d.fields["f"]
    assert (fd.score, fd.z, fd.examples, fd.positives, fd.gate_open) == (3e-4, 7.5, 5000, 60, 0.7)
    assert d.update == 1 and d.kept == ("f",)
