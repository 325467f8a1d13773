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
stream, give exactly the counts of one pass over everything. A bottom-k
sketch of the value hashes estimates the number of distinct values in
hashed mode (exact in exact mode).
"""

from __future__ import annotations

from typing import Any

import numpy as np

KMV_SIZE = 256
_TWO64 = float(1 << 64)


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
    __slots__ = ("max_values", "tail", "keys", "counts", "kmv")

    def __init__(self, max_values: int, tail: int) -> None:
        self.max_values = max_values
        self.tail = tail
        self.keys: np.ndarray | None = np.empty(0, dtype=np.uint64)  # None in hashed mode
        self.counts = np.empty((0, 2), dtype=np.int64)
        self.kmv = np.empty(0, dtype=np.uint64)

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
        self.kmv = keys[:KMV_SIZE]

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

    def _sketch(self, hashes: np.ndarray) -> None:
        if len(self.kmv) == KMV_SIZE:
            hashes = hashes[hashes < self.kmv[-1]]
            if len(hashes) == 0:
                return
        self.kmv = np.union1d(self.kmv, hashes)[:KMV_SIZE]

    # ------------------------------------------------------------- merge
    def merge(self, other: FieldCounts) -> None:
        """Add ``other``'s counts (same sizes); the result equals one pass over both streams."""
        if (other.max_values, other.tail) != (self.max_values, self.tail):
            raise ValueError("cannot merge field counts of different sizes")
        if other.keys is not None and len(other.keys) == 0:
            return
        if other.keys is None:
            if self.keys is not None:
                self._fold()
            self.counts += other.counts
            self._sketch(other.kmv)
        elif self.keys is None:
            self._add_folded(other.keys, other.counts)
            self._sketch(other.kmv)
        else:
            self._add_exact(other.keys, other.counts)

    def copy(self) -> FieldCounts:
        out = FieldCounts(self.max_values, self.tail)
        out.keys = None if self.keys is None else self.keys.copy()
        out.counts = self.counts.copy()
        out.kmv = self.kmv.copy()
        return out

    # ----------------------------------------------------------- reading
    def category_counts(self) -> np.ndarray:
        """``[negatives, positives]`` per counted category (values, or non-empty buckets)."""
        if self.keys is not None:
            return self.counts
        return self.counts[self.counts.sum(axis=1) > 0]

    def distinct_estimate(self) -> int:
        if self.keys is not None:
            return len(self.keys)
        if len(self.kmv) < KMV_SIZE:
            return len(self.kmv)
        return int(round((KMV_SIZE - 1) / (float(self.kmv[-1]) / _TWO64)))

    def nbytes(self) -> int:
        keys = 0 if self.keys is None else self.keys.nbytes
        return keys + self.counts.nbytes + self.kmv.nbytes

    def snapshot(self) -> dict[str, Any]:
        return {
            "max_values": self.max_values,
            "tail": self.tail,
            "keys": None if self.keys is None else self.keys.copy(),
            "counts": self.counts.copy(),
            "kmv": self.kmv.copy(),
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> FieldCounts:
        out = cls(int(snap["max_values"]), int(snap["tail"]))
        keys = snap["keys"]
        out.keys = None if keys is None else np.asarray(keys, dtype=np.uint64)
        out.counts = np.asarray(snap["counts"], dtype=np.int64).reshape(-1, 2)
        out.kmv = np.asarray(snap["kmv"], dtype=np.uint64)
        if out.keys is not None and len(out.keys) != len(out.counts):
            raise ValueError("field counts snapshot: keys and counts differ in length")
        if out.keys is None and len(out.counts) != out.buckets:
            raise ValueError("field counts snapshot: wrong number of buckets")
        return out
