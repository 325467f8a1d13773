"""Distinct counts of hashed fields: a HyperLogLog within 2 % of the truth, flagged as an estimate, mergeable."""

from __future__ import annotations

import numpy as np
import pytest

from models import hll
from models.fieldcounts import HLL_P, FieldCounts
from models.interning import hash_column
from models.mi import MIConfig, MIState


def _stream(n: int, seed: int) -> np.ndarray:
    """Hashes of exactly ``n`` distinct string values, each at least once, skewed repeats, shuffled."""
    values = hash_column([f"user-{i}" for i in range(n)])
    rng = np.random.default_rng(seed)
    repeats = values[np.minimum(rng.zipf(1.3, n), n) - 1]
    out = np.concatenate([values, repeats])
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("n", [28_692, 1_000_000])
def test_hashed_field_cardinality_is_within_two_percent(n: int) -> None:
    hashes = _stream(n, seed=n)
    counts = FieldCounts(4096, 1024)
    labels = (np.arange(len(hashes)) % 7 == 0).astype(np.int8)
    for lo in range(0, len(hashes), 8192):
        counts.update(hashes[lo : lo + 8192], labels[lo : lo + 8192])
    assert counts.hashed and counts.distinct_estimated
    assert counts.distinct_estimate() == pytest.approx(n, rel=0.02)


def test_exact_fields_are_exact_and_not_flagged() -> None:
    counts = FieldCounts(4096, 1024)
    counts.update(_stream(4096, seed=1), np.zeros(8192, np.int8))
    assert not counts.distinct_estimated and counts.distinct_estimate() == 4096
    state = MIState(MIConfig(block_ms=0, pairs_top_n=0))
    from models.interning import EncodedBatch

    wide = _stream(28_692, seed=2)
    narrow = hash_column([str(i % 10) for i in range(len(wide))])
    batch = EncodedBatch(["narrow", "wide"], np.stack([narrow, wide], axis=1))
    state.update(batch, (np.arange(len(wide)) % 5 == 0).astype(np.int8), np.zeros(len(wide), np.int64))
    by_name = {s.name: s for s in state.scores()}
    assert by_name["narrow"].cardinality == 10 and not by_name["narrow"].estimated
    assert by_name["wide"].estimated and by_name["wide"].cardinality == pytest.approx(28_692, rel=0.02)


def test_merge_of_parts_equals_one_pass_and_memory_is_bounded() -> None:
    hashes = _stream(200_000, seed=3)
    labels = np.zeros(len(hashes), np.int8)
    whole = FieldCounts(4096, 1024)
    whole.update(hashes, labels)
    parts = [FieldCounts(4096, 1024) for _ in range(3)]
    # one part stays exact (few values), two go hashed: every combination of modes is merged
    parts[0].update(hashes[:1000], labels[:1000])
    parts[1].update(hashes[1000:150_000], labels[1000:150_000])
    parts[2].update(hashes[150_000:], labels[150_000:])
    merged = parts[0].copy()
    merged.merge(parts[1])
    merged.merge(parts[2])
    assert merged.sketch is not None and whole.sketch is not None
    np.testing.assert_array_equal(merged.sketch, whole.sketch)
    assert merged.distinct_estimate() == whole.distinct_estimate()
    assert whole.sketch.nbytes == 1 << HLL_P == 16384


def test_a_snapshot_round_trips_and_an_old_one_still_restores() -> None:
    counts = FieldCounts(256, 64)
    counts.update(_stream(5000, seed=4), np.zeros(10_000, np.int8))
    again = FieldCounts.restore(counts.snapshot())
    assert again.distinct_estimate() == counts.distinct_estimate()
    legacy = counts.snapshot()
    del legacy["hll"]
    legacy["kmv"] = np.sort(_stream(5000, seed=4))[:256]  # what the bottom-k sketch kept
    old = FieldCounts.restore(legacy)
    assert old.hashed and old.distinct_estimated and old.distinct_estimate() >= 257
    np.testing.assert_array_equal(old.counts, counts.counts)


def test_small_and_empty_sketches() -> None:
    regs = hll.registers(HLL_P)
    assert hll.estimate(regs) == 0.0
    hll.add(regs, hash_column([f"x{i}" for i in range(100)]))
    assert hll.estimate(regs) == pytest.approx(100, rel=0.02)
    with pytest.raises(ValueError):
        hll.registers(4)


def test_pair_tables_keep_no_sketch_and_merge_with_old_ones() -> None:
    from models.interning import EncodedBatch

    state = MIState(MIConfig(max_values=256, tail_buckets=64, block_ms=0, pairs_top_n=2))
    state.set_pairs([("a", "b")])
    n = 20_000
    a, b = hash_column([f"a{i}" for i in range(n)]), hash_column([f"b{i % 300}" for i in range(n)])
    state.update(EncodedBatch(["a", "b"], np.stack([a, b], axis=1)), np.zeros(n, np.int8), np.zeros(n, np.int64))
    pair = state.pair_blocks[0][("a", "b")]
    assert pair.hashed and pair.sketch is None and not pair.distinct
    assert state.blocks[0]["a"].sketch is not None  # fields keep theirs
    legacy = pair.snapshot()
    del legacy["distinct"], legacy["hll"]
    legacy["kmv"] = np.sort(a)[:256]
    old = FieldCounts.restore(legacy)  # a pair table of before: restored with a sketch
    assert old.sketch is not None
    for first, second in ((old.copy(), pair), (pair.copy(), old)):
        first.merge(second)  # either order: the merged pair table keeps none
        assert first.sketch is None and not first.distinct
        np.testing.assert_array_equal(first.counts, 2 * pair.counts)
    again = FieldCounts.restore(pair.snapshot())
    assert again.sketch is None and not again.distinct
