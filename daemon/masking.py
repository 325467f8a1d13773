"""From evidence to a mask message: MI scores + gate report → policy → MaskMessage.

The policy (pure, in models/) decides; this module gathers its inputs from
the live components (gate reports arrive keyed by field name, see
:func:`named_gate_report`), and
tells the run loop whether the mask changed since the last publication
(decisions or closed values; scores alone moving is not a change — the
heartbeat republishes them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from connectors.mask_message import (
    ClosedValue,
    FieldEntry,
    MaskMessage,
    closed_value,
    closed_value_key,
)
from daemon.config import Settings
from daemon.settings_map import policy_config_from
from models.evidence import FieldEvidence, GateEvidence, build_evidence
from models.interning import HOLE, Interner
from models.mi import MIState
from models.policy import MaskPolicy


class MaskBuilder:
    """Holds the policy and the last published decisions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = MaskPolicy(policy_config_from(settings))
        self._published_signature: tuple[Any, ...] | None = None
        self.sample_rate = 1.0  # key-hash sampling rate the evidence is gathered at (set by the daemon)

    def snapshot(self) -> dict[str, Any]:
        return {"policy": self.policy.snapshot(), "signature": self._published_signature}

    def restore(self, snap: dict[str, Any]) -> None:
        self.policy = MaskPolicy.restore(policy_config_from(self.settings), snap["policy"])
        sig = snap.get("signature")
        self._published_signature = tuple(sig) if sig is not None else None

    @staticmethod
    def _signature(msg: MaskMessage) -> tuple[Any, ...]:
        # closed values by their key: True and 1 (equal in Python) are different closed values
        return tuple(
            (name, f.keep, tuple(sorted(f.closed_keys()))) for name, f in sorted(msg.fields.items())
        )

    def published(self, msg: MaskMessage) -> None:
        self._published_signature = self._signature(msg)

    def evidence(self, mi: MIState, gates_report: dict[str, Any] | None) -> list[FieldEvidence]:
        """The policy's input: MI scores, pair gains and field gates (models/evidence.py)."""
        scores, pairs = mi.scores_and_pairs()
        return build_evidence(scores, pairs, GateEvidence.from_report(gates_report))

    def build(
        self,
        mi: MIState,
        gates_report: dict[str, Any] | None,
        publisher: Any,
        watermark_ms: int,
    ) -> tuple[MaskMessage, bool]:
        """The next mask message (version = publisher's next) and whether it differs from the last published."""
        gates = GateEvidence.from_report(gates_report)
        evidence = self.evidence(mi, gates_report)
        strength = self.policy.gate_strength(gates, evidence)
        decision = self.policy.update(evidence, strength)
        closed: dict[str, list[ClosedValue]] = (gates_report or {}).get("closed_values", {})
        fields: dict[str, FieldEntry] = {}
        for name, d in decision.fields.items():
            # value gates refine a field the gates keep open; when the field gate itself is closed
            # (MI keeps it, gates would not) every seen value reads as closed, and publishing them
            # all would make apply() drop a field the mask says to keep. Gates that have not earned
            # a vote (weak) close no value either.
            refine = (strength == "strong" and d.keep and d.gate_open is not None
                      and d.gate_open >= self.settings.gate_enter)
            values = typed_closed_values(closed[name]) if refine and closed.get(name) else None
            fields[name] = FieldEntry(
                keep=d.keep, score=d.score, gate_open=d.gate_open, reason=d.reason,
                z=d.z, examples=d.examples, positives=d.positives, closed_values=values,
            )
        msg = MaskMessage(
            schema=1,
            model_id=self.settings.model_id,
            version=publisher.next_version(),
            epoch=publisher.epoch,
            created_at=int(time.time() * 1000),
            watermark=int(watermark_ms),
            fields=fields,
            policy=policy_summary(decision, self.policy.config),
            incarnation=getattr(publisher, "incarnation", None),
            sample_rate=self.sample_rate,
        )
        return msg, self._signature(msg) != self._published_signature


def policy_summary(decision: Any, config: Any) -> dict[str, Any]:
    """The mask's ``policy`` object: the rule and how much of its budget the dropped set uses."""
    out: dict[str, Any] = {"mode": config.mode, "gate_evidence": decision.gate_evidence}
    if decision.drop_budget is not None:
        out.update({"drop_budget": config.drop_budget, "drop_budget_nats": decision.drop_budget,
                    "drop_bound_nats": decision.drop_bound})
    return out


def typed_closed_values(values: Iterable[Any]) -> list[ClosedValue]:
    """Event values as the mask carries them in ``closed_values``: with their JSON type (strings,
    booleans, integers; an integral float as its integer; docs/mask-format.md), one per distinct
    value by the matching rule (``3`` and ``3.0`` are one), in :func:`closed_value_key` order.
    Values a mask cannot carry (integers past 64 bits) are left out: serving passes them."""
    out: dict[tuple[int, Any], ClosedValue] = {}
    for v in values:
        carried = closed_value(v)
        if carried is not None:
            out.setdefault(closed_value_key(carried), carried)
    return [out[k] for k in sorted(out)]


def named_gate_report(report: dict[str, Any] | None, interner: Interner) -> dict[str, Any] | None:
    """A gate model's report (keyed by column, closed values as hashes) keyed by field and value names.

    Columns are local to one process; names are what instances, the policy and the mask share.
    """
    if report is None:
        return None
    fields = interner.fields
    closed: dict[str, list[ClosedValue]] = {}
    for col, hashes in (report.get("closed_values") or {}).items():
        if int(col) < len(fields) and hashes and fields[int(col)] != HOLE:
            values = typed_closed_values(interner.values_of(int(col), list(hashes)))
            if values:
                closed[fields[int(col)]] = values
    metrics = dict(report.get("metrics") or {})
    return {
        "field_gates": {fields[int(c)]: float(v) for c, v in (report.get("field_gates") or {}).items()
                        if int(c) < len(fields) and fields[int(c)] != HOLE},
        "closed_values": closed,
        "metrics": metrics,
        "examples": int(metrics.get("examples") or 0),
    }
