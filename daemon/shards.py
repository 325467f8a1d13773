"""Per-shard state: the join buffer, MI counts and input offsets of one partition number.

A shard is partition p of every input topic (see docs/internals.md). Keeping
state per shard lets a revoked shard be checkpointed and resumed exactly by
the instance that gets it next, and lets several instances' states be merged
into the global score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from connectors.join import JoinBuffer
from models.admission import FieldAdmission
from models.mi import MIConfig, MIState, merge_held_back


@dataclass
class ShardState:
    """Everything one shard owns. ``offsets`` maps (topic, partition) to the next offset to read."""

    shard: int
    join: JoinBuffer
    mi: MIState
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)  # join counters already exported as metrics
    # Field admission is per shard (models/admission.py): a field's values enter this shard's rows
    # and MI once this shard has seen it in field_admit_min_events accepted events, so the shard's
    # state is a function of its own stream, whatever order the shards' batches are applied in.
    # ``admitted`` None: restored from a version without it (the daemon takes every column).
    admission: FieldAdmission = field(default_factory=lambda: FieldAdmission(1))
    admitted: set[str] | None = field(default_factory=set)

    def snapshot(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "join": self.join.snapshot(),
            "mi": self.mi.snapshot(),
            "offsets": [[t, p, o] for (t, p), o in sorted(self.offsets.items())],
            "admission": self.admission.snapshot(),
            "admitted": sorted(self.admitted) if self.admitted is not None else None,
        }

    @classmethod
    def restore(cls, snap: dict[str, Any], admit_min_events: int = 1) -> ShardState:
        adm = snap.get("admission")
        admitted = snap.get("admitted")
        return cls(
            shard=int(snap["shard"]),
            join=JoinBuffer.restore(snap["join"]),
            mi=MIState.restore(snap["mi"]),
            offsets={(t, int(p)): int(o) for t, p, o in snap["offsets"]},
            admission=(FieldAdmission.restore(adm, admit_min_events) if adm is not None
                       else FieldAdmission(admit_min_events)),
            admitted=set(admitted) if admitted is not None else None,
        )


def merged_mi(shards: Iterable[ShardState], config: MIConfig, others: Iterable[MIState] = ()) -> MIState:
    """The global MI state: the exact merge of the shards' states (and ``others``: other
    instances' shards). A shard whose event time runs ahead expires nothing of the others'."""
    return merge_held_back([*(shard.mi for shard in shards), *others], config)
