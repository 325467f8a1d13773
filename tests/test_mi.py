"""The streaming MI core: exact mergeability, the cardinality correction, expiry, pairs, bounded memory."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.fieldcounts import HLL_P, FieldCounts
from models.interning import EncodedBatch, Interner
from models.mi import MIConfig, MIState, all_pairs, merge_held_back, pair_hash
from models.nullmi import null_moments, plugin_mi

SMALL = MIConfig(max_values=64, tail_buckets=16, block_ms=1000, blocks=4, pairs_top_n=0)


def _stream(seed: int, n: int, fields: int = 5, card: int = 200) -> tuple[EncodedBatch, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cards = np.linspace(2, card, fields).astype(np.int64)
    ids = (rng.random((n, fields)) * cards).astype(np.uint64)
    hashes = ids * np.uint64(0x9E3779B97F4A7C15) + np.arange(fields, dtype=np.uint64)
    logit = -3.0 + 2.0 * (ids[:, 0] % 2).astype(float)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    ts = np.sort(rng.integers(0, 6000, n))
    return EncodedBatch([f"f{i}" for i in range(fields)], hashes), labels, ts


def _part(batch: EncodedBatch, rows: np.ndarray | slice) -> EncodedBatch:
    return EncodedBatch(batch.fields, batch.hashes[rows])


def _equal(a: MIState, b: MIState) -> None:
    assert sorted(a.blocks) == sorted(b.blocks)
    for blk, fields in a.blocks.items():
        assert sorted(fields) == sorted(b.blocks[blk])
        for name, counts in fields.items():
            other = b.blocks[blk][name]
            assert counts.hashed == other.hashed
            if counts.keys is not None:
                np.testing.assert_array_equal(counts.keys, other.keys)
            np.testing.assert_array_equal(counts.counts, other.counts)
            assert (counts.sketch is None) == (other.sketch is None)
            if counts.sketch is not None:
                np.testing.assert_array_equal(counts.sketch, other.sketch)
    assert a.scores() == b.scores()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 2999), max_size=6))
def test_incremental_equals_one_pass(seed: int, cuts: list[int]) -> None:
    batch, labels, ts = _stream(seed, 3000)
    one = MIState(SMALL)
    one.update(batch, labels, ts)
    inc = MIState(SMALL)
    bounds = [0, *sorted(set(cuts)), 3000]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        inc.update(_part(batch, slice(lo, hi)), labels[lo:hi], ts[lo:hi])
    _equal(one, inc)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), card=st.sampled_from([10, 60, 500, 5000]))
def test_merge_of_any_split_equals_one_pass(seed: int, card: int) -> None:
    batch, labels, ts = _stream(seed, 3000, card=card)
    which = np.random.default_rng(seed + 1).random(3000) < 0.4  # any split, not only halves in order
    one = MIState(SMALL)
    one.update(batch, labels, ts)
    left, right = MIState(SMALL), MIState(SMALL)
    left.update(_part(batch, which), labels[which], ts[which])
    right.update(_part(batch, ~which), labels[~which], ts[~which])
    left.merge(right)
    _equal(one, left)


def test_snapshot_restore_round_trips_through_pickle() -> None:
    batch, labels, ts = _stream(3, 4000, card=2000)
    state = MIState(replace(SMALL, pairs_top_n=3))
    for lo in range(0, 4000, 500):
        state.update(_part(batch, slice(lo, lo + 500)), labels[lo : lo + 500], ts[lo : lo + 500])
    back = MIState.restore(pickle.loads(pickle.dumps(state.snapshot())))
    _equal(state, back)
    assert back.pairs == state.pairs and back.pair_scores() == state.pair_scores()
    more, more_labels, more_ts = _stream(4, 500, card=2000)
    state.update(more, more_labels, more_ts + 6000)
    back.update(more, more_labels, more_ts + 6000)
    _equal(state, back)


def test_restore_rejects_unknown_format() -> None:
    snap = MIState(SMALL).snapshot()
    snap["format"] = 99
    with pytest.raises(ValueError, match="format"):
        MIState.restore(snap)


def _mc_null(totals: np.ndarray, n1: int, reps: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(len(totals)), totals)
    out = []
    for _ in range(reps):
        y = np.zeros(len(owner))
        y[rng.choice(len(owner), n1, replace=False)] = 1
        pos = np.bincount(owner, weights=y, minlength=len(totals))
        out.append(plugin_mi(np.stack([totals - pos, pos], axis=1)))
    return float(np.mean(out)), float(np.std(out))


@pytest.mark.parametrize(
    ("name", "totals", "n1"),
    [
        ("id-like", np.ones(20_000, dtype=np.int64), 600),
        ("sparse zipf", np.bincount(np.random.default_rng(1).zipf(1.4, 20_000) % 3000), 600),
        ("mixed", np.concatenate([np.ones(8000, np.int64), np.full(40, 300, np.int64)]), 600),
        ("low cardinality", np.full(8, 2500, dtype=np.int64), 600),
        ("rare positives", np.full(400, 50, dtype=np.int64), 30),
    ],
)
def test_null_moments_match_monte_carlo(name: str, totals: np.ndarray, n1: int) -> None:
    totals = totals[totals > 0]
    n = int(totals.sum())
    mean, var = null_moments(totals, n, n1)
    mc_mean, mc_sd = _mc_null(totals, n1, 400, seed=7)
    assert mean == pytest.approx(mc_mean, rel=0.01, abs=3 * mc_sd / 20), name
    assert np.sqrt(var) == pytest.approx(mc_sd, rel=0.2, abs=1e-7), name


def test_exact_and_asymptotic_agree_at_the_seam() -> None:
    # a category total right at the exact/asymptotic boundary: both forms give the same mean
    from models import nullmi

    n, n1 = 100_000, 3_000
    a = np.array([int(nullmi.EXACT_BELOW / (n1 / n)) + 1])
    exact_mean, _, _ = nullmi._exact(a, n, n1)
    asymptotic = (n - a[0]) / (2.0 * n * (n - 1))
    assert exact_mean[0] == pytest.approx(asymptotic, rel=0.02)


def test_the_asymptotic_bias_alone_over_penalises_sparse_fields() -> None:
    # a field of 10 000 values seen ~3 times each: (K-1)/2N is far above the real null mean
    totals = np.full(10_000, 3, dtype=np.int64)
    n, n1 = 30_000, 900
    mean, _ = null_moments(totals, n, n1)
    assert (10_000 - 1) / (2 * n) > 2 * mean


def _examples(n: int, seed: int) -> tuple[list[dict[str, object]], np.ndarray]:
    rng = np.random.default_rng(seed)
    strong = rng.integers(0, 20, n)
    wide = rng.integers(0, 3000, n)  # informative, sparse: 3000 values
    labels_p = 0.02 + 0.08 * (strong < 5) + 0.05 * (wide % 3 == 0)
    labels = (rng.random(n) < labels_p).astype(np.int8)
    rows = [
        {
            "strong": int(s), "wide": f"w{w}", "id": f"req-{seed}-{i}", "noise": int(rng.integers(0, 50)),
            "noise_wide": f"n{rng.integers(0, 3000)}",
        }
        for i, (s, w) in enumerate(zip(strong, wide, strict=True))
    ]
    return rows, labels


def test_id_like_fields_score_near_zero_and_below_informative_ones() -> None:
    rows, labels = _examples(40_000, 1)
    batch = Interner().encode(rows)
    state = MIState(replace(MIConfig(), block_ms=0, pairs_top_n=0))
    state.update(batch, labels, np.zeros(len(labels), dtype=np.int64))
    scores = {s.name: s for s in state.scores()}
    assert scores["id"].mi > 0.01  # the raw plug-in MI of a unique-per-row field is large ...
    assert abs(scores["id"].z) < 3  # ... the corrected one is chance level
    assert scores["id"].score < 0.2 * min(scores["strong"].score, scores["wide"].score)
    for noise in ("noise", "noise_wide"):
        assert scores[noise].score < min(scores["strong"].score, scores["wide"].score)
        assert abs(scores[noise].z) < 3.5
    assert scores["strong"].z > 10 and scores["wide"].z > 4
    assert scores["strong"].cardinality == 20 and scores["wide"].cardinality == 3000


def test_blocks_expire_with_event_time() -> None:
    cfg = MIConfig(max_values=64, tail_buckets=8, block_ms=1000, blocks=2, pairs_top_n=0)
    state = MIState(cfg)
    batch = EncodedBatch(["a"], np.array([[1], [2], [3]], dtype=np.uint64))
    state.update(batch, np.array([0, 1, 0], np.int8), np.array([100, 1100, 2100]))
    assert sorted(state.blocks) == [1, 2]  # block 0 is older than the 2-block horizon
    assert state.expired_examples == 1
    state.advance(3500)
    assert sorted(state.blocks) == [2]
    late = EncodedBatch(["a"], np.array([[9]], dtype=np.uint64))
    state.update(late, np.array([1], np.int8), np.array([500]))
    assert state.expired_examples == 2 and state.scores()[0].examples == 1


def test_memory_is_bounded_by_configuration_not_by_cardinality() -> None:
    cfg = MIConfig(max_values=256, tail_buckets=64, block_ms=0, pairs_top_n=0)
    sizes = []
    for n in (10_000, 100_000):
        state = MIState(cfg)
        # n distinct, well-mixed hashes like the interner's (pair_hash of (i, 0) is a bijection of i)
        hashes = pair_hash(np.arange(n, dtype=np.uint64), np.zeros(n, np.uint64)).reshape(-1, 1)
        state.update(EncodedBatch(["id"], hashes), np.zeros(n, np.int8), np.zeros(n, np.int64))
        sizes.append(state.nbytes())
        assert state.scores()[0].cardinality == pytest.approx(n, rel=0.02)  # HyperLogLog estimate
        assert state.scores()[0].estimated
    assert sizes[0] == sizes[1] <= (256 + 64) * 16 + (1 << HLL_P)


def test_xor_pair_is_found_and_a_copy_is_flagged_redundant() -> None:
    rng = np.random.default_rng(5)
    n = 60_000
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    base = rng.integers(0, 30, n)
    labels = (rng.random(n) < np.where(a ^ b, 0.12, 0.02) + 0.004 * (base % 5)).astype(np.int8)
    rows = [
        {"xa": int(x), "xb": int(y), "base": int(c), "copy": f"c{c}", "noise": int(rng.integers(0, 7))}
        for x, y, c in zip(a, b, base, strict=True)
    ]
    cfg = MIConfig(block_ms=1000, blocks=4, pairs_top_n=5)
    state = MIState(cfg)
    state.set_pairs([("xa", "xb"), ("base", "copy")])
    batch = Interner().encode(rows)
    state.update(batch, labels, np.zeros(n, np.int64))
    fields = {s.name: s for s in state.scores()}
    assert abs(fields["xa"].z) < 4 and abs(fields["xb"].z) < 4  # no marginal signal
    pairs = {p.fields: p for p in state.pair_scores()}
    assert pairs[("xa", "xb")].z > 20 and pairs[("xa", "xb")].gain > 0.005
    assert pairs[("base", "copy")].nmi > 0.99
    flagged = {s.name: s.redundant_with for s in state.scores() if s.redundant_with}
    assert list(flagged.items()) in ([("copy", "base")], [("base", "copy")])


def test_pair_candidates_are_refreshed_when_a_block_opens() -> None:
    rows, labels = _examples(20_000, 2)
    batch = Interner().encode(rows)
    state = MIState(MIConfig(block_ms=1000, blocks=4, pairs_top_n=2, pairs_rotate=False))
    state.update(batch, labels, np.zeros(len(labels), np.int64))
    assert state.pairs == ()
    state.update(_part(batch, slice(0, 10)), labels[:10], np.full(10, 1500))
    assert state.pairs == (("strong", "wide"),)


def test_rotating_candidates_cover_every_pair_within_the_stated_number_of_blocks() -> None:
    """Top pairs stay; the free slots walk through all pairs, so every pair is counted within
    ceil(free pairs / slots) blocks however weak its fields are alone."""
    rows, labels = _examples(4000, 3)
    batch = Interner().encode(rows)
    names = list(batch.fields)
    every = set(all_pairs(names))
    cfg = MIConfig(block_ms=1000, blocks=4, pairs_top_n=2, max_pairs=4)
    state = MIState(cfg)
    state.update(batch, labels, np.zeros(len(labels), np.int64))
    slots = state.rotating_slots()
    assert slots == cfg.max_pairs - 1  # the top two fields make one pair
    top = set(state.candidate_pairs(0)[:1])
    seen: set[tuple[str, str]] = set()
    blocks = -(-len(every) // slots)
    for b in range(1, blocks + 1):
        state.update(_part(batch, slice(0, 10)), labels[:10], np.full(10, 1000 * b + 1))
        assert len(state.pairs) <= cfg.max_pairs and top <= set(state.pairs)
        seen |= set(state.pairs)
    assert seen == every


def test_a_significant_pair_stays_a_candidate_after_the_rotation_moves_on() -> None:
    rng = np.random.default_rng(9)
    n = 40_000
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    labels = (rng.random(n) < np.where(a ^ b, 0.12, 0.02)).astype(np.int8)
    rows = [{"xa": int(x), "xb": int(y), **{f"n{k}": int(v) for k, v in enumerate(rng.integers(0, 5, 6))}}
            for x, y in zip(a, b, strict=True)]
    batch = Interner().encode(rows)
    state = MIState(MIConfig(block_ms=1000, blocks=50, pairs_top_n=2, max_pairs=3))
    state.set_pairs([("xa", "xb")])
    state.update(batch, labels, np.zeros(n, np.int64))
    for blk in range(1, 12):  # 28 pairs, 2 rotating slots: the rotation has left (xa, xb) long ago
        state.update(_part(batch, slice(0, 10)), labels[:10], np.full(10, 1000 * blk))
        assert ("xa", "xb") in state.pairs


def test_field_counts_switch_to_hashed_mode_exactly() -> None:
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 5000, dtype=np.int64).astype(np.uint64)
    y = (rng.random(5000) < 0.1).astype(np.int8)
    fc = FieldCounts(max_values=100, tail=10)
    fc.update(h[:50], y[:50])
    assert not fc.hashed
    fc.update(h[50:], y[50:])
    assert fc.hashed and fc.counts.sum() == 5000 and fc.counts[:, 1].sum() == y.sum()
    index = h % np.uint64(110)
    np.testing.assert_array_equal(fc.counts[:, 1], np.bincount(index, weights=y, minlength=110))


def test_interner_hashes_are_typed_stable_and_bounded() -> None:
    it = Interner(max_fields=2)
    batch = it.encode([{"a": "1", "b": 1}, {"a": 1, "b": True, "c": 3}, {"a": None}])
    assert it.fields == ["a", "b"] and it.untracked_fields == 1
    h = batch.hashes
    assert h[0, 0] != h[1, 0]  # "1" vs 1
    assert h[0, 1] != h[1, 1]  # 1 vs True
    from models.interning import MISSING, value_hash

    assert h[2, 0] == MISSING and h[2, 1] == MISSING
    assert int(h[0, 0]) == value_hash("1")  # same in a fresh process: no per-process salt
    again = Interner.restore(pickle.loads(pickle.dumps(it.snapshot()))).encode([{"b": True, "a": "1"}])
    assert again.hashes[0, 0] == h[0, 0] and again.hashes[0, 1] == h[1, 1]
    assert it.values_for(1, [int(h[1, 1])]) == ["true"]


def test_plugin_mi_matches_a_hand_computed_table() -> None:
    # value A: 30 negatives, 10 positives; value B: 50 negatives, 10 positives (N = 100, N1 = 20)
    counts = np.array([[30, 10], [50, 10]])
    cells = [(30, 40, 80), (10, 40, 20), (50, 60, 80), (10, 60, 20)]  # (n_cy, a_c, N_y)
    expected = sum(n / 100 * np.log(n * 100 / (a * ny)) for n, a, ny in cells)
    assert plugin_mi(counts) == pytest.approx(expected, rel=1e-12)
    # 0.3 ln(0.9375) + 0.1 ln(1.25) + 0.5 ln(1.041667) + 0.1 ln(0.833333)
    assert expected == pytest.approx(0.0051316, abs=1e-7)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_scalars, max_size=40))
def test_column_hash_equals_per_value_hash(values: list[object]) -> None:
    from models.interning import hash_column, value_hash

    assert hash_column(values).tolist() == [value_hash(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.text(alphabet="ab\x00", max_size=3),
                          st.text(alphabet=st.characters(categories=["Cs", "Ll"]), max_size=3)),
                min_size=1, max_size=40))
def test_string_column_hash_equals_per_value_hash(values: list[str]) -> None:
    """The all-strings path (one NUL-joined buffer) agrees with value_hash, NULs and lone surrogates included."""
    from models.interning import hash_column, value_hash

    assert hash_column(values).tolist() == [value_hash(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.lists(_scalars, max_size=12), st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=12),
                          st.lists(st.one_of(st.none(), st.integers(-(2**64), 2**64)), max_size=12),
                          st.lists(st.one_of(st.none(), st.booleans()), max_size=12),
                          st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)), max_size=12),
                          st.lists(st.text(alphabet="ab\x00", max_size=3), max_size=12)), max_size=8))
def test_columns_hashed_together_equal_per_value_hash(columns: list[list[object]]) -> None:
    """Strings of all columns in one pass, ints/floats/bools one call per type: still value_hash,
    whatever the mix (missing values, mixed-type columns, a NUL in a string, ints past 64 bits)."""
    from models.interning import hash_columns, value_hash

    assert [h.tolist() for h in hash_columns(columns)] == [[value_hash(v) for v in col] for col in columns]


@pytest.mark.parametrize("gaps", [(), (0,), (999,), (0, 1, 2, 500, 998, 999), tuple(range(0, 1000, 9)),
                                  tuple(range(0, 1000, 7)), tuple(range(1000))])
def test_missing_values_found_however_few_or_many(gaps: tuple[int, ...]) -> None:
    """Gaps found by scanning (up to one in eight) or by a flag per value (more), in the tuples
    a batch's transposition gives and in lists: the same hashes either way."""
    from models.interning import MISSING, hash_columns, value_hash

    missing = set(gaps)
    strs = tuple(None if i in missing else f"v{i % 37}" for i in range(1000))
    ints = tuple(None if i in missing else i % 11 for i in range(1000))
    columns = [strs, ints, list(strs), list(ints)]
    hashed = hash_columns(columns)  # type: ignore[arg-type]
    assert [h.tolist() for h in hashed] == [[value_hash(v) for v in col] for col in columns]
    assert all(int((h == MISSING).sum()) == len(missing) for h in hashed)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=30))
def test_byte_range_hash_equals_str_hash(texts: list[str]) -> None:
    from models.interning import hash_utf8_cells, value_hash

    data = [t.encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.array([len(d) for d in data], dtype=np.int64)
    got = hash_utf8_cells(np.frombuffer(b"".join(data) + b"x", np.uint8), np.cumsum(lengths) - lengths, lengths)
    assert got.tolist() == [value_hash(t) for t in texts]


def test_value_hash_keeps_types_apart_and_is_fixed() -> None:
    from models.interning import MISSING, value_hash

    values = ["1", 1, 1.0, True, "a", "a\x00", "", 0, 0.0, -0.0, False, 2**63, -(2**63), None]
    assert len({value_hash(v) for v in values}) == len(values)
    assert value_hash(None) == MISSING
    # Pinned: a change here changes every state's keys (bump HASH_VERSION and say so).
    assert value_hash("1") == 0x1DBE7B5B172D2381


def test_interner_remembers_names_of_low_cardinality_columns_only() -> None:
    it = Interner(names_per_column=3)
    batch = it.encode([{"small": v, "wide": f"w{i}"} for i, v in enumerate(["a", "b", "a", "c", None] * 2)])
    small, wide = it.column("small"), it.column("wide")
    assert small is not None and wide is not None
    hs = batch.hashes[:, small].tolist()
    assert sorted(it.values_for(small, hs)) == ["a", "b", "c"]
    assert it.values_for(wide, batch.hashes[:, wide].tolist()) == []  # 10 values > 3: forgotten


def test_interner_refuses_a_snapshot_of_another_hash() -> None:
    from models.interning import HashVersionError

    snap = Interner().snapshot()
    snap["hash"] = "blake2b-8"
    with pytest.raises(HashVersionError):
        Interner.restore(snap)
    del snap["hash"]  # written before the hash had a version
    with pytest.raises(HashVersionError):
        Interner.restore(snap)


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 2**64 - 1), max_size=30), st.sets(st.integers(0, 2**64 - 1), max_size=30))
def test_union_of_sorted_runs_equals_union1d(a: set[int], b: set[int]) -> None:
    from models.fieldcounts import _union_sorted

    x, y = np.array(sorted(a), np.uint64), np.array(sorted(b), np.uint64)
    assert _union_sorted(x, y).tolist() == np.union1d(x, y).tolist()


def _examples_at(n: int, t0: int, seed: int) -> tuple[EncodedBatch, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 8, size=(n, 2)).astype(np.uint64)
    labels = (rng.random(n) < 0.2).astype(np.int8)
    return EncodedBatch(["a", "b"], hashes), labels, np.full(n, t0, dtype=np.int64)


def test_a_shard_ahead_expires_nothing_of_the_others_in_the_merge() -> None:
    config = MIConfig(block_ms=1000, blocks=3)
    slow, fast = MIState(config), MIState(config)
    slow.update(*_examples_at(500, 10_500, 1))
    slow.advance(10_500)
    fast.update(*_examples_at(20, 10_500, 2))
    fast.advance(90_000_000)  # a poisoned (or just faster) shard: its watermark is a day ahead
    held = merge_held_back([slow, fast], config)
    assert held.examples() == slow.examples() == 500  # the slow shard's evidence is all there
    assert held.newest_block == slow.newest_block
    plain = MIState(config)
    plain.merge(slow)
    plain.merge(fast)
    assert plain.examples() == 0  # what the plain merge did: the global MI lost everything


def test_without_advance_an_example_ahead_expires_nothing() -> None:
    config = MIConfig(block_ms=1000, blocks=3)
    mi = MIState(config)
    mi.update(*_examples_at(300, 10_500, 1), advance=False)
    mi.advance(10_500)
    mi.update(*_examples_at(1, 50_000_000, 2), advance=False)  # one example far ahead of the watermark
    assert mi.examples() == 301 and mi.newest_block == 10
    mi.advance(14_000)  # the watermark, not the example, moves time
    assert mi.examples() == 1
