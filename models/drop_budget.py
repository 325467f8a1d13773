"""The drop budget: which fields may go, stated in model terms (docs/policy.md, mode ``budget``).

A field's *value* is what the serving model loses when it is closed: at
least its cardinality-corrected MI with the click (``score``, nats per
example), known up to its noise scale ``sd``. The fields dropped together
must, with confidence, cost less than the budget::

    sum(score_i) + z * sqrt(sum(sd_i^2))  <=  B

where ``z`` is ``drop_confidence_z`` and ``B`` the information whose loss
costs ``drop_budget`` points of AUC (models/evidence.py ``auc_budget_nats``,
a binormal approximation from the click rate and the information the
evidence proves). The sum of the corrected scores is an unbiased estimate of
the fields' summed MI (a noise field's score is as likely below 0 as above)
and the square root is the noise of that sum.

Before this test, a field is kept when:

* it is protected;
* its evidence is under-powered: too few examples or positives, a non-finite
  score, an unmeasured pair with an informative field (``unmeasured_with``:
  not counted yet, or too many joint values to count exactly, so an
  interaction can neither be seen nor ruled out; or counted with a noise
  scale so wide, ``z * interaction_sd > B``, that it could hide one worth
  the budget), or a noise scale so wide
  that even alone it could not be shown to fit the budget (``z * sd > B``):
  ``insufficient_evidence``;
* it carries a significant interaction: its best pair (with a partner that
  is not ID-like) gains ``pair_z >= pair_min_z`` over the two fields alone:
  ``pair_with:<other>``;
* a gate model that has earned its vote (``strong``) holds it open:
  ``gate_open``.

and dropped, without drawing on the budget, when:

* at least ``id_like_share`` of its examples bring a distinct value: nearly
  every value is seen once, and no model learns a value it has not seen
  before (``id_like``);
* a ``strong`` gate model closes it (its probe: closing the field, given all
  the others, costs less than the gate penalty), its MI's lower bound
  ``score - z * sd`` is below ``B`` too, and each of its pairs has been
  counted at least once (``pairs_uncounted == 0``): ``gate_closed``. Until
  the MI state's pair rotation has reached all of a field's pairs, a pure
  interaction with another field that carries no signal alone could be
  there, unseen by MI, and not yet learnt by a young gate model (the
  default generator's XOR pair, closed by strong gates in a two-hour
  stream); such a field goes on to the tests below.

The other fields are tried cheapest first (by score, then name), fields
dropped at the previous update before fields kept then (so a drop is
stable), and each is dropped if the set still fits: ``within_drop_budget``,
else kept: ``exceeds_drop_budget``. Hysteresis: a field kept at the previous
update must fit within ``(1 - drop_hysteresis)`` of the budget to be
dropped, one dropped then within the whole budget to stay dropped. A field
held by hysteresis is therefore always one whose drop the budget allows.

Pure: a function of the evidence, the previous decisions and the settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from models.evidence import FieldEvidence, auc_budget_nats


class BudgetTarget(NamedTuple):
    keep: bool
    reason: str
    margin: float  # relative distance from the limit it was compared with
    forced: bool = False


class BudgetOutcome(NamedTuple):
    """Targets per field, the budget (nats) and the dropped set's cost bound (nats)."""

    targets: dict[str, BudgetTarget]
    budget: float
    bound: float


def decide_budget(
    by_name: Mapping[str, FieldEvidence],
    prior: Mapping[str, bool],
    *,
    protected: frozenset[str],
    sufficient: Mapping[str, bool],
    drop_budget: float,
    confidence_z: float,
    hysteresis: float,
    pair_min_z: float,
    gate_strong: bool,
    gate_enter: float,
    gate_exit: float,
    id_like_share: float,
) -> BudgetOutcome:
    """Keep/drop targets of every field in ``by_name`` under the drop budget (module docstring)."""
    budget = auc_budget_nats(list(by_name.values()), drop_budget, confidence_z)
    targets: dict[str, BudgetTarget] = {}
    candidates: list[str] = []
    for n in sorted(by_name):
        e = by_name[n]
        if n in protected:
            targets[n] = BudgetTarget(True, "protected", math.inf, forced=True)
        elif not sufficient[n]:
            targets[n] = BudgetTarget(True, "insufficient_evidence", 0.0)
        elif _id_like(e, id_like_share):
            # (almost) every value seen once: no model can learn a value it has not seen before,
            # so dropping the field costs the serving model nothing whatever its plug-in MI says
            targets[n] = BudgetTarget(False, "id_like", _rel(e.cardinality / e.examples - id_like_share, id_like_share))
        elif (e.pair_with is not None and e.pair_with in by_name and e.pair_z >= pair_min_z
              and not _id_like(by_name[e.pair_with], id_like_share)):
            targets[n] = BudgetTarget(True, f"pair_with:{e.pair_with}", _rel(e.pair_z - pair_min_z, pair_min_z))
        elif gate_strong and e.gate_open is not None and e.gate_open >= (gate_exit if prior[n] else gate_enter):
            targets[n] = BudgetTarget(True, "gate_open", _rel(e.gate_open - gate_exit, gate_exit))
        elif (gate_strong and e.gate_open is not None and e.gate_open < gate_exit
              and e.score - confidence_z * e.sd < budget and e.pairs_uncounted == 0):
            # the probe of a gate model that has earned its vote measures the cost of closing the
            # field given all the others; MI does not show it is worth more than the budget either
            targets[n] = BudgetTarget(False, "gate_closed", _rel(gate_exit - e.gate_open, gate_exit))
        elif e.score - confidence_z * e.sd >= budget:  # proven worth more than the whole budget
            targets[n] = BudgetTarget(True, "exceeds_drop_budget", _rel(e.score - confidence_z * e.sd - budget, budget))
        elif (e.unmeasured_with is not None and e.unmeasured_with in by_name) or confidence_z * e.interaction_sd > budget:
            # its interaction with an informative field is not measured: MI alone is no bound on
            # what the field is worth to a model that crosses the two
            targets[n] = BudgetTarget(True, "insufficient_evidence", 0.0)
        elif confidence_z * e.sd > budget:
            targets[n] = BudgetTarget(True, "insufficient_evidence", 0.0)
        else:
            candidates.append(n)
    # stable drops first: a field dropped before is tried before any field kept before
    candidates.sort(key=lambda n: (prior[n], by_name[n].score, n))
    total = variance = 0.0
    for n in candidates:
        e = by_name[n]
        limit = budget * (1.0 - hysteresis) if prior[n] else budget
        s, v = total + e.score, variance + e.sd**2
        bound = s + confidence_z * math.sqrt(v)
        if bound <= limit:
            total, variance = s, v
            targets[n] = BudgetTarget(False, "within_drop_budget", _rel(limit - bound, limit))
        else:
            targets[n] = BudgetTarget(True, "exceeds_drop_budget", _rel(bound - limit, limit))
    used = total + confidence_z * math.sqrt(variance)  # 0 when nothing was dropped
    return BudgetOutcome(targets, budget, used)


def _id_like(e: FieldEvidence, share: float) -> bool:
    return e.examples > 0 and e.cardinality >= share * e.examples


def _rel(distance: float, threshold: float) -> float:
    return distance / max(abs(threshold), 1e-12)
