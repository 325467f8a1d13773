"""Field names earn their column (models/admission.py, the daemon's _earn_columns): counted in
accepted events, admitted at the event that completes field_admit_min_events, never for names of
rejected events; the same columns and rows whether the decode worker runs or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry

from connectors.codec import Click, Impression, encode
from connectors.decode_worker import DecodeWorker
from daemon.config import load_settings
from daemon.runloop import Daemon
from daemon.tools.synthetic import GeneratorConfig, generate
from models.admission import ColumnActivity, FieldAdmission


# ------------------------------------------------------------------ the counter, on plain data
def test_a_name_is_admitted_at_the_event_that_completes_its_count() -> None:
    adm = FieldAdmission(min_events=3)
    assert [adm.seen("a") for _ in range(4)] == [False, False, True, False]  # then counted afresh
    assert adm.counts == {"a": 1}


def test_the_candidate_table_is_bounded_and_keeps_frequent_names() -> None:
    adm = FieldAdmission(min_events=50, capacity=64)
    admitted = []
    for k in range(20_000):
        if adm.seen(f"junk{k}"):  # every event also brings a never-repeated name
            admitted.append(f"junk{k}")
        if k % 4 == 0 and adm.seen("real"):  # a name in a quarter of the events
            admitted.append("real")
        assert len(adm.counts) <= 64
    assert admitted and set(admitted) == {"real"}
    again = FieldAdmission.restore(adm.snapshot(), 50)
    assert again.counts == adm.counts and list(again.counts) == list(adm.counts)


def test_column_activity_finds_stale_columns() -> None:
    act = ColumnActivity(reclaim_events=10)
    act.observe([0, 4], 5)  # events 1..5: column 0 last in event 1, column 1 in event 5
    act.observe([-1, 2], 10)  # events 6..15: column 1 in event 8
    assert act.events == 15 and act.last_seen == [1, 8]
    assert act.stale([0, 1]) == [0]
    assert ColumnActivity(0).stale([0]) == []
    assert ColumnActivity.restore(act.snapshot(), 10).last_seen == [1, 8]


# ------------------------------------------------------------------ the daemon's pipeline, no broker
class DeadLetterSink:
    """Where the pipeline's dead letters go in these broker-less tests (tests/test_fields_e2e.py
    runs the same through the real dead-letter topic)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.blocked_since = None
        self.pending = 0  # delivered at once: nothing ever waits

    def add(self, letters: list[tuple[Any, ...]]) -> None:
        self.sent += letters


def stream(junk: int = 0, late_from: int | None = None, n: int = 3000, seed: int = 3) -> list[Any]:
    """A generated stream; with ``junk``: that many junk names, each in two impressions; with
    ``late_from``: a field ``late`` in every impression from that one on."""
    out: list[Any] = []
    k = 0
    for ev in generate(GeneratorConfig(seed=seed, n_impressions=n, preset="small", event_rate=20.0)):
        if isinstance(ev, Impression):
            feats = dict(ev.features)
            if junk and k % 2 == 0:
                feats[f"junk{(k // 2) % junk:05d}"] = k
            if late_from is not None and k >= late_from:
                feats["late"] = k % 7
            ev = Impression(ev.id, ev.ts, feats)
            k += 1
        out.append(ev)
    return out


def polls_of(events: list[Any], size: int = 250, partition: int = 0
             ) -> list[dict[TopicPartition, list[ConsumerRecord]]]:
    tps = {Impression: TopicPartition("i", partition), Click: TopicPartition("c", partition)}
    records: dict[TopicPartition, list[ConsumerRecord]] = {tp: [] for tp in tps.values()}
    for ev in events:
        tp = tps[type(ev)]
        records[tp].append(ConsumerRecord(tp.topic, partition, 0, len(records[tp]), ev.ts, 0, None, encode(ev),
                                          [], None, 0, 0, 0))
    longest = max(len(r) for r in records.values())
    return [{tp: r[k : k + size] for tp, r in records.items() if r[k : k + size]} for k in range(0, longest, size)]


def run(tmp_path: Path, name: str, events: list[Any], worker: bool = False,
        polls: list[dict[TopicPartition, list[ConsumerRecord]]] | None = None, **overrides: Any) -> Daemon:
    settings = load_settings(env={}).with_overrides(state_dir=str(tmp_path / name), gates=False,
                                                    decode_process=False, **overrides)
    daemon = Daemon(settings, CollectorRegistry())
    daemon.dlq = DeadLetterSink()  # type: ignore[assignment]
    if worker:
        daemon.decoder = DecodeWorker(daemon.limits, daemon.interner)
    try:
        for batch in polls if polls is not None else polls_of(events):
            daemon._take(batch)
        daemon._settle_in_flight()
    finally:
        if daemon.decoder is not None:
            daemon.decoder.close(timeout_s=1.0)
    return daemon


def pending_rows(daemon: Daemon) -> list[bytes]:
    return [f for s in daemon.shards.values() for _, f in s.join._imps.values() if f is not None]


def test_junk_names_never_get_a_column_and_real_ones_all_do(tmp_path: Path) -> None:
    clean = run(tmp_path, "clean", stream())
    junky = run(tmp_path, "junk", stream(junk=1000))
    real = sorted(clean.interner.fields)
    assert sorted(junky.interner.fields) == real and len(real) > 10
    assert junky.global_mi().field_names() == clean.global_mi().field_names() == real
    counts = junky.shards[0].admission.counts
    assert counts and all(n.startswith("junk") for n in counts)
    assert max(map(len, pending_rows(junky))) <= 8 * len(real)


def test_a_field_earns_its_column_at_the_same_event_with_or_without_the_worker(tmp_path: Path) -> None:
    events = stream(junk=300, late_from=1200)
    loop = run(tmp_path, "loop", events)
    worker = run(tmp_path, "worker", events, worker=True)
    assert loop.interner.fields == worker.interner.fields and "late" in loop.interner.fields
    assert pending_rows(loop) == pending_rows(worker)
    for a, b in zip(loop.global_mi().scores(), worker.global_mi().scores(), strict=True):
        assert (a.name, a.mi, a.examples) == (b.name, b.mi, b.examples)
    # "late" has values from the 20th impression holding it on, not before
    late = loop.global_mi().field_counts("late")
    assert late is not None


@pytest.mark.parametrize("min_events", [1, 5])
def test_names_of_rejected_events_are_never_interned(tmp_path: Path, min_events: int) -> None:
    events = stream(n=1500)
    last = max(ev.ts for ev in events)
    # far beyond max_future_s: every one of them is dead-lettered
    evil = [Impression(f"evil{k}", last + 10 * 86_400_000 + k, {"evil": k}) for k in range(50)]
    daemon = run(tmp_path, "evil", events + evil, field_admit_min_events=min_events)
    assert len(daemon.dlq.sent) == 50  # type: ignore[union-attr]
    assert daemon.interner.column("evil") is None and "evil" not in daemon.shards[0].admission.counts


def test_admission_state_survives_a_checkpoint(tmp_path: Path) -> None:
    events = stream(junk=200)
    daemon = run(tmp_path, "a", events)
    daemon.store.write(daemon.state_snapshot())
    restored = Daemon(daemon.s, CollectorRegistry())
    restored._restored_gates = None
    restored._restore()
    assert restored.shards[0].admission.counts == daemon.shards[0].admission.counts
    assert restored.shards[0].admitted == daemon.shards[0].admitted == set(daemon.interner.fields)
    assert restored.activity.snapshot() == daemon.activity.snapshot()
    assert restored.interner.fields == daemon.interner.fields and not restored.interner.admit_new
    assert np.array_equal(np.array(restored.activity.last_seen), np.array(daemon.activity.last_seen))


def test_a_shards_state_depends_on_its_own_stream_only(tmp_path: Path) -> None:
    """Another shard that earns a field first (its column exists before this shard has seen the
    field 20 times) changes nothing in this shard's rows' values or MI counts."""
    mine = polls_of(stream(late_from=1500), partition=0)
    other = polls_of(stream(seed=8, late_from=0, junk=100), partition=1)
    alone = run(tmp_path, "alone", [], polls=mine)
    both = run(tmp_path, "both", [], polls=[{**b, **a} for a, b in zip(mine, other, strict=False)]
               + mine[len(other):])
    assert both.shards[1].admitted == alone.shards[0].admitted | {"late"}

    def state(d: Daemon) -> tuple[Any, ...]:
        shard = d.shards[0]
        scores = [(f.name, f.mi, f.examples, f.positives, f.cardinality) for f in shard.mi.scores()]
        stats = shard.join.stats()
        del stats["pending_bytes"]  # rows are as wide as the columns of all shards (MISSING where not admitted)
        return scores, stats, sorted(shard.admitted), shard.admission.counts

    assert state(both) == state(alone)
    assert "late" in alone.shards[0].admitted


# ------------------------------------------------------------------ reclaim
def test_interner_reclaimed_columns_are_given_again_lowest_first() -> None:
    from models.interning import HOLE, Interner

    it = Interner(max_fields=4, admit_new=False)
    it.admit(["a", "b", "c"])
    assert it.release(1) == "b" and it.fields == ["a", HOLE, "c"] and it.column("b") is None
    it.admit(["z"])
    assert it.fields == ["a", "z", "c"]
    it.release(0)
    again = Interner.restore(it.snapshot())
    assert again.fields == [HOLE, "z", "c"] and again.holes() == [0] and again.column("z") == 1
    again.admit(["y", "x"])
    assert again.fields == ["x", "z", "c", "y"]
    again.release(2)
    with pytest.raises(ValueError, match="not in use"):
        again.release(2)


def _mi_of(events: list[tuple[dict[str, Any], int, int]], pairs: int) -> Any:
    from models.interning import Interner
    from models.mi import MIConfig, MIState

    mi = MIState(MIConfig(block_ms=1000, blocks=3, pairs_top_n=pairs))
    it = Interner()
    for k in range(0, len(events), 50):
        part = events[k : k + 50]
        batch = it.encode([f for f, _, _ in part])
        mi.update(batch, np.array([y for _, y, _ in part], np.int8), np.array([t for _, _, t in part], np.int64))
    return mi


@pytest.mark.parametrize("pairs", [0, 4])
def test_law_dropping_a_field_leaves_the_state_of_a_stream_without_it(pairs: int) -> None:
    """MIState.drop_field(f) == the MI state of the same stream without f: every other field's
    counts, blocks and expiry; with pair scoring, no pair with f is left."""
    rng = np.random.default_rng(5)
    events = []
    for k in range(2000):
        y = int(rng.random() < 0.2)
        feats: dict[str, Any] = {"a": int(rng.integers(5)) + y, "b": str(rng.integers(30)), "c": int(rng.integers(3))}
        if k < 1200:
            feats["gone"] = int(rng.integers(4)) * (1 + y)
        events.append((feats, y, k * 7))
    full = _mi_of(events, pairs)
    full.drop_field("gone")
    never = _mi_of([({n: v for n, v in f.items() if n != "gone"}, y, t) for f, y, t in events], pairs)
    assert "gone" not in full.field_names() and all("gone" not in p for p in full.pairs)
    assert all("gone" not in p for tables in full.pair_blocks.values() for p in tables)
    want = never.snapshot()
    got = full.snapshot()
    if pairs:  # pair tables of pairs chosen among fields with it may differ: compare the fields
        for snap in (want, got):
            snap.pop("pair_blocks")
            snap.pop("pairs")
    assert repr(got) == repr(want)


def test_gate_model_clear_column_resets_only_that_column() -> None:
    torch = pytest.importorskip("torch")
    from models.gates import GateConfig, GatedCTR

    cfg = GateConfig(max_fields=3, buckets_per_field=16, window=1000)
    model = GatedCTR(cfg, seed=1)
    rng = np.random.default_rng(0)
    hashes = rng.integers(1, 2**63, size=(1500, 3), dtype=np.int64).astype(np.uint64)
    model.learn(hashes, (rng.random(1500) < 0.3).astype(np.int8))
    before = model.net.table.clone()
    model.clear_column(1)
    rows = slice(16, 32)
    assert torch.count_nonzero(model.net.table[rows]) == 0
    assert torch.equal(model.net.table[:16], before[:16]) and torch.equal(model.net.table[32:], before[32:])
    assert float(model.search.field_gate[1]) == 0.0 and model.search.freq[rows].sum() == 0
    assert 1 not in model.seen_values and 1 not in model.wide_columns
    model.clear_column(7)  # beyond max_fields: nothing to clear


def test_a_field_not_seen_for_a_while_loses_its_column_as_if_never_seen(tmp_path: Path) -> None:
    """The daemon reclaims a field absent from field_reclaim_events events: afterwards every
    shard's MI and admission equal those of the stream that never had it, with or without the
    decode worker (batches in flight at the reclaim included)."""
    def with_gone(events: list[Any]) -> list[Any]:
        out, k = [], 0
        for ev in events:
            if isinstance(ev, Impression):
                if k < 400:
                    ev = Impression(ev.id, ev.ts, {**ev.features, "gone": k % 3})
                k += 1
            out.append(ev)
        return out

    base = stream(late_from=2500, n=3000)
    settings = {"field_reclaim_events": 800}
    loop = run(tmp_path, "loop", with_gone(base), **settings)
    worker = run(tmp_path, "worker", with_gone(base), worker=True, **settings)
    never = run(tmp_path, "never", base, **settings)
    assert loop.metrics.field_columns.labels("reclaimed")._value.get() == 1
    for d in (loop, worker):
        assert "gone" not in d.interner.fields and "gone" not in d.global_mi().field_names()
        assert "late" in d.interner.fields  # admitted after the reclaim: into the freed column
        assert d.interner.column("late") == loop.interner.column("late")

    def state(d: Daemon) -> tuple[Any, ...]:
        shard = d.shards[0]
        scores = [(f.name, f.mi, f.examples, f.positives, f.cardinality) for f in shard.mi.scores()]
        stats = shard.join.stats()
        del stats["pending_bytes"]
        return scores, stats, sorted(shard.admitted), shard.admission.counts

    assert state(loop) == state(worker) == state(never)
    assert pending_rows(loop) == pending_rows(worker)


def test_only_events_holding_a_waiting_column_are_looked_at() -> None:
    """A column another shard earned and this one never sees costs no per-event call here."""
    from connectors.codec import DEFAULT_LIMITS
    from connectors.decode_worker import decode_wire, from_wire
    from daemon.runloop import _holding
    from models.interning import Interner

    it = Interner(admit_new=False)
    it.admit(["a", "rare"])
    evs = [Impression("x", 1, {"a": 1}), Click("x", 2), Impression("y", 3, {"a": 2, "rare": 5}),
           Impression("z", 4, {"a": 3})]
    wire = decode_wire([encode(e) for e in evs], DEFAULT_LIMITS, it)
    events, _ = from_wire(wire)
    assert _holding(events, wire, [it.column("rare")]) == {2}  # type: ignore[list-item]
    assert _holding(events, wire, [7]) == set()


def test_names_past_max_fields_are_untracked_until_a_column_is_free(tmp_path: Path) -> None:
    daemon = run(tmp_path, "full", stream(n=1500), max_fields=5)
    fields = daemon.interner.fields
    assert len(fields) == 5 and daemon.interner.untracked_fields > 0
    assert daemon.shards[0].admitted == set(fields)  # the names refused a column are not "admitted"
    assert set(daemon.global_mi().field_names()) == set(fields)
