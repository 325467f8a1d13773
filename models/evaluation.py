"""Pure pieces of the prequential mask comparison (``featsieve evaluate``).

* :class:`ScoreHistogram`: ROC AUC and log loss of a stream of predictions in
  bounded memory. Scores are binned by logit (``bins`` equal bins over
  ``[-limit, limit]``); pairs in one bin count as ties (half), which is exact
  for tied scores and off by at most half the share of positive-negative pairs
  that share a bin otherwise (bins are 0.001 logit wide by default). Log loss
  is exact (a running sum).
* :func:`top_k` and :func:`ranking`: the k best fields by a score, ties broken
  by name, so equal scores always give the same subset.
* :func:`random_order`: a seeded permutation of field names (the floor a
  ranking must beat); nested, so the random top-k of a smaller ratio is a
  prefix of a larger one.
* :func:`kept_count`, :func:`aukc`: fields kept at a keep ratio, and the
  area under the AUC-vs-kept-fields curve (after ERASE's AUKC).
* :func:`subset_columns`, :func:`mask_columns`: field-subset views of a
  batch of value hashes (drop columns, or set them to :data:`MISSING`).
* :func:`embedding_bytes`: the embedding memory a set of fields needs.

No I/O, no clock, no global state; randomness only from seeds passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from models.interning import MISSING

_CLIP = 1e-7  # probabilities are clipped as the gate model clips them for its own log loss


class ScoreHistogram:
    """Streaming ROC AUC and log loss of (label, probability) pairs.

    Contract: ``update`` adds a batch; ``auc()`` is None until both classes
    were seen; ``merge`` of the histograms of two parts of a stream equals the
    histogram of the whole. Memory is ``2 x bins`` counters whatever the
    stream length.
    """

    def __init__(self, bins: int = 1 << 15, limit: float = 16.0) -> None:
        if bins < 2 or not limit > 0:
            raise ValueError(f"ScoreHistogram needs bins >= 2 and limit > 0; got bins={bins}, limit={limit}")
        self.bins = bins
        self.limit = float(limit)
        self.neg = np.zeros(bins, dtype=np.int64)
        self.pos = np.zeros(bins, dtype=np.int64)
        self.loss_sum = 0.0
        self.n = 0

    def update(self, labels: np.ndarray, probs: np.ndarray) -> None:
        """Add a batch; labels are 0/1, probabilities in [0, 1] (NaN is refused)."""
        y = np.asarray(labels).astype(bool, copy=False)
        p = np.asarray(probs, dtype=np.float64)
        if y.shape != p.shape:
            raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
        if np.isnan(p).any():
            raise ValueError("a model predicted NaN: the evaluation cannot score it")
        p = np.clip(p, _CLIP, 1.0 - _CLIP)
        logit = np.log(p) - np.log1p(-p)
        idx = np.floor((logit + self.limit) / (2 * self.limit) * self.bins).astype(np.int64)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.pos += np.bincount(idx[y], minlength=self.bins)
        self.neg += np.bincount(idx[~y], minlength=self.bins)
        self.loss_sum += float(-(np.log(p[y]).sum() + np.log1p(-p[~y]).sum()))
        self.n += len(y)

    def merge(self, other: ScoreHistogram) -> None:
        if (other.bins, other.limit) != (self.bins, self.limit):
            raise ValueError("only histograms with the same bins and limit can be merged")
        self.pos += other.pos
        self.neg += other.neg
        self.loss_sum += other.loss_sum
        self.n += other.n

    def auc(self) -> float | None:
        """P(score of a positive > score of a negative), ties (same bin) counted half."""
        npos, nneg = int(self.pos.sum()), int(self.neg.sum())
        if npos == 0 or nneg == 0:
            return None
        neg_below = np.cumsum(self.neg) - self.neg
        wins = (self.pos.astype(np.float64) * (neg_below + 0.5 * self.neg)).sum()
        return float(wins / (float(npos) * float(nneg)))

    def logloss(self) -> float | None:
        return self.loss_sum / self.n if self.n else None


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by ranks (ties half); O(n) memory, for tests and small inputs."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return None
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Field names best first; ties (and NaN, ranked last) broken by name."""
    def key(name: str) -> tuple[float, str]:
        s = scores[name]
        return (math.inf if math.isnan(s) else -s, name)

    return sorted(scores, key=key)


def top_k(scores: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` best fields by score (ties by name), in rank order."""
    if k < 0:
        raise ValueError(f"top_k needs k >= 0, got {k}")
    return ranking(scores)[:k]


def random_order(names: Sequence[str], seed: int) -> list[str]:
    """A permutation of ``names`` that depends only on the set of names and the seed."""
    base = sorted(set(names))
    perm = np.random.default_rng(seed).permutation(len(base))
    return [base[i] for i in perm.tolist()]


def kept_count(ratio: float, n_fields: int) -> int:
    """Fields kept at a keep ratio: ceil(ratio x n), at least 1 (0.1 of 40 is 4)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"keep ratios must be in (0, 1]; got {ratio}")
    if n_fields < 1:
        raise ValueError("kept_count needs at least one field")
    return max(1, min(n_fields, math.ceil(ratio * n_fields - 1e-9)))


def aukc(kept: Sequence[float], aucs: Sequence[float]) -> float:
    """Area under the AUC-vs-kept-fields curve, normalised by the span of kept fields.

    ``kept`` are the numbers (or shares) of fields kept, ``aucs`` the AUC at
    each; the trapezoid area over [min kept, max kept] divided by that span,
    so the result is the curve's mean AUC in AUC units (a method whose AUC is
    flat at a has AUKC a). Points are sorted by ``kept`` first; one point
    gives its AUC.
    """
    if len(kept) != len(aucs) or not kept:
        raise ValueError("aukc needs as many AUCs as kept-field counts, at least one")
    pts = sorted(zip((float(k) for k in kept), (float(a) for a in aucs), strict=True))
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    span = xs[-1] - xs[0]
    if span == 0:
        return sum(ys) / len(ys)
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2.0 for i in range(len(xs) - 1))
    return area / span


def subset_columns(hashes: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """The batch restricted to ``columns`` (in that order); a new contiguous array."""
    return np.ascontiguousarray(hashes[:, list(columns)])


def mask_columns(hashes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """A copy of the batch with the columns where ``keep`` is False set to MISSING."""
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (hashes.shape[1],):
        raise ValueError(f"keep has shape {keep.shape}, the batch has {hashes.shape[1]} columns")
    out = hashes.copy()
    out[:, ~keep] = np.uint64(MISSING)
    return out


def embedding_bytes(cardinality: Mapping[str, int], fields: Sequence[str], buckets: int, dim: int) -> int:
    """Float32 bytes of a hashed embedding + linear weight per value: min(cardinality, buckets) rows a field."""
    return sum(min(int(cardinality.get(f, buckets)), buckets) for f in fields) * (dim + 1) * 4
