"""Counts of (value, label) for one field, in memory bounded by configuration, exactly mergeable.

Two modes:

* **exact** while the field has at most ``max_values`` distinct values: sorted
  value hashes and their ``[negatives, positives]`` counts;
* **hashed** once it has more: every value is folded into one of
  ``max_values + tail`` buckets by ``hash % buckets`` (the hashing trick).
  Frequent values dominate their bucket, so the head of a skewed field keeps
  its signal, and the null correction (models/nullmi.py) is computed on the
  buckets actually counted.

The mode switch depends only on the *set* of values seen, and folding is
linear, so ``update`` in any batching, and ``merge`` of any partition of the
stream, give exactly the counts of one pass over everything. In hashed
mode a HyperLogLog sketch of the value hashes (models/hll.py, ``2**HLL_P``
one-byte registers: 16 KiB, about 0.8 % standard error) estimates the number
of distinct values; in exact mode the count is exact. The sketch merges
exactly too (register-wise maximum), and it is built from every exact key at
the switch, so the estimate does not depend on batching or partitioning.

Pair tables do not report a cardinality: they are built with ``distinct=False``
and keep no sketch (``distinct_estimate`` is then a lower bound only).

Snapshots written before the sketch (a bottom-256 ``kmv`` list) restore with
the sketch seeded from that list: the cardinality of such a hashed field is
then under-reported until its block expires; its counts and scores are exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models import hll

HLL_P = 14  # 16 KiB of registers per hashed field per block (pairs keep none); ~0.8 % standard error


def _label_counts(index: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """``[negatives, positives]`` per ``index`` in ``[0, size)``: one bincount of ``2 * index + label``."""
    both = index.astype(np.intp, copy=False) * 2 + np.asarray(labels, dtype=np.intp)
    return np.bincount(both, minlength=2 * size).reshape(size, 2).astype(np.int64, copy=False)


def _runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs."""
    if len(ordered) == 0:
        return ordered, np.empty(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.diff(np.append(starts, len(ordered)))


def _union_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The union of two sorted arrays of distinct values, sorted (``np.union1d`` without its
    general-purpose unique: two sorted runs merge in one stable sort)."""
    if len(b) == 0:
        return a
    if len(a) == 0:
        return b
    both = np.concatenate((a, b))
    both.sort(kind="stable")
    keep = np.empty(len(both), dtype=bool)
    keep[0] = True
    np.not_equal(both[1:], both[:-1], out=keep[1:])
    return both[keep]


def _value_counts(hashes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ``hashes`` and their ``[negatives, positives]``: a sort per label (no argsort)."""
    y = np.asarray(labels) != 0
    v0, c0 = _runs(np.sort(hashes[~y]))
    v1, c1 = _runs(np.sort(hashes[y]))
    values = _union_sorted(v0, v1)
    counts = np.zeros((len(values), 2), dtype=np.int64)
    counts[np.searchsorted(values, v0), 0] = c0
    counts[np.searchsorted(values, v1), 1] = c1
    return values, counts


class FieldCounts:
    __slots__ = ("max_values", "tail", "distinct", "keys", "counts", "sketch")

    def __init__(self, max_values: int, tail: int, distinct: bool = True) -> None:
        self.max_values = max_values
        self.tail = tail
        self.distinct = distinct  # keep a distinct-count sketch in hashed mode
        self.keys: np.ndarray | None = np.empty(0, dtype=np.uint64)  # None in hashed mode
        self.counts = np.empty((0, 2), dtype=np.int64)
        self.sketch: np.ndarray | None = None  # HyperLogLog registers, in hashed mode only

    @property
    def buckets(self) -> int:
        return self.max_values + self.tail

    @property
    def hashed(self) -> bool:
        return self.keys is None

    # ------------------------------------------------------------ update
    def update(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        """Count one batch: ``hashes`` uint64 (n,), ``labels`` 0/1 (n,)."""
        if len(hashes) == 0:
            return
        if self.keys is None:
            self.counts += _label_counts(hashes % np.uint64(self.buckets), labels, self.buckets)
            self._sketch(hashes)
            return
        self._add_exact(*_value_counts(hashes, labels))

    def _add_exact(self, values: np.ndarray, counts: np.ndarray) -> None:
        """Add counts of sorted distinct ``values``; switches to hashed mode when too many."""
        assert self.keys is not None
        if len(self.keys) and len(values):
            at = np.searchsorted(self.keys, values)
            if at[-1] < len(self.keys) and np.array_equal(self.keys[at], values):
                self.counts[at] += counts  # every value known already (values are distinct)
                return
        keys = _union_sorted(self.keys, values)
        if len(keys) > self.max_values:
            self._fold()
            self._add_folded(values, counts)
            self._sketch(values)
            return
        merged = np.zeros((len(keys), 2), dtype=np.int64)
        merged[np.searchsorted(keys, self.keys)] += self.counts
        merged[np.searchsorted(keys, values)] += counts
        self.keys, self.counts = keys, merged

    def _add_folded(self, values: np.ndarray, counts: np.ndarray) -> None:
        index = values % np.uint64(self.buckets)
        for j in (0, 1):
            self.counts[:, j] += np.bincount(index, weights=counts[:, j], minlength=self.buckets).astype(np.int64)

    def _fold(self) -> None:
        assert self.keys is not None
        keys, counts = self.keys, self.counts
        self.keys = None
        self.counts = np.zeros((self.buckets, 2), dtype=np.int64)
        self._add_folded(keys, counts)
        if self.distinct:
            self.sketch = hll.registers(HLL_P)
            hll.add(self.sketch, keys)  # every value seen so far: the sketch is that of the whole stream

    def _sketch(self, hashes: np.ndarray) -> None:
        if self.sketch is not None:
            hll.add(self.sketch, hashes)

    # ------------------------------------------------------------- merge
    def merge(self, other: FieldCounts) -> None:
        """Add ``other``'s counts (same sizes); the result equals one pass over both streams."""
        if (other.max_values, other.tail) != (self.max_values, self.tail):
            raise ValueError("cannot merge field counts of different sizes")
        if not other.distinct:  # a pair table (or one restored from before pairs had none): no sketch
            self.distinct, self.sketch = False, None
        if other.keys is not None and len(other.keys) == 0:
            return
        if other.keys is None:
            if self.keys is not None:
                self._fold()
            self.counts += other.counts
            if self.sketch is not None and other.sketch is not None:
                hll.merge(self.sketch, other.sketch)
        elif self.keys is None:
            self._add_folded(other.keys, other.counts)
            self._sketch(other.keys)
        else:
            self._add_exact(other.keys, other.counts)

    def copy(self) -> FieldCounts:
        out = FieldCounts(self.max_values, self.tail, self.distinct)
        out.keys = None if self.keys is None else self.keys.copy()
        out.counts = self.counts.copy()
        out.sketch = None if self.sketch is None else self.sketch.copy()
        return out

    # ----------------------------------------------------------- reading
    def category_counts(self) -> np.ndarray:
        """``[negatives, positives]`` per counted category (values, or non-empty buckets)."""
        if self.keys is not None:
            return self.counts
        return self.counts[self.counts.sum(axis=1) > 0]

    def distinct_estimate(self) -> int:
        """Distinct values: exact in exact mode, the HyperLogLog estimate in hashed mode
        (without a sketch, ``distinct=False``: only the lower bound ``max_values + 1``)."""
        if self.keys is not None:
            return len(self.keys)
        estimate = 0 if self.sketch is None else int(round(hll.estimate(self.sketch)))
        return max(estimate, self.max_values + 1)

    @property
    def distinct_estimated(self) -> bool:
        """Whether :meth:`distinct_estimate` is an estimate (hashed mode) rather than exact."""
        return self.keys is None

    def nbytes(self) -> int:
        keys = 0 if self.keys is None else self.keys.nbytes
        return keys + self.counts.nbytes + (0 if self.sketch is None else self.sketch.nbytes)

    def snapshot(self) -> dict[str, Any]:
        return {
            "max_values": self.max_values,
            "tail": self.tail,
            "keys": None if self.keys is None else self.keys.copy(),
            "counts": self.counts.copy(),
            "distinct": self.distinct,
            "hll": None if self.sketch is None else self.sketch.copy(),
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> FieldCounts:
        out = cls(int(snap["max_values"]), int(snap["tail"]), bool(snap.get("distinct", True)))
        keys = snap["keys"]
        out.keys = None if keys is None else np.asarray(keys, dtype=np.uint64)
        out.counts = np.asarray(snap["counts"], dtype=np.int64).reshape(-1, 2)
        if out.keys is None and out.distinct:
            if snap.get("hll") is not None:
                out.sketch = np.asarray(snap["hll"], dtype=np.uint8)
                if len(out.sketch) != 1 << HLL_P:
                    raise ValueError("field counts snapshot: wrong number of HyperLogLog registers")
            else:  # a snapshot of before the sketch: seed it with the bottom-k hashes it kept
                out.sketch = hll.registers(HLL_P)
                hll.add(out.sketch, np.asarray(snap.get("kmv", ()), dtype=np.uint64))
        if out.keys is not None and len(out.keys) != len(out.counts):
            raise ValueError("field counts snapshot: keys and counts differ in length")
        if out.keys is None and len(out.counts) != out.buckets:
            raise ValueError("field counts snapshot: wrong number of buckets")
        return out
