"""Streaming, cardinality-corrected mutual information of every field (and chosen pairs) with the click.

After OutRank: a field's score is its plug-in MI with the label minus the MI
it would show by chance given its value counts (models/nullmi.py), so
ID-like fields score near zero instead of winning. Unlike OutRank it runs
online:

* **bounded memory**: per field and event-time block, a :class:`FieldCounts`
  of at most ``max_values + tail_buckets`` categories; ``blocks`` blocks of
  ``block_ms`` are kept (older evidence expires as event time passes), so
  memory is ``fields x blocks x ((max_values + tail_buckets) x 24 bytes +
  16 KiB)`` at most (the 16 KiB: the distinct-count sketch of a hashed field,
  models/fieldcounts.py), whatever the stream length or cardinality;
* **exactly mergeable**: the state of any partition of the stream, merged,
  equals the state of one pass over all of it (shards, instances, restarts);
* **significance**: every score comes with ``z`` = (MI - E) / sd of the null;
* **pairs**: the joint (a, b) of chosen pairs is scored too (interactions
  such as XOR that no single field shows), and a pair whose two fields
  determine each other (normalised MI between them of at least
  ``redundancy_threshold``) marks the weaker field redundant.

Pair candidates are chosen when a new block opens (or set with
:meth:`MIState.set_pairs`): the pairs among the top ``pairs_top_n`` fields,
the pairs whose gain over their parts is significant (``pair_keep_z``), and
a slice of *all* pairs that rotates with the block number, so that every
pair of fields is scored within ``ceil(all pairs / free slots)`` blocks
however weak its fields are alone (:meth:`MIState.candidate_pairs`). At most
``max_pairs`` pairs are counted at once. A pair's counts cover the blocks
since it was chosen, and its marginals are taken over the same blocks.
Offline (one block), :func:`all_pairs` chooses every pair up to
``pair_budget`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.fieldcounts import FieldCounts
from models.interning import EncodedBatch
from models.nullmi import entropy, null_moments, plugin_mi

SNAPSHOT_FORMAT = 1
Pair = tuple[str, str]


@dataclass(frozen=True)
class MIConfig:
    max_values: int = 4096
    tail_buckets: int = 1024
    block_ms: int = 7_200_000  # 0: one block, nothing expires
    blocks: int = 12
    pairs_top_n: int = 8  # 0 or 1: no pairs at all
    max_pairs: int = 96  # pairs counted at once (online: top pairs + held + rotating slice)
    redundancy_threshold: float = 0.95
    pairs_rotate: bool = True  # online: fill the free pair slots with a slice of all pairs, rotating by block
    pair_keep_z: float = 6.0  # a pair whose gain over its parts has this z stays a candidate
    pair_budget: int = 2016  # offline: score every pair while there are at most this many (64 fields)

    def __post_init__(self) -> None:
        if self.max_values < 1 or self.tail_buckets < 1:
            raise ValueError("mi max_values and tail_buckets must be >= 1")
        if self.block_ms < 0 or self.blocks < 1:
            raise ValueError("mi block_ms must be >= 0 and blocks >= 1")
        if self.pairs_top_n < 0 or self.max_pairs < 0 or self.pair_budget < 0:
            raise ValueError("mi pairs_top_n, max_pairs and pair_budget must be >= 0")
        if math.isnan(self.pair_keep_z):
            raise ValueError("mi pair_keep_z must be a number")
        if not 0.0 < self.redundancy_threshold <= 1.0:
            raise ValueError("mi redundancy_threshold must be in (0, 1]")


@dataclass(frozen=True)
class FieldScore:
    name: str
    score: float  # corrected MI (nats): mi - expected
    mi: float  # plug-in MI (nats)
    expected: float  # mean plug-in MI under permuted labels
    z: float  # (mi - expected) / sd of the null
    examples: int
    positives: int
    cardinality: int  # distinct values (a HyperLogLog estimate above max_values: see ``estimated``)
    entropy: float
    redundant_with: str | None = None
    sd: float = 0.0  # sd of the plug-in MI under the null: the noise scale of ``score``
    estimated: bool = False  # cardinality is an estimate (the field has more than max_values values)


@dataclass(frozen=True)
class PairScore:
    fields: Pair
    score: float  # corrected MI of the joint (a, b) with the label
    mi: float
    z: float
    gain: float  # score - score(a) - score(b): what the pair adds over its parts
    nmi: float  # MI(a; b) / max(H(a), H(b)) over the pair's blocks
    sd: float = 0.0  # sd of the joint's plug-in MI under the null
    hashed: bool = False  # the joint had more values than max_values: folded, its gain unmeasured

    @property
    def gain_z(self) -> float:
        """The gain in units of the joint's null sd (0 when the sd is 0)."""
        return self.gain / self.sd if self.sd > 0 else 0.0


def corrected_sd(counts: np.ndarray) -> tuple[float, float, float, float, float]:
    """(score, mi, expected, z, sd) of a ``[negatives, positives]`` category table."""
    n = int(counts.sum())
    n1 = int(counts[:, 1].sum()) if n else 0
    mi = plugin_mi(counts)
    expected, variance = null_moments(counts.sum(axis=1), n, n1)
    sd = math.sqrt(variance) if variance > 0 else 0.0
    z = (mi - expected) / sd if sd > 0 else 0.0
    return mi - expected, mi, expected, z, sd


def corrected(counts: np.ndarray) -> tuple[float, float, float, float]:
    """(score, mi, expected, z) of a ``[negatives, positives]`` category table."""
    return corrected_sd(counts)[:4]


def ranked_pairs(ranked: Sequence[str]) -> list[Pair]:
    """Every pair of ``ranked`` (best first) so that any prefix of the list holds all the pairs
    among the top k fields before any pair with a field below them: a pair budget then
    scores all pairs among as many of the top fields as it allows."""
    return [(min(a, b), max(a, b)) for k, b in enumerate(ranked) for a in ranked[:k]]


def all_pairs(names: Iterable[str]) -> list[Pair]:
    """Every pair of distinct names, each sorted, in lexicographic order."""
    ordered = sorted(set(names))
    return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def pair_hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A 64-bit hash of the value pair (splitmix64 finaliser of a combination)."""
    x = a * _GOLDEN ^ (b + np.uint64(0x632BE59BD9B4E019))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _merge_all(parts: Iterable[FieldCounts]) -> FieldCounts | None:
    total: FieldCounts | None = None
    for part in parts:
        if total is None:
            total = part.copy()
        else:
            total.merge(part)
    return total


class MIState:
    """Per-block field (and pair) counts; ``update``, ``merge``, ``scores``, ``snapshot``/``restore``."""

    def __init__(self, config: MIConfig | None = None) -> None:
        self.config = config or MIConfig()
        self.blocks: dict[int, dict[str, FieldCounts]] = {}
        self.pair_blocks: dict[int, dict[Pair, FieldCounts]] = {}
        self.pairs: tuple[Pair, ...] = ()
        self.newest_block: int | None = None
        self.expired_examples = 0

    def _new_counts(self, distinct: bool = True) -> FieldCounts:
        """Counts of a field (with a distinct-count sketch) or of a pair (``distinct=False``: none kept)."""
        return FieldCounts(self.config.max_values, self.config.tail_buckets, distinct)

    def _block_ids(self, ts: np.ndarray) -> np.ndarray:
        if self.config.block_ms == 0:
            return np.zeros(len(ts), dtype=np.int64)
        return np.asarray(ts, dtype=np.int64) // self.config.block_ms

    def _oldest_live(self) -> int | None:
        return None if self.newest_block is None else self.newest_block - self.config.blocks + 1

    # ------------------------------------------------------------ update
    def update(self, batch: EncodedBatch, labels: np.ndarray, ts: np.ndarray, advance: bool = True) -> None:
        """Count a batch of labelled examples with event times ``ts`` (epoch ms).

        With ``advance=False`` the examples' times never expire anything: only :meth:`advance`
        (the join's watermark) moves the newest block. The daemon counts that way, so that an
        example whose impression was ahead of the rest cannot expire the evidence of the others.
        """
        n = len(labels)
        if n == 0:
            return
        labels = np.asarray(labels)
        block = self._block_ids(ts)
        newest = int(block.max())
        if advance and (self.newest_block is None or newest > self.newest_block):
            opened = self.newest_block is not None
            if opened and self.config.pairs_top_n >= 2:
                self.set_pairs(self.candidate_pairs(newest))
            self.newest_block = newest
            self._expire()
        oldest = self._oldest_live()
        live = block >= (oldest if oldest is not None else np.iinfo(np.int64).min)
        self.expired_examples += int(n - live.sum())
        columns = {name: j for j, name in enumerate(batch.fields)}
        for b in np.unique(block[live]).tolist():
            rows = np.flatnonzero(block == b)
            single = len(rows) == n
            h = batch.hashes if single else batch.hashes[rows]
            y = labels if single else labels[rows]
            fields = self.blocks.setdefault(b, {})
            for name, j in columns.items():
                counts = fields.get(name)
                if counts is None:
                    counts = fields[name] = self._new_counts()
                counts.update(h[:, j], y)
            if self.pairs:
                pair_tables = self.pair_blocks.setdefault(b, {})
                for pair in self.pairs:
                    ja, jb = columns.get(pair[0]), columns.get(pair[1])
                    if ja is None or jb is None:
                        continue
                    table = pair_tables.get(pair)
                    if table is None:
                        table = pair_tables[pair] = self._new_counts(distinct=False)
                    table.update(pair_hash(h[:, ja], h[:, jb]), y)

    def advance(self, watermark_ms: int | None) -> None:
        """Expire blocks that event time (the join's watermark) has left behind."""
        if watermark_ms is None or self.config.block_ms == 0:
            return
        block = int(watermark_ms) // self.config.block_ms
        if self.newest_block is None or block > self.newest_block:
            if self.newest_block is not None and self.config.pairs_top_n >= 2:
                self.set_pairs(self.candidate_pairs(block))
            self.newest_block = block
            self._expire()

    def _expire(self) -> None:
        oldest = self._oldest_live()
        for table in (self.blocks, self.pair_blocks):
            for b in [b for b in table if oldest is not None and b < oldest]:
                del table[b]

    def set_pairs(self, pairs: Iterable[Pair], limit: int | None = None) -> None:
        """Score these pairs from now on: the first ``limit`` (default ``max_pairs``) distinct
        pairs in the order given, each with its names sorted, held in sorted order."""
        unique = dict.fromkeys((min(a, b), max(a, b)) for a, b in pairs if a != b)
        self.pairs = tuple(sorted(list(unique)[: self.config.max_pairs if limit is None else limit]))

    def rotating_slots(self) -> int:
        """Pairs of the rotating slice: ``max_pairs`` less the pairs among the top fields."""
        top = self.config.pairs_top_n
        return max(self.config.max_pairs - top * (top - 1) // 2, 0) if self.config.pairs_rotate else 0

    def candidate_pairs(self, block: int = 0) -> list[Pair]:
        """The pairs to count from block ``block`` on, at most ``max_pairs``:

        1. pairs already counted whose gain over their parts has ``gain_z >= pair_keep_z``
           (a found interaction stays found), then all pairs among the ``pairs_top_n`` fields
           with the highest (positive) scores, together at most ``max_pairs`` less the slice;
        2. with ``pairs_rotate``, a slice of :func:`all_pairs` of the fields, of
           :meth:`rotating_slots` pairs, that starts at ``block * slots`` (cyclically): every
           pair is counted within ``ceil(len(all_pairs) / slots)`` consecutive blocks, whatever
           its fields score alone.

        A function of the state and ``block`` only, so merged and restored states choose alike.
        """
        cfg = self.config
        scores = self.scores(with_pairs=False)
        fields = {s.name: s for s in scores}
        held = [p.fields for p in self.pair_scores(fields) if p.gain > 0 and p.gain_z >= cfg.pair_keep_z]
        top = [s.name for s in scores[: cfg.pairs_top_n] if s.score > 0]
        slots = self.rotating_slots()
        chosen = list(dict.fromkeys([*held, *all_pairs(top)]))[: max(cfg.max_pairs - slots, 0)]
        every = all_pairs(fields)
        if slots and every:
            start = (block * slots) % len(every)
            chosen += [every[(start + i) % len(every)] for i in range(min(slots, len(every)))]
        return list(dict.fromkeys(chosen))

    # ------------------------------------------------------------- merge
    def merge(self, other: MIState, expire: bool = True) -> None:
        """Add another state's counts; equal to one pass over both streams.

        ``expire=False`` keeps every block of both (and the newest block of ``self``): to merge
        shards whose event time is not the same, where one running ahead must not expire the
        evidence of the others (see :func:`merge_held_back`)."""
        if (other.config.max_values, other.config.tail_buckets, other.config.block_ms) != (
            self.config.max_values, self.config.tail_buckets, self.config.block_ms,
        ):
            raise ValueError("cannot merge MI states with different max_values, tail_buckets or block_ms")
        for mine, theirs in ((self.blocks, other.blocks), (self.pair_blocks, other.pair_blocks)):
            for b, tables in theirs.items():
                target: dict[Any, FieldCounts] = mine.setdefault(b, {})  # type: ignore[assignment]
                for key, counts in tables.items():
                    if key in target:
                        target[key].merge(counts)
                    else:
                        target[key] = counts.copy()
        if expire and other.newest_block is not None and (
            self.newest_block is None or other.newest_block > self.newest_block
        ):
            self.newest_block = other.newest_block
        self.set_pairs(sorted({*self.pairs, *other.pairs}))
        self.expired_examples += other.expired_examples
        if expire:
            self._expire()

    def drop_field(self, name: str) -> None:
        """Forget a field (its column was reclaimed): its counts in every block, and every pair
        with it. The per-field counts left are those of a stream that never had the field; pair
        tables chosen while it was a candidate stay until the next selection (see docs/internals.md)."""
        for fields in self.blocks.values():
            fields.pop(name, None)
        for tables in self.pair_blocks.values():
            for pair in [p for p in tables if name in p]:
                del tables[pair]
        self.pairs = tuple(p for p in self.pairs if name not in p)
        for table in (self.blocks, self.pair_blocks):
            for b in [b for b, f in table.items() if not f]:
                del table[b]

    # ----------------------------------------------------------- reading
    def field_names(self) -> list[str]:
        return sorted({name for fields in self.blocks.values() for name in fields})

    def field_counts(self, name: str, blocks: Iterable[int] | None = None) -> FieldCounts | None:
        chosen = sorted(self.blocks) if blocks is None else blocks
        return _merge_all(self.blocks[b][name] for b in chosen if b in self.blocks and name in self.blocks[b])

    def _score_field(self, name: str, counts: FieldCounts) -> FieldScore:
        table = counts.category_counts()
        score, mi, expected, z, sd = corrected_sd(table)
        return FieldScore(
            name=name, score=score, mi=mi, expected=expected, z=z,
            examples=int(table.sum()), positives=int(table[:, 1].sum()),
            cardinality=counts.distinct_estimate(), entropy=entropy(table.sum(axis=1)), sd=sd,
            estimated=counts.distinct_estimated,
        )

    def scores(self, with_pairs: bool = True) -> list[FieldScore]:
        """Every field's score, best first (ties by name), with redundancy flags from the pair tables."""
        if with_pairs:
            return self.scores_and_pairs()[0]
        return self._field_scores()

    def _field_scores(self) -> list[FieldScore]:
        out = []
        for name in self.field_names():
            counts = self.field_counts(name)
            assert counts is not None
            out.append(self._score_field(name, counts))
        return sorted(out, key=lambda s: (-s.score, s.name))

    def scores_and_pairs(self) -> tuple[list[FieldScore], list[PairScore]]:
        """Field scores (best first, with redundancy flags) and pair scores, in one pass."""
        out = {s.name: s for s in self._field_scores()}
        pairs = self.pair_scores(out)
        for pair in pairs:
            if pair.nmi < self.config.redundancy_threshold:
                continue
            a, b = (out[f] for f in pair.fields)
            strong, weak = (a, b) if (-a.score, a.name) <= (-b.score, b.name) else (b, a)
            if out[weak.name].redundant_with is None:
                out[weak.name] = _with_redundant(weak, strong.name)
        return sorted(out.values(), key=lambda s: (-s.score, s.name)), pairs

    def pair_scores(self, fields: dict[str, FieldScore] | None = None) -> list[PairScore]:
        """Scores of the pairs that have counts, best first."""
        names = set(self.field_names())
        if fields is None:
            fields = {}
        result = []
        keys = sorted({p for tables in self.pair_blocks.values() for p in tables})
        for pair in keys:
            if pair[0] not in names or pair[1] not in names:
                continue
            blocks = sorted(b for b, tables in self.pair_blocks.items() if pair in tables)
            joint = _merge_all(self.pair_blocks[b][pair] for b in blocks)
            ca, cb = self.field_counts(pair[0], blocks), self.field_counts(pair[1], blocks)
            if joint is None or ca is None or cb is None:
                continue
            table = joint.category_counts()
            score, mi, _, z, sd = corrected_sd(table)
            ha, hb = entropy(ca.category_counts().sum(axis=1)), entropy(cb.category_counts().sum(axis=1))
            hab = entropy(table.sum(axis=1))
            top = max(ha, hb)
            nmi = min(max((ha + hb - hab) / top, 0.0), 1.0) if top > 0 else 0.0
            sa = fields[pair[0]].score if pair[0] in fields else self._score_field(pair[0], ca).score
            sb = fields[pair[1]].score if pair[1] in fields else self._score_field(pair[1], cb).score
            result.append(PairScore(pair, score, mi, z, score - sa - sb, nmi, sd, joint.hashed))
        return sorted(result, key=lambda p: (-p.score, p.fields))

    def examples(self) -> int:
        """Live examples (those of the field seen most often)."""
        per_field = [c.examples for c in self.scores(with_pairs=False)]
        return max(per_field) if per_field else 0

    def nbytes(self) -> int:
        return sum(c.nbytes() for t in (self.blocks, self.pair_blocks) for f in t.values() for c in f.values())

    # ------------------------------------------------------- persistence
    def snapshot(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "config": asdict(self.config),
            "blocks": {b: {n: c.snapshot() for n, c in f.items()} for b, f in self.blocks.items()},
            "pair_blocks": {
                b: [[a, c, t.snapshot()] for (a, c), t in f.items()] for b, f in self.pair_blocks.items()
            },
            "pairs": [list(p) for p in self.pairs],
            "newest_block": self.newest_block,
            "expired_examples": self.expired_examples,
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> MIState:
        if snap.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"MI snapshot format {snap.get('format')!r} is not {SNAPSHOT_FORMAT}")
        state = cls(MIConfig(**snap["config"]))
        state.blocks = {
            int(b): {n: FieldCounts.restore(c) for n, c in f.items()} for b, f in snap["blocks"].items()
        }
        state.pair_blocks = {
            int(b): {(a, c): FieldCounts.restore(t) for a, c, t in f} for b, f in snap["pair_blocks"].items()
        }
        state.pairs = tuple((a, b) for a, b in snap["pairs"])
        state.newest_block = None if snap["newest_block"] is None else int(snap["newest_block"])
        state.expired_examples = int(snap["expired_examples"])
        return state


def merge_held_back(states: Iterable[MIState], config: MIConfig) -> MIState:
    """The merge of several shards' states, whose newest block is the *oldest* of theirs.

    Each shard expires its own blocks by its own watermark; the merge must not expire more. A
    plain :meth:`MIState.merge` takes the newest block of all, so one shard whose event time ran
    ahead (a poisoned or just faster partition) would expire every other shard's evidence.
    """
    total = MIState(config)
    newest: list[int] = []
    for state in states:
        total.merge(state, expire=False)
        if state.newest_block is not None:
            newest.append(state.newest_block)
    total.newest_block = min(newest) if newest else None
    return total


def _with_redundant(score: FieldScore, other: str) -> FieldScore:
    return FieldScore(**{**asdict(score), "redundant_with": other})
