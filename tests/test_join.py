"""The impression/click join: labels, orphans, duplicates, bounds, and order independence."""

from __future__ import annotations

import pickle
import random
from collections import Counter

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.codec import Click, Event, Impression, Labeled
from connectors.join import REJECT_REASON, Example, JoinBuffer

W, LATE = 1000, 100
IMP, CLK = ("imp", 0), ("clk", 0)


def buf(**kw: int) -> JoinBuffer:
    args = {"window_ms": W, "lateness_ms": LATE, "max_pending": 10_000, "max_future_ms": 10**9}
    args.update(kw)
    return JoinBuffer(**args, sources=[IMP, CLK])


def run(b: JoinBuffer, batches: list[tuple[list[Event], tuple[str, int]]]) -> list[Example]:
    out: list[Example] = []
    for events, source in batches:
        out += b.process(events, source).examples
        out += b.expire()
    return out


def key(ex: Example) -> tuple[int, int, bytes]:
    return ex.ts, ex.label, orjson.dumps(ex.features, option=orjson.OPT_SORT_KEYS)


def test_positive_then_negative_on_expiry() -> None:
    b = buf()
    out = run(b, [([Impression("a", 0, {"f": 1}), Impression("b", 10, {"f": 2})], IMP),
                  ([Click("a", 500)], CLK)])
    assert out == [Example(0, {"f": 1}, 1)]
    # the watermark (min over sources - lateness) must pass 10 + W before b is a negative
    out = run(b, [([Impression("c", 2000, {})], IMP), ([Click("zz", 1110)], CLK)])
    assert out == []
    out = run(b, [([Click("zz", 1111)], CLK)])
    assert out == [Example(10, {"f": 2}, 0)]
    s = b.stats()
    assert (s["positives"], s["negatives"], s["pending_impressions"]) == (1, 1, 1)


def test_nothing_expires_until_every_registered_source_has_data() -> None:
    b = buf()
    out = run(b, [([Impression("a", 0, {}), Impression("b", 10**6, {})], IMP)])
    assert out == [] and b.watermark_ms is None
    out = run(b, [([Click("a", 999)], CLK)])
    assert out == [Example(0, {}, 1)]


def test_click_after_the_window_is_an_orphan_and_impression_is_negative() -> None:
    b = buf()
    res = b.process([Impression("a", 0, {}), Click("a", W + 1)], IMP)
    assert res.examples == [] and res.orphans == 1
    assert b.flush() == [Example(0, {}, 0)]


def test_duplicate_clicks_count_once_in_either_order() -> None:
    orders: list[list[Event]] = [
        [Impression("a", 0, {}), Click("a", 5), Click("a", 6)],
        [Click("a", 5), Click("a", 6), Impression("a", 0, {})],
        [Click("a", 5), Impression("a", 0, {}), Click("a", 6)],
    ]
    for events in orders:
        b = buf()
        res = b.process(events, IMP)
        assert res.examples == [Example(0, {}, 1)]
        assert b.stats()["duplicate_clicks"] == 1 and b.stats()["orphan_clicks"] == 0
        assert b.flush() == []


def test_click_before_its_impression_is_matched() -> None:
    b = buf()
    assert run(b, [([Click("a", 50)], CLK)]) == []
    assert b.pending_clicks == 1
    assert run(b, [([Impression("a", 40, {"x": 1})], IMP)]) == [Example(40, {"x": 1}, 1)]
    assert b.pending_clicks == 0


def test_unknown_click_becomes_an_orphan_once_the_watermark_passes_it() -> None:
    b = buf()
    run(b, [([Click("ghost", 50)], CLK), ([Impression("a", 100, {})], IMP)])
    assert b.stats()["orphan_clicks"] == 0  # watermark 0 - LATE: still waiting
    run(b, [([Click("x", 300)], CLK), ([Impression("b", 300, {})], IMP)])
    assert b.stats()["orphan_clicks"] == 1 and b.pending_clicks == 1


def test_labeled_events_pass_through() -> None:
    b = buf()
    res = b.process([Labeled(5, {"a": 1}, 1), Labeled(6, {}, 0)], IMP)
    assert res.examples == [Example(5, {"a": 1}, 1), Example(6, {}, 0)]


def test_too_late_and_too_far_ahead_are_rejected_with_their_index() -> None:
    b = buf(max_future_ms=5000)
    run(b, [([Impression("a", 10_000, {})], IMP), ([Click("x", 10_000)], CLK)])
    assert b.watermark_ms == 10_000 - LATE
    late = 10_000 - LATE - W - 1
    res = b.process([Impression("old", late, {}), Impression("ok", 8900, {}),
                     Click("far", 15_001), Impression("near", 15_000, {})], IMP)
    assert res.rejected == [(0, REJECT_REASON), (2, REJECT_REASON)]
    s = b.stats()
    assert (s["too_late"], s["too_far_ahead"]) == (1, 1)


def test_watermark_never_moves_back_and_forgotten_sources_release_it() -> None:
    b = buf()
    run(b, [([Impression("a", 100, {})], IMP), ([Click("a", 5000)], CLK)])
    assert b.watermark_ms == 100 - LATE
    b.forget_source(IMP)
    assert b.watermark_ms == 5000 - LATE
    b.add_source(("imp", 1))
    run(b, [([Impression("z", 10, {})], ("imp", 1))])
    assert b.watermark_ms == 5000 - LATE


def test_pending_impressions_are_bounded_oldest_emitted_early() -> None:
    b = buf(max_pending=10, max_pending_clicks=5)
    events: list[Event] = [Impression(f"i{k:03d}", k, {"k": k}) for k in range(100)]
    out = b.process(events, IMP).examples
    assert [e.ts for e in out] == list(range(90))
    assert all(e.label == 0 for e in out)
    assert b.pending_impressions == 10 and b.stats()["evicted"] == 90
    b.process([Click(f"c{k}", k) for k in range(20)], CLK)
    assert b.pending_clicks == 5 and b.stats()["evicted_clicks"] == 15


# ------------------------------------------------------------------ properties
def make_stream(seed: int, n: int) -> tuple[list[Event], list[Event]]:
    """Impressions and clicks, each source in ts order: in-window, late, duplicated, ghost."""
    rng = random.Random(seed)
    imps: list[Event] = []
    clicks: list[Event] = []
    t = 0
    for k in range(n):
        t += rng.randint(0, 60)
        ident = f"i{k}"
        imps.append(Impression(ident, t, {"k": k % 7}))
        r = rng.random()
        if r < 0.3:
            for _ in range(rng.choice([1, 1, 2, 3])):
                clicks.append(Click(ident, t + rng.randint(0, W)))
        elif r < 0.4:
            clicks.append(Click(ident, t + W + rng.randint(1, 3 * W)))  # too late: orphan
        elif r < 0.45:
            clicks.append(Click(f"ghost{k}", t + rng.randint(0, W)))  # no impression
    clicks.sort(key=lambda e: e.ts)
    return imps, clicks


def interleave(
    imps: list[Event], clicks: list[Event], rng: random.Random
) -> list[tuple[list[Event], tuple[str, int]]]:
    """Cut both sources into random batches and merge the batches in a random order."""
    def cut(evs: list[Event], src: tuple[str, int]) -> list[tuple[list[Event], tuple[str, int]]]:
        out, i = [], 0
        while i < len(evs):
            j = i + rng.randint(1, 40)
            out.append((evs[i:j], src))
            i = j
        return out

    a, b = cut(imps, IMP), cut(clicks, CLK)
    merged = []
    while a or b:
        pick = a if (a and (not b or rng.random() < 0.5)) else b
        merged.append(pick.pop(0))
    return merged


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_examples_do_not_depend_on_interleaving_or_batching(data: int, s1: int, s2: int) -> None:
    imps, clicks = make_stream(data, 150)
    results = []
    for s in (s1, s2):
        b = buf()
        out = run(b, interleave(imps, clicks, random.Random(s)))
        out += b.flush()  # (a click may still wait in one order and be an orphan in another)
        results.append((Counter(map(key, out)), b.stats()))
    assert results[0] == results[1]
    positives = {e.id for e in clicks if isinstance(e, Click)}
    assert sum(c for (_, label, _), c in results[0][0].items() if label) <= len(positives)
    assert sum(results[0][0].values()) == len(imps)


def test_one_source_sorted_versus_clicks_first_gives_the_same_examples() -> None:
    imps, clicks = make_stream(3, 300)
    b1, b2 = buf(), buf()
    out1 = run(b1, [(imps, IMP), (clicks, CLK)]) + b1.flush()
    out2 = run(b2, [(clicks, CLK), (imps, IMP)]) + b2.flush()
    assert Counter(map(key, out1)) == Counter(map(key, out2))
    assert 0 < sum(e.label for e in out1) < len(out1)


@pytest.mark.parametrize("via", ["pickle", "json"])
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 30))
def test_snapshot_restore_mid_stream_equals_uninterrupted(
    via: str, data: int, s: int, cut: int
) -> None:
    imps, clicks = make_stream(data, 120)
    batches = interleave(imps, clicks, random.Random(s))
    cut = min(cut, len(batches))
    whole = buf()
    expected = run(whole, batches) + whole.flush()

    first = buf()
    got = run(first, batches[:cut])
    snap = first.snapshot()
    snap = pickle.loads(pickle.dumps(snap)) if via == "pickle" else orjson.loads(orjson.dumps(snap))
    second = JoinBuffer.restore(snap)
    got += run(second, batches[cut:]) + second.flush()
    assert got == expected
    assert second.stats() == whole.stats()


def test_restore_rejects_unknown_format() -> None:
    snap = buf().snapshot()
    snap["format"] = 99
    with pytest.raises(ValueError):
        JoinBuffer.restore(snap)


def _shuffled_impressions(seed: int, jitter: int, n: int = 400) -> list[Event]:
    rng = random.Random(seed)
    out: list[Event] = []
    for k in range(n):
        t = 1000 + 10 * (k // 3) + rng.randint(-jitter, jitter)  # three per 10 ms: ties in ts
        ident = f"i{rng.randrange(10**6)}.{k}"  # ids that do not sort like arrival
        out.append(Impression(ident, t, {"id": ident}))
    return out


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([0, 3, 30]), st.booleans())
def test_negatives_come_out_in_ts_id_order_whatever_the_arrival_order(seed: int, jitter: int,
                                                                      restore_midway: bool) -> None:
    """Pending impressions are kept as an ordered run plus a heap for those that arrive out of
    order: negatives still come out in (ts, id) order, also across a snapshot and restore."""
    imps = _shuffled_impressions(seed, jitter)
    b = buf()
    out: list[Example] = []
    for start in range(0, len(imps), 25):
        out += b.process(imps[start : start + 25], IMP).examples
        out += b.process([Labeled(imps[min(start + 24, len(imps) - 1)].ts, {"id": ""}, 1)], CLK).examples
        out += b.expire()
        if restore_midway and start == 200:
            b = JoinBuffer.restore(pickle.loads(pickle.dumps(b.snapshot())))
    out += b.flush()
    negatives = [(e.ts, e.features["id"]) for e in out if e.label == 0]  # type: ignore[index]
    assert negatives == sorted(negatives)
    assert sorted(negatives) == sorted((e.ts, e.id) for e in imps)  # type: ignore[union-attr]


@pytest.mark.parametrize("jitter", [0, 30])
def test_eviction_emits_the_oldest_pending_impression(jitter: int) -> None:
    imps = _shuffled_impressions(7, jitter)
    b = buf(max_pending=50)  # the clicks source never speaks: no watermark, only evictions
    pending: list[tuple[int, str]] = []
    for ev in imps:
        pending.append((ev.ts, ev.id))  # type: ignore[union-attr]
        want = [min(pending)] if len(pending) > 50 else []
        if want:
            pending.remove(want[0])
        got = [(e.ts, e.features["id"]) for e in b.process([ev], IMP).examples]  # type: ignore[index]
        assert got == want
    assert [(e.ts, e.features["id"]) for e in b.flush()] == sorted(pending)  # type: ignore[index]
