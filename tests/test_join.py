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
from connectors.join import (
    CLOCK_REASON,
    REJECT_REASON,
    TOO_FAR_AHEAD,
    TOO_LATE,
    Example,
    JoinBuffer,
)

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
    assert res.rejected == [(0, REJECT_REASON, TOO_LATE), (2, REJECT_REASON, TOO_FAR_AHEAD)]
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


# ----------------------------------------------------------------- event time that cannot be hijacked
H = 3_600_000  # an hour in ms
T0 = 1_700_000_000_000  # a replay: history, far behind the wall clock
NOW = T0 + 30 * 24 * H


def robust(**kw: int) -> JoinBuffer:
    args = {"window_ms": 1_800_000, "lateness_ms": 60_000, "max_pending": 1_000_000,
            "max_future_ms": H, "quorum": 32, "max_clock_skew_ms": 300_000}
    args.update(kw)
    return JoinBuffer(**args, sources=[IMP, CLK])


def stream(start: int, n: int, prefix: str, step: int = 1000) -> tuple[list[Event], list[Event]]:
    """n impressions a second apart from ``start``, every 10th clicked 5 s later."""
    imps: list[Event] = [Impression(f"{prefix}{i}", start + i * step, {"f": i % 7}) for i in range(n)]
    clicks: list[Event] = [Click(f"{prefix}{i}", start + i * step + 5000) for i in range(0, n, 10)]
    return imps, clicks


def feed(b: JoinBuffer, imps: list[Event], clicks: list[Event], now: int = NOW) -> tuple[list[Example], list[int]]:
    """Both sources in batches of 100, interleaved; returns examples and how many were rejected."""
    out: list[Example] = []
    rejected = [0, 0]
    for lo in range(0, max(len(imps), len(clicks) * 10), 100):
        r1 = b.process(imps[lo:lo + 100], IMP, now_ms=now)
        r2 = b.process(clicks[lo // 10:lo // 10 + 10], CLK, now_ms=now)
        out += r1.examples + r2.examples + b.expire()
        rejected[0] += len(r1.rejected)
        rejected[1] += len(r2.rejected)
    return out, rejected


def test_the_ratchet_of_26_outliers_on_both_sources_cannot_move_the_watermark() -> None:
    b = robust()
    imps, clicks = stream(T0, 3000, "a")
    feed(b, imps, clicks)
    wm = b.watermark_ms
    assert wm is not None and wm < T0 + 3000 * 1000
    top = T0 + 3000 * 1000
    # 26 impressions and 26 clicks, each 3 500 s beyond the previous one (each within max_future of
    # the previous: the old running-maximum rule accepted them all and moved the watermark +25 h)
    ratchet_i = [Impression(f"r{i}", top + (i + 1) * 3_500_000, {"f": 0}) for i in range(26)]
    ratchet_c = [Click(f"c{i}", top + (i + 1) * 3_500_000) for i in range(26)]
    r1 = b.process(ratchet_i, IMP, now_ms=NOW)
    r2 = b.process(ratchet_c, CLK, now_ms=NOW)
    # the accepted first step is one of the top 32 now, so the 32nd largest moves up one rank
    # (one event's spacing), never into the outliers' range
    assert wm <= b.watermark_ms < top - 60_000  # type: ignore[operator]
    # the first step is within max_future of the frontier (accepted, but it does not move a mark);
    # every later one is a jump and is rejected as such
    assert [i for i, _, _ in r1.rejected] == list(range(1, 26))
    assert {d for _, _, d in r1.rejected + r2.rejected} == {TOO_FAR_AHEAD}
    # normal events go on being accepted and labelled
    imps2, clicks2 = stream(top, 3000, "b")
    out, rejected = feed(b, imps2, clicks2)
    assert rejected == [0, 0]
    assert sum(ex.label for ex in out) == 300 and len(out) > 2500


def test_one_outlier_ahead_in_a_replay_does_not_stop_its_source_holding_the_watermark() -> None:
    """Impressions are read slower than clicks in a replay: the impression source must keep holding
    the watermark back even after one impression 59 min ahead."""
    b = robust()
    imps, clicks = stream(T0, 4000, "a")
    out: list[Example] = []
    # clicks first, far ahead of the impressions in read order
    out += b.process(clicks, CLK, now_ms=NOW).examples
    out += b.process(imps[:100] + [Impression("odd", T0 + 100_000 + 59 * 60_000, {"f": 1})], IMP, now_ms=NOW).examples
    out += b.expire()
    lost = 0
    for lo in range(100, 4000, 100):
        res = b.process(imps[lo:lo + 100], IMP, now_ms=NOW)
        lost += len(res.rejected)
        out += res.examples + b.expire()
    out += b.flush()
    assert lost == 0
    assert sum(ex.label for ex in out) == 400  # every click found its impression


def test_with_quorum_one_the_single_outlier_does_release_the_watermark() -> None:
    """The old rule, for contrast: the same stream with a running maximum loses events as late."""
    b = robust(quorum=1)
    imps, clicks = stream(T0, 4000, "a")
    b.process(clicks, CLK, now_ms=NOW)
    b.process(imps[:100] + [Impression("odd", T0 + 100_000 + 59 * 60_000, {"f": 1})], IMP, now_ms=NOW)
    b.expire()
    lost = sum(len(b.process(imps[lo:lo + 100], IMP, now_ms=NOW).rejected) for lo in range(100, 4000, 100))
    assert lost > 0


def test_a_shards_first_event_is_bounded_by_the_wall_clock() -> None:
    now = T0
    b = robust()
    res = b.process([Impression("evil", 2**53 - 1, {}), Impression("ok", now - 1000, {})], IMP, now_ms=now)
    assert [(i, r) for i, r, _ in res.rejected] == [(0, CLOCK_REASON)]
    assert b.stats()["ahead_of_clock"] == 1
    # within the skew is accepted; beyond it is not
    res = b.process([Click("ok", now + 299_000), Click("x", now + 301_000)], CLK, now_ms=now)
    assert [(i, r) for i, r, _ in res.rejected] == [(1, CLOCK_REASON)]
    # later normal events are accepted
    imps, clicks = stream(now, 1000, "n", step=1)
    out, rejected = feed(b, imps, clicks, now=now + 2000)
    assert rejected == [0, 0]
    # without a wall clock (offline tools), only the event-time rules apply
    assert not robust().process([Impression("evil", 2**53 - 1, {})], IMP).rejected


def test_the_first_quorum_events_do_not_set_a_frontier_from_an_outlier() -> None:
    b = robust()
    res = b.process([Impression("o", T0 + 59 * 60_000, {})] + stream(T0, 200, "a")[0], IMP, now_ms=NOW)
    assert not res.rejected
    assert b.frontier_ms is not None and b.frontier_ms < T0 + 200_000


def test_a_stale_event_among_a_sources_first_does_not_brick_it() -> None:
    """A record from 1970 among a partition's first: were it the frontier, every later event
    would be "too far ahead" of it for ever."""
    b = robust()
    imps, clicks = stream(T0, 3000, "a")
    out, rejected = feed(b, [Impression("stale", 1000, {})] + imps, [Click("stale", 1000)] + clicks)
    assert rejected == [0, 0]
    assert len(out) > 1000 and sum(ex.label for ex in out) == 301


def test_a_backfill_of_days_is_accepted_at_any_speed() -> None:
    b = robust()
    # three days of history, one impression every 10 s, read in one go (event time runs ~1e6 x the wall clock)
    imps, clicks = stream(T0, 3 * 8640, "d", step=10_000)
    out, rejected = feed(b, imps, clicks)
    out += b.flush()
    assert rejected == [0, 0]
    assert len(out) == 3 * 8640 and sum(ex.label for ex in out) == len(clicks)


def test_robust_marks_survive_a_snapshot_and_an_old_format_restores() -> None:
    b = robust()
    imps, clicks = stream(T0, 500, "a")
    feed(b, imps, clicks)
    snap = orjson.loads(orjson.dumps(b.snapshot()))
    r = JoinBuffer.restore(snap)
    assert r.source_marks() == b.source_marks() and r.watermark_ms == b.watermark_ms
    assert (r.quorum, r.max_clock_skew_ms) == (32, 300_000)
    assert [n for _, _, n in snap["sources"]] == [500, 50]
    old = dict(snap, format=1, sources=[[s, (max(m) if m else None)] for s, m, _ in snap["sources"]])
    old["config"] = {k: v for k, v in snap["config"].items() if k not in ("quorum", "max_clock_skew_ms")}
    r1 = JoinBuffer.restore(old)
    assert r1.source_marks() == {tuple(s): max(m) for s, m, _ in snap["sources"]}
