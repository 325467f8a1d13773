"""The mask policy: per-field evidence (MI score, pairs, field gate) → keep/drop decisions.

Pure and deterministic: no clock, no I/O, no randomness. The decision of one
``update`` depends only on the policy state and the *set* of evidence given
(never on its order); every tie breaks by field name. How decisions are made
is explained in docs/policy.md; in short, per field and in this order:

1. protected fields are kept;
2. a field without enough evidence (examples, positives, a finite score) is
   **kept** (``insufficient_evidence``): under-powered is never dropped;
3. mode ``budget`` (the default): fields are dropped only while, together,
   an upper confidence bound of what they are worth costs at most
   ``drop_budget`` of AUC (models/drop_budget.py); a field
   with a significant pair gain or a strong open gate is kept. The other
   modes (``mi``, ``gates``, ``both``, ``either``) let each kind of evidence
   *vote* with hysteresis against thresholds, and combine the votes;
   gates vote only once they have earned it (``GateEvidence.strength``);
4. redundant fields are dropped when their stronger twin is kept (optional);
5. a budget keeps at most K fields (or a share of them) by score;
6. at most ``max_changes_per_update`` decisions change, largest margin first;
7. a mask with no field is never the answer: every field is kept
   (``empty_mask_refused``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from models.drop_budget import BudgetTarget, decide_budget
from models.evidence import GATE_STRENGTHS, FieldEvidence, GateEvidence

__all__ = ["FieldEvidence", "GateEvidence", "MaskPolicy", "PolicyConfig", "MaskDecision", "FieldDecision"]

MODES = ("budget", "mi", "gates", "both", "either")
REASONS = (
    "within_drop_budget",
    "exceeds_drop_budget",
    "pair_with:<field>",
    "empty_mask_refused",
    "id_like",
    "score_above_enter",
    "held_in_band",
    "score_below_exit",
    "gate_closed",
    "gate_open",
    "protected",
    "insufficient_evidence",
    "not_significant",
    "redundant_with:<field>",
    "over_budget",
    "change_deferred",
)
SNAPSHOT_FORMAT = 1
_EPS = 1e-12  # floor of a threshold's magnitude when margins are made relative to it


class PolicyStateError(ValueError):
    """A policy snapshot cannot be restored: wrong format or malformed content."""


@dataclass(frozen=True)
class PolicyConfig:
    """Settings of :class:`MaskPolicy`; validated on construction (ValueError names the setting).

    The default mode is ``"budget"``: fields are dropped only while the
    dropped set's value costs, with confidence, at most ``drop_budget`` AUC
    points (models/drop_budget.py). The voting modes:
    ``"both"`` keeps a field only if every *available* kind of evidence
    supports keeping it; gate evidence that is not yet available
    (``gate_open is None``) or has not earned a vote is neutral, so the
    policy falls back to MI. ``None`` for ``max_changes_per_update``,
    ``budget_k`` or ``budget_share`` means no cap / no budget.

    Significance has hysteresis like the score: a dropped field is kept again
    only with ``z >= min_z``, a kept one is dropped (``not_significant``) once
    ``z < exit_z``. ``-inf`` disables either test.
    """

    mode: str = "budget"
    drop_budget: float = 0.001  # AUC points the dropped fields may cost together
    drop_confidence_z: float = 2.0
    drop_hysteresis: float = 0.2
    pair_min_z: float = 6.0  # with ~2000 pairs tried, chance gains reach z 4-4.5
    gate_min_windows: int = 2
    gate_min_auc: float = 0.55
    gate_max_disagreement: float = 0.5  # share of MI-proven fields the gates may close and keep their vote
    id_like_share: float = 0.5
    refuse_empty: bool = True  # never decide a mask without fields (the daemon always refuses)
    enter_threshold: float = 2e-4
    exit_threshold: float = 1e-4
    gate_enter: float = 0.5
    gate_exit: float = 0.2
    min_examples: int = 2000
    min_positives: int = 50
    min_z: float = 4.0
    exit_z: float = 2.0
    initial_keep: bool = True
    max_changes_per_update: int | None = None
    protected: frozenset[str] = field(default_factory=frozenset)
    budget_k: int | None = None
    budget_share: float | None = None
    drop_redundant: bool = False
    history_len: int = 8

    def __post_init__(self) -> None:
        # Accept any iterable of names (a list from TOML) but store a frozenset.
        object.__setattr__(self, "protected", frozenset(self.protected))
        if self.mode not in MODES:
            raise ValueError(f"policy mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        for name in ("enter_threshold", "exit_threshold"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"policy {name} must be a finite number (nats)")
        if self.exit_threshold > self.enter_threshold:
            raise ValueError(
                f"policy exit_threshold ({self.exit_threshold}) must be <= "
                f"enter_threshold ({self.enter_threshold})"
            )
        if not 0.0 <= self.gate_exit <= self.gate_enter <= 1.0:
            raise ValueError(
                f"policy gate thresholds need 0 <= gate_exit <= gate_enter <= 1; got "
                f"gate_exit={self.gate_exit}, gate_enter={self.gate_enter}"
            )
        if not 0.0 <= self.drop_budget <= 1.0:
            raise ValueError(f"policy drop_budget must be in [0, 1] (AUC points); got {self.drop_budget}")
        if not 0.0 <= self.drop_confidence_z < math.inf:
            raise ValueError(f"policy drop_confidence_z must be a finite number >= 0; got {self.drop_confidence_z}")
        if not 0.0 <= self.drop_hysteresis < 1.0:
            raise ValueError(f"policy drop_hysteresis must be in [0, 1); got {self.drop_hysteresis}")
        if math.isnan(self.pair_min_z):
            raise ValueError("policy pair_min_z must be a number (inf: pairs never keep a field)")
        if not 0.0 < self.gate_max_disagreement <= 1.0:
            raise ValueError(f"policy gate_max_disagreement must be in (0, 1]; got {self.gate_max_disagreement}")
        if not 0.0 < self.id_like_share <= 1.0:
            raise ValueError(f"policy id_like_share must be in (0, 1]; got {self.id_like_share}")
        if self.gate_min_windows < 1:
            raise ValueError("policy gate_min_windows must be >= 1")
        if not 0.0 <= self.gate_min_auc <= 1.0:
            raise ValueError(f"policy gate_min_auc must be in [0, 1]; got {self.gate_min_auc}")
        if self.min_examples < 0 or self.min_positives < 0:
            raise ValueError("policy min_examples and min_positives must be >= 0")
        if math.isnan(self.min_z):
            raise ValueError("policy min_z must be a number (-inf disables the significance test)")
        if math.isnan(self.exit_z):
            raise ValueError("policy exit_z must be a number (-inf disables the significance exit)")
        if self.exit_z > self.min_z:
            raise ValueError(f"policy exit_z ({self.exit_z}) must be <= min_z ({self.min_z})")
        if self.max_changes_per_update is not None and self.max_changes_per_update < 1:
            raise ValueError("policy max_changes_per_update must be >= 1, or None for no cap")
        if self.budget_k is not None and self.budget_k < 1:
            raise ValueError("policy budget_k must be >= 1, or None for no budget")
        if self.budget_share is not None and not 0.0 < self.budget_share <= 1.0:
            raise ValueError("policy budget_share must be in (0, 1], or None for no budget")
        if self.history_len < 1:
            raise ValueError("policy history_len must be >= 1")

    def budget_limit(self, n_fields: int) -> int | None:
        """How many fields may be kept out of ``n_fields`` (None: no budget)."""
        limits = []
        if self.budget_k is not None:
            limits.append(self.budget_k)
        if self.budget_share is not None:
            # The epsilon keeps 0.29 * 100 from flooring to 28.
            limits.append(math.floor(self.budget_share * n_fields + 1e-9))
        return min(limits) if limits else None


@dataclass(frozen=True)
class FieldDecision:
    """The decision for one field, with the evidence it was based on."""

    keep: bool
    reason: str
    score: float
    gate_open: float | None
    z: float
    examples: int
    positives: int


@dataclass(frozen=True)
class MaskDecision:
    """Result of one update: decisions in name order, the changed and the deferred names."""

    update: int
    fields: dict[str, FieldDecision]
    changed: tuple[str, ...]
    deferred: tuple[str, ...]
    gate_evidence: str = "none"  # none | weak | strong: whether the gates had a vote
    drop_budget: float | None = None  # mode budget: the budget (nats per example)
    drop_bound: float | None = None  # mode budget: the dropped set's cost bound (nats per example)

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(n for n, d in self.fields.items() if d.keep)


class HistoryEntry(NamedTuple):
    update: int
    keep: bool
    reason: str
    score: float


class _Vote(NamedTuple):
    supports: bool  # does this evidence support keeping the field?
    reason: str
    margin: float  # relative distance past the threshold that was compared


_Target = BudgetTarget  # keep, reason, margin, forced (protected: bypasses the change cap)


def _rel(distance: float, threshold: float) -> float:
    return distance / max(abs(threshold), _EPS)


class MaskPolicy:
    """Turns field evidence into keep/drop decisions with hysteresis, a budget and a change cap.

    State: the current decision per field and a bounded history of decision
    changes per field. Fields absent from an update's evidence keep their
    state but are not part of that update's decision. ``snapshot()`` gives
    plain data; ``MaskPolicy.restore(config, snap)`` rebuilds a policy whose
    subsequent decisions are identical to the original's.
    """

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self._updates = 0
        self._keep: dict[str, bool] = {}
        self._history: dict[str, deque[HistoryEntry]] = {}

    @property
    def updates(self) -> int:
        return self._updates

    def current(self) -> dict[str, bool]:
        """The decision held for every field ever seen, in name order."""
        return dict(sorted(self._keep.items()))

    def forget(self, name: str) -> None:
        """Drop a field's held decision and history (its column was reclaimed): if it comes back it
        starts as a field never seen."""
        self._keep.pop(name, None)
        self._history.pop(name, None)

    def history(self, name: str) -> tuple[HistoryEntry, ...]:
        """Recent decision changes of ``name`` (oldest first), at most ``history_len``."""
        return tuple(self._history.get(name, ()))

    # ------------------------------------------------------------------ update
    def gate_strength(self, gates: GateEvidence | None, evidence: Sequence[FieldEvidence] = ()) -> str:
        """``none``, ``weak`` or ``strong``: whether ``gates`` have earned a vote under this config.

        Beside the gate model's own record (:meth:`GateEvidence.strength`), the gates must agree
        with MI where MI is sure: a gate model that closes half or more of the fields whose MI
        is significant (``z >= min_z``, with enough evidence, and not a near-duplicate of another
        field) ranks fields unlike the evidence that can be checked, and gets no vote on the
        fields that cannot. (A single closed significant field is not enough: the first windows
        of a cold model close weak informative fields, docs/gates.md, and the budget test keeps
        such a field anyway, since MI proves it worth more than the budget.)
        """
        if gates is None:
            return "none"
        cfg = self.config
        strength = gates.strength(cfg.gate_min_windows, cfg.gate_min_auc, cfg.drop_budget)
        # a near-duplicate's gate rightly closes: its twin carries the signal
        sure = [e for e in evidence if e.z >= cfg.min_z and self._sufficient(e) and e.redundant_with is None]
        closed = sum(1 for e in sure if gates.field_gates.get(e.name, 1.0) < cfg.gate_exit)
        contradicted = bool(sure) and closed >= cfg.gate_max_disagreement * len(sure)
        return "weak" if strength == "strong" and contradicted else strength

    def update(self, evidence: Sequence[FieldEvidence], gate_evidence: str | None = None) -> MaskDecision:
        """Decide every field in ``evidence``; raises ValueError on duplicate field names.

        ``gate_evidence`` is the gates' strength (:meth:`gate_strength`): only ``strong``
        gates vote. ``None`` (callers that only pass ``gate_open``) counts gates as strong
        when any field has a gate, as before gates had to earn their vote.
        """
        by_name: dict[str, FieldEvidence] = {}
        for e in evidence:
            if e.name in by_name:
                raise ValueError(f"duplicate evidence for field {e.name!r}")
            by_name[e.name] = e
        if gate_evidence is None:
            gate_evidence = "strong" if any(e.gate_open is not None for e in evidence) else "none"
        if gate_evidence not in GATE_STRENGTHS:
            raise ValueError(f"gate_evidence must be one of {', '.join(GATE_STRENGTHS)}; got {gate_evidence!r}")
        strong = gate_evidence == "strong"
        cfg = self.config
        names = sorted(by_name)
        prior = {n: self._keep.get(n, cfg.initial_keep) for n in names}
        budget = bound = None
        if cfg.mode == "budget":
            outcome = decide_budget(
                by_name, prior, protected=cfg.protected,
                sufficient={n: self._sufficient(by_name[n]) for n in names},
                drop_budget=cfg.drop_budget, confidence_z=cfg.drop_confidence_z,
                hysteresis=cfg.drop_hysteresis, pair_min_z=cfg.pair_min_z, gate_strong=strong,
                gate_enter=cfg.gate_enter, gate_exit=cfg.gate_exit, id_like_share=cfg.id_like_share,
            )
            target = dict(outcome.targets)
            budget, bound = outcome.budget, outcome.bound
        else:
            target = {n: self._judge(by_name[n], prior[n], strong) for n in names}
        if cfg.drop_redundant and cfg.mode != "budget":
            # mode budget drops a near-duplicate only through the budget: the copy of a field is
            # cheap in information but not in model terms (a second embedding of the same field;
            # dropping the small preset's copy cost 0.0025 AUC, docs/policy.md)
            self._mark_redundant(by_name, target)
        limit = cfg.budget_limit(len(names))
        if limit is not None:
            self._apply_budget(by_name, prior, target, limit)
        final, deferred = self._cap(names, prior, target, limit)
        if cfg.refuse_empty and names and not any(keep for keep, _ in final.values()):
            # an empty mask is never what a serving team wants: keep every field and say why
            final = {n: (True, "empty_mask_refused") for n in names}
            deferred = ()

        self._updates += 1
        fields: dict[str, FieldDecision] = {}
        for n in names:
            e, (keep, reason) = by_name[n], final[n]
            self._record(n, keep, reason, e.score)
            fields[n] = FieldDecision(
                keep, reason, e.score, e.gate_open, e.z, e.examples, e.positives
            )
        changed = tuple(n for n in names if final[n][0] != prior[n])
        return MaskDecision(self._updates, fields, changed, deferred, gate_evidence, budget, bound)

    def _sufficient(self, e: FieldEvidence) -> bool:
        cfg = self.config
        return (
            e.examples >= cfg.min_examples
            and e.positives >= cfg.min_positives
            and math.isfinite(e.score)
            and not math.isnan(e.z)
        )

    def _mi_vote(self, e: FieldEvidence, kept: bool) -> _Vote:
        cfg, s = self.config, e.score
        enter, exit_ = cfg.enter_threshold, cfg.exit_threshold
        if kept:
            if s < exit_:
                return _Vote(False, "score_below_exit", _rel(exit_ - s, exit_))
            # A score in the band is only held while it is still evidence: an
            # ID-like or noise field can sit above exit_threshold by chance.
            if e.z < cfg.exit_z:
                return _Vote(False, "not_significant", _rel(cfg.exit_z - e.z, cfg.exit_z))
            strong = s >= enter and e.z >= cfg.min_z
            return _Vote(
                True, "score_above_enter" if strong else "held_in_band", _rel(s - exit_, exit_)
            )
        if s >= enter and e.z >= cfg.min_z:
            return _Vote(True, "score_above_enter", _rel(s - enter, enter))
        if s >= enter:
            return _Vote(False, "not_significant", 0.0)
        if s < exit_:
            return _Vote(False, "score_below_exit", _rel(exit_ - s, exit_))
        return _Vote(False, "held_in_band", 0.0)

    def _gate_vote(self, g: float, kept: bool) -> _Vote:
        enter, exit_ = self.config.gate_enter, self.config.gate_exit
        if kept:
            if g < exit_:
                return _Vote(False, "gate_closed", _rel(exit_ - g, exit_))
            return _Vote(
                True, "gate_open" if g >= enter else "held_in_band", _rel(g - exit_, exit_)
            )
        if g >= enter:
            return _Vote(True, "gate_open", _rel(g - enter, enter))
        return _Vote(False, "gate_closed" if g < exit_ else "held_in_band", 0.0)

    def _judge(self, e: FieldEvidence, kept: bool, gates_vote: bool) -> _Target:
        cfg = self.config
        if e.name in cfg.protected:
            return _Target(True, "protected", math.inf, forced=True)
        if not self._sufficient(e):  # under-powered: kept, never dropped
            return _Target(True, "insufficient_evidence", 0.0)
        votes = []
        if cfg.mode != "gates":
            votes.append(self._mi_vote(e, kept))
        if cfg.mode != "mi" and e.gate_open is not None and gates_vote:
            votes.append(self._gate_vote(e.gate_open, kept))
        if not votes:  # mode "gates" before the gates have earned a vote
            return _Target(True, "insufficient_evidence", 0.0)
        keep = (
            any(v.supports for v in votes)
            if cfg.mode == "either"
            else all(v.supports for v in votes)
        )
        agreeing = [v for v in votes if v.supports == keep]
        # The outcome rests on all agreeing votes when the rule needed them all.
        needs_all = keep != (cfg.mode == "either")
        margin = min(v.margin for v in agreeing) if needs_all else max(v.margin for v in agreeing)
        strong = [v for v in agreeing if v.reason in ("score_above_enter", "gate_open")]
        reason = (strong or agreeing)[0].reason if keep else agreeing[0].reason
        return _Target(keep, reason, margin)

    def _mark_redundant(
        self, by_name: dict[str, FieldEvidence], target: dict[str, _Target]
    ) -> None:
        # Strongest first, so a chain a -> b -> c resolves against already-final twins.
        for n in sorted(by_name, key=lambda n: (-_rank_score(by_name[n].score), n)):
            twin, t = by_name[n].redundant_with, target[n]
            if twin is None or twin == n or t.forced or not t.keep:
                continue
            if t.reason == "insufficient_evidence" or twin not in target or not target[twin].keep:
                continue  # never drop the weaker twin unless the stronger one is kept
            target[n] = _Target(False, f"redundant_with:{twin}", 0.0)

    def _apply_budget(
        self,
        by_name: dict[str, FieldEvidence],
        prior: dict[str, bool],
        target: dict[str, _Target],
        limit: int,
    ) -> None:
        kept = [n for n, t in target.items() if t.keep]
        if len(kept) <= limit:
            return
        band = self.config.enter_threshold - self.config.exit_threshold

        def rank(n: str) -> float:
            # A challenger must beat an incumbent by the hysteresis band, so two
            # fields of nearly equal score do not swap places at every update.
            return _rank_score(by_name[n].score) - (0.0 if prior[n] else band)

        free = sorted((n for n in kept if not target[n].forced), key=lambda n: (-rank(n), n))
        slots = max(0, limit - sum(1 for n in kept if target[n].forced))
        cutoff = rank(free[slots - 1]) if slots > 0 else math.inf
        for n in free[slots:]:
            margin = _rel(cutoff - rank(n), cutoff) if math.isfinite(cutoff) else math.inf
            target[n] = _Target(False, "over_budget", margin if math.isfinite(margin) else 0.0)

    def _cap(
        self,
        names: list[str],
        prior: dict[str, bool],
        target: dict[str, _Target],
        limit: int | None,
    ) -> tuple[dict[str, tuple[bool, str]], tuple[str, ...]]:
        final: dict[str, tuple[bool, str]] = {}
        pending: list[str] = []
        for n in names:
            t = target[n]
            if t.forced or t.keep == prior[n]:
                final[n] = (t.keep, t.reason)
            else:
                final[n] = (prior[n], "change_deferred")
                pending.append(n)
        cap = self.config.max_changes_per_update
        cap = len(pending) if cap is None else cap
        kept_now = sum(1 for k, _ in final.values() if k)
        bound = math.inf if limit is None else max(limit, kept_now)
        pending.sort(key=lambda n: (-target[n].margin, n))
        applied: set[str] = set()
        progress = True
        while progress and len(applied) < cap:
            # Several passes: a drop later in the order can free a budget slot
            # for a keep that had to wait.
            progress = False
            for n in pending:
                if n in applied or len(applied) >= cap:
                    continue
                t = target[n]
                if t.keep and kept_now + 1 > bound:
                    continue
                kept_now += 1 if t.keep else -1
                final[n] = (t.keep, t.reason)
                applied.add(n)
                progress = True
        return final, tuple(n for n in names if n in pending and n not in applied)

    def _record(self, name: str, keep: bool, reason: str, score: float) -> None:
        self._keep[name] = keep
        hist = self._history.setdefault(name, deque(maxlen=self.config.history_len))
        if not hist or hist[-1].keep != keep or hist[-1].reason != reason:
            hist.append(HistoryEntry(self._updates, keep, reason, float(score)))

    # ------------------------------------------------------------ persistence
    def snapshot(self) -> dict[str, Any]:
        """Plain-data state: ``{"format", "updates", "keep", "history"}``."""
        return {
            "format": SNAPSHOT_FORMAT,
            "updates": self._updates,
            "keep": dict(sorted(self._keep.items())),
            "history": {n: [list(h) for h in hist] for n, hist in sorted(self._history.items())},
        }

    @classmethod
    def restore(cls, config: PolicyConfig, snapshot: dict[str, Any]) -> MaskPolicy:
        """Rebuild a policy from ``snapshot()`` output; raises PolicyStateError if malformed.

        ``config`` may differ from the one that made the snapshot (the state is
        decisions only); histories are truncated to the new ``history_len``.
        """
        if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
            raise PolicyStateError(f"policy snapshot must be a dict with format {SNAPSHOT_FORMAT}")
        policy = cls(config)
        try:
            policy._updates = _as_int(snapshot["updates"])
            policy._keep = {str(n): _as_bool(k) for n, k in snapshot["keep"].items()}
            for n, entries in snapshot["history"].items():
                policy._history[str(n)] = deque(
                    (
                        HistoryEntry(_as_int(i), _as_bool(k), str(r), float(s))
                        for i, k, r, s in entries
                    ),
                    maxlen=config.history_len,
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PolicyStateError(f"malformed policy snapshot: {exc!r}") from exc
        return policy


def _rank_score(score: float) -> float:
    return score if math.isfinite(score) else -math.inf


def _as_int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _as_bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected a bool, got {v!r}")
    return v
