"""Typed evidence for the mask policy, and the one builder the daemon and ``evaluate`` share.

* :class:`FieldEvidence`: what the scorers know about one field at one update
  (corrected MI and its noise scale, the best pair gain, the field gate);
* :class:`GateEvidence`: what the gate model knows as a whole (windows, its
  own AUC, its field gates and closed values) and whether it has earned a
  vote (:meth:`GateEvidence.strength`);
* :func:`build_evidence`: MI scores + pair scores + gate evidence → the list of
  :class:`FieldEvidence` the policy decides on.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GATE_STRENGTHS = ("none", "weak", "strong")


@dataclass(frozen=True)
class FieldEvidence:
    """What the scorers know about one field at one update.

    ``score`` is the cardinality-corrected MI (nats), ``z`` its significance
    against a permutation null and ``sd`` the null's standard deviation (the
    noise scale of ``score``: 0 when unknown); ``gate_open`` the field gate's
    decision in [0, 1] (1 open, 0 closed; across instances the example-weighted
    mean, so a fraction means they disagree; None while the gate model has no
    completed window or gates are disabled); ``redundant_with`` the stronger
    field this one nearly duplicates (None if not flagged). ``pair_with`` is
    the partner of the field's best pair, ``pair_gain`` what the pair scores
    over its two parts (nats) and ``pair_z`` that gain in units of the pair's
    null sd. ``unmeasured_with`` names an informative field whose pair with
    this one has not been measured (not counted yet, or too many joint values
    to count exactly): an interaction there can neither be seen nor ruled out.
    ``interaction_sd`` is the largest null sd of its measured pairs with
    informative fields: the noise scale of what those pairs can show.
    ``pairs_uncounted`` is the number of other fields whose pair with this one
    has not been counted at all (online, pairs rotate through the MI state:
    a pure interaction of two fields with no signal alone is invisible until
    its turn comes).
    """

    name: str
    score: float
    mi: float = 0.0
    z: float = 0.0
    examples: int = 0
    positives: int = 0
    cardinality: int = 0
    gate_open: float | None = None
    redundant_with: str | None = None
    sd: float = 0.0
    pair_with: str | None = None
    pair_gain: float = 0.0
    pair_z: float = 0.0
    unmeasured_with: str | None = None
    interaction_sd: float = 0.0
    pairs_uncounted: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("FieldEvidence.name must be a non-empty string")
        if self.gate_open is not None and not 0.0 <= self.gate_open <= 1.0:
            raise ValueError(
                f"FieldEvidence.gate_open of {self.name!r} must be in [0, 1] or None, "
                f"got {self.gate_open!r}"
            )
        if self.examples < 0 or self.positives < 0 or self.positives > self.examples:
            raise ValueError(
                f"FieldEvidence of {self.name!r}: need 0 <= positives <= examples, "
                f"got positives={self.positives}, examples={self.examples}"
            )
        if not self.sd >= 0.0:  # also rejects NaN
            raise ValueError(f"FieldEvidence.sd of {self.name!r} must be >= 0, got {self.sd!r}")


@dataclass(frozen=True)
class GateEvidence:
    """The gate model's evidence as a whole: field gates and closed values by field name.

    ``windows`` is the number of completed continuation windows, ``examples``
    what the model trained on, ``auc`` its own (ungated) prequential AUC and
    ``auc_gated`` the same with its gates applied, or None while unmeasured.
    A gate model earns a vote only when it has completed ``min_windows``
    windows, ranks clicks better than chance by a margin (``auc >= min_auc``)
    and its own closings do not cost it more than the drop budget
    (``auc_gated >= auc - max_auc_loss``): a cold model, one no better than
    random, or one whose gates hurt it is ``weak``, and the policy never lets
    it drop a field.
    """

    field_gates: Mapping[str, float] = field(default_factory=dict)
    closed_values: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    windows: int = 0
    examples: int = 0
    auc: float | None = None
    auc_gated: float | None = None

    def strength(self, min_windows: int, min_auc: float, max_auc_loss: float = 1.0) -> str:
        """``none`` (no completed window), ``weak`` or ``strong`` (see the class docstring).

        ``max_auc_loss``: the model with its gates applied (``auc_gated``) may rank at most
        this much worse than with every gate open (``auc``); gates whose own closings cost the
        model more have not earned a vote on anything else.
        """
        if not self.field_gates:
            return "none"
        good = self.auc is not None and math.isfinite(self.auc) and self.auc >= min_auc
        honest = self.auc_gated is None or (
            self.auc is not None and math.isfinite(self.auc_gated) and self.auc_gated >= self.auc - max_auc_loss)
        return "strong" if self.windows >= min_windows and good and honest else "weak"

    @classmethod
    def from_report(cls, report: Mapping[str, Any] | None) -> GateEvidence | None:
        """From a gate report keyed by field name (``field_gates``, ``closed_values``, ``metrics``)."""
        if report is None:
            return None
        metrics = report.get("metrics") or {}
        auc = metrics.get("auc_ungated")
        gated = metrics.get("auc_gated")
        return cls(
            field_gates={str(k): float(v) for k, v in (report.get("field_gates") or {}).items()},
            closed_values={str(k): list(v) for k, v in (report.get("closed_values") or {}).items()},
            windows=int(metrics.get("windows") or 0),
            examples=int(report.get("examples") or metrics.get("examples") or 0),
            auc=None if auc is None else float(auc),
            auc_gated=None if gated is None else float(gated),
        )


def build_evidence(scores: Sequence[Any], pairs: Sequence[Any] = (),
                   gates: GateEvidence | None = None, z_informative: float = 4.0) -> list[FieldEvidence]:
    """One :class:`FieldEvidence` per field score (models/mi.py ``FieldScore``).

    ``pairs`` are ``PairScore``s: each field gets its best pair by ``gain_z``
    (the pair's gain over its parts in units of its null sd; ties by partner
    name), among pairs with a positive gain, and the first informative field
    (``z >= z_informative``) whose pair with it is not measured (absent from
    ``pairs``, or hashed), and how many fields' pairs with it are absent from
    ``pairs`` (``pairs_uncounted``). ``gates`` adds each field's gate.
    """
    best: dict[str, tuple[float, float, str]] = {}
    for p in pairs:
        if not p.gain > 0:
            continue
        a, b = p.fields
        for me, other in ((a, b), (b, a)):
            cand = (p.gain_z, p.gain, other)
            cur = best.get(me)
            if cur is None or cand[0] > cur[0] or (cand[0] == cur[0] and cand[2] < cur[2]):
                best[me] = cand
    gate_open = dict(gates.field_gates) if gates is not None else {}
    measured = {p.fields: p.sd for p in pairs if not getattr(p, "hashed", False)}
    counted: dict[str, int] = {}
    for p in pairs:
        for name in p.fields:
            counted[name] = counted.get(name, 0) + 1
    informative = sorted(s.name for s in scores if s.score - z_informative * s.sd > 0
                         and s.z >= z_informative)
    out = []
    for s in scores:
        pz, pg, partner = best.get(s.name, (0.0, 0.0, None))
        partners = [(min(o, s.name), max(o, s.name)) for o in informative if o != s.name]
        unmeasured = next((o for o in informative if o != s.name
                           and (min(o, s.name), max(o, s.name)) not in measured), None)
        interaction_sd = max((measured[p] for p in partners if p in measured), default=0.0)
        out.append(FieldEvidence(
            name=s.name, score=float(s.score), mi=float(s.mi), z=float(s.z),
            examples=int(s.examples), positives=int(s.positives), cardinality=int(s.cardinality),
            gate_open=gate_open.get(s.name), redundant_with=s.redundant_with,
            sd=float(s.sd), pair_with=partner, pair_gain=float(pg), pair_z=float(pz),
            unmeasured_with=unmeasured, interaction_sd=float(interaction_sd),
            pairs_uncounted=max(len(scores) - 1 - counted.get(s.name, 0), 0),
        ))
    return out


def click_rate(evidence: Sequence[FieldEvidence]) -> float:
    """The share of positive examples, from the field seen in most examples (all see the same labels)."""
    widest = max(evidence, key=lambda e: (e.examples, e.name), default=None)
    if widest is None or widest.examples == 0:
        return 0.0
    return widest.positives / widest.examples


def auc_budget_nats(evidence: Sequence[FieldEvidence], auc_points: float, z: float) -> float:
    """The MI (nats per example) whose loss costs a model about ``auc_points`` of AUC.

    Binormal approximation of a logistic model: information ``I`` (nats) in the
    logit gives ``AUC = Phi(q)`` with ``q = sqrt(I / (p (1 - p)))`` (``p`` the click
    rate), so losing ``v`` nats costs ``phi(q) v / (2 q p (1 - p))`` of AUC.
    ``I`` is the information the evidence *proves*: the sum over fields of the
    lower confidence bounds ``max(score - z sd, 0)``. With nothing proven the
    budget is 0: nothing can be shown to be cheap to drop.
    """
    p = click_rate(evidence)
    var = p * (1.0 - p)
    proven = math.fsum(max(e.score - z * e.sd, 0.0) for e in evidence if math.isfinite(e.score))  # exact: order-free
    if var <= 0.0 or proven <= 0.0:
        return 0.0
    q = math.sqrt(proven / var)
    density = math.exp(-0.5 * q * q) / math.sqrt(2.0 * math.pi)
    return auc_points * 2.0 * q * var / density
