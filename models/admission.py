"""Which field names earn a column: admission by count, reclaim by staleness. Pure, deterministic.

A name gets a column only once it has been seen in ``min_events`` accepted
events (:class:`FieldAdmission`), so a producer that sends thousands of names,
each in a few events, takes no column, no MI counts and no room in the rows
the join holds. The candidates' counts live in a table of at most
``capacity`` names, kept by the Misra-Gries rule: a new name arriving at a
full table lowers every count by one (names at zero leave) and is itself not
counted. Whatever the stream, a name seen in more than ``total / (capacity +
1)`` of the events offered keeps a count within that much of its true count,
and the work per offer is O(1) amortised (each lowering removes ``capacity``
from the total, which offers add to one at a time).

A tracked column whose field has not been seen in ``reclaim_events``
consecutive events is *stale* (:class:`ColumnActivity`); the daemon
reclaims it (its column, its evidence and its gate state are cleared) and
the name must earn a column again.

Both are functions of the sequence of calls only: replaying the same events
in the same order gives the same state, and ``snapshot``/``restore`` round
trips exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class FieldAdmission:
    """Counts of names without a column; :meth:`seen` says when one has earned it."""

    def __init__(self, min_events: int, capacity: int = 4096) -> None:
        if min_events < 1 or capacity < 1:
            raise ValueError("min_events and capacity must be >= 1")
        self.min_events = min_events
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.lowered = 0  # times the full table lowered every count (Misra-Gries steps)

    def seen(self, name: str) -> bool:
        """Count one accepted event holding ``name``; True when this event completes its
        ``min_events`` (the name leaves the table: the caller gives it a column)."""
        count = self.counts.get(name)
        if count is None:
            if len(self.counts) >= self.capacity:
                self.counts = {k: c - 1 for k, c in self.counts.items() if c > 1}
                self.lowered += 1
                return False
            count = 0
        count += 1
        if count >= self.min_events:
            self.counts.pop(name, None)
            return True
        self.counts[name] = count
        return False

    def forget(self, name: str) -> None:
        """Drop a name's count (it was given a column some other way)."""
        self.counts.pop(name, None)

    def snapshot(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "counts": [[n, c] for n, c in self.counts.items()],
                "lowered": self.lowered}

    @classmethod
    def restore(cls, snap: dict[str, Any], min_events: int) -> FieldAdmission:
        """Rebuild from :meth:`snapshot`; ``min_events`` is today's setting (it applies from now)."""
        out = cls(min_events, int(snap["capacity"]))
        out.counts = {str(n): int(c) for n, c in snap["counts"]}
        out.lowered = int(snap.get("lowered", 0))
        return out


class ColumnActivity:
    """Per column, the number of the last event that held a value for it.

    ``events`` counts the events applied (numbered from 1); a column is stale once ``events -
    last_seen > reclaim_events`` (``reclaim_events`` 0: never).
    """

    def __init__(self, reclaim_events: int) -> None:
        if reclaim_events < 0:
            raise ValueError("reclaim_events must be >= 0")
        self.reclaim_events = reclaim_events
        self.events = 0
        self.last_seen: list[int] = []

    def touch(self, col: int, event: int) -> None:
        """Event number ``event`` held a value for ``col`` (or ``col`` was just given to a name)."""
        while len(self.last_seen) <= col:
            self.last_seen.append(self.events)
        if event > self.last_seen[col]:
            self.last_seen[col] = event

    def observe(self, last_in_batch: Sequence[int], n_events: int) -> None:
        """Record a batch of ``n_events`` events: ``last_in_batch[col]`` is the index in the batch
        of the last event holding a value for ``col`` (-1: none)."""
        first = self.events
        for col, k in enumerate(last_in_batch):
            if k >= 0:
                self.touch(col, first + k + 1)
        self.events = first + n_events

    def stale(self, in_use: Iterable[int]) -> list[int]:
        """The columns of ``in_use`` not seen in the last ``reclaim_events`` events, in order."""
        if self.reclaim_events == 0:
            return []
        return sorted(c for c in in_use
                      if c < len(self.last_seen) and self.events - self.last_seen[c] > self.reclaim_events)

    def snapshot(self) -> dict[str, Any]:
        return {"events": self.events, "last_seen": list(self.last_seen)}

    @classmethod
    def restore(cls, snap: dict[str, Any], reclaim_events: int) -> ColumnActivity:
        """Rebuild from :meth:`snapshot`; ``reclaim_events`` is today's setting."""
        out = cls(reclaim_events)
        out.events = int(snap["events"])
        out.last_seen = [int(x) for x in snap["last_seen"]]
        return out
