"""Settings baked into restored state: recorded in every snapshot, checked at every start.

Some settings shape the state a snapshot holds (the join's windows, the MI
counts' layout, the interner's columns ...). A restart with another value
must not silently keep the old one for restored state and the new one for new
state. Each such setting is either **applied** to the restored state (where
that is safe and deterministic) or **refused**: start-up stops with one line
naming every changed setting, its recorded and its new value, and how to
migrate (set it back, or ``featsieve run --reset-state``). docs/internals.md
lists them; :data:`BAKED` is the single source of that list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.config import Settings


class StateRefused(RuntimeError):
    """The state directory cannot be used as it is; the message says why and how to go on."""


@dataclass(frozen=True)
class Baked:
    """A setting recorded in snapshots; ``apply``: a changed value is applied to restored state."""

    name: str
    apply: bool
    why: str


BAKED: tuple[Baked, ...] = (
    Baked("attribution_window_s", False, "pending impressions were admitted, and earlier negatives emitted, "
          "under the recorded window"),
    Baked("lateness_s", False, "the watermark (which never moves back) was computed with it"),
    Baked("input_topics", False, "every shard's watermark waits for each recorded topic; offsets are per topic"),
    Baked("mi_max_values", False, "the layout of the MI counts"),
    Baked("mi_tail_buckets", False, "the layout of the MI counts"),
    Baked("mi_block_s", False, "the MI counts are kept in blocks of this length"),
    Baked("max_future_s", True, "applies to events read from now on"),
    Baked("max_clock_skew_s", True, "applies to events read from now on (a watermark already further ahead of the "
          "wall clock makes /readyz fail)"),
    Baked("watermark_quorum", True, "a smaller quorum keeps each source's largest timestamps; a larger one holds a "
          "source's mark at its smallest kept timestamp until it has sent that many more"),
    Baked("max_pending_impressions", True, "a smaller bound evicts the oldest pending impressions (as negatives, "
          "in (ts, id) order) at the shard's next impression"),
    Baked("max_pending_bytes", True, "as max_pending_impressions, in bytes"),
    Baked("max_fields", True, "applies unless it is below the number of columns in use (then refused)"),
    Baked("field_admit_min_events", True, "applies to names not yet admitted (their counts are kept)"),
    Baked("field_reclaim_events", True, "applies from the next reclaim check"),
    Baked("mi_blocks", True, "fewer blocks expire the oldest at the next watermark advance; more keep more from now on"),
    Baked("pairs_top_n", True, "applies at the next pair selection"),
    Baked("max_pairs", True, "applies at the next pair selection"),
    Baked("pair_budget", True, "applies at the next pair selection"),
    Baked("pair_min_z", True, "applies at the next pair selection"),
    Baked("gate_max_fields", True, "the gate model starts afresh (a window until gate evidence)"),
    Baked("gate_buckets", True, "the gate model starts afresh"),
    Baked("gate_window", True, "the gate model starts afresh"),
    Baked("closed_values_max_cardinality", True, "the gate model starts afresh"),
    Baked("seed", True, "the gate model starts afresh"),
)
GATE_SETTINGS = frozenset({"gate_max_fields", "gate_buckets", "gate_window", "closed_values_max_cardinality", "seed"})


def _value(settings: Settings, name: str) -> Any:
    value = getattr(settings, name)
    return list(value) if isinstance(value, (list, tuple)) else value


def baked_settings(settings: Settings) -> dict[str, Any]:
    """The values to record in a snapshot."""
    return {b.name: _value(settings, b.name) for b in BAKED}


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def changed_settings(recorded: dict[str, Any], settings: Settings) -> tuple[list[str], list[str]]:
    """``(refused, applied)``: names of the baked settings whose value differs from ``recorded``.

    A setting the snapshot does not record (written before it existed) is taken as unchanged.
    """
    refused: list[str] = []
    applied: list[str] = []
    for b in BAKED:
        if b.name not in recorded or recorded[b.name] == _value(settings, b.name):
            continue
        (applied if b.apply else refused).append(b.name)
    return refused, applied


def refusal(names: list[str], recorded: dict[str, Any], settings: Settings, where: str) -> str:
    """The one-line message for settings that cannot change under restored state."""
    parts = [f"{n} is {_shown(_value(settings, n))} but the state was built with {_shown(recorded[n])}"
             for n in names]
    return (f"settings changed since the state in {where} was written: {'; '.join(parts)}. Set them back, or "
            "start once with --reset-state to move the state aside and rebuild it from the input "
            "(docs/internals.md, 'Settings baked into state')")
