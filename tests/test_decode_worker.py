"""The decode worker process gives exactly what decoding in the poll loop gives.

Unit tests run a real worker process (no broker); the broker test runs the daemon
both ways over one stream, and once with the worker killed part-way, and compares
the MI state it ends with.
"""

from __future__ import annotations

import os
import signal
from itertools import pairwise

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connectors.codec import DEFAULT_LIMITS, Click, Impression, Labeled, encode
from connectors.decode_worker import (
    DecodeWorker,
    DecodeWorkerError,
    decode_rows,
    rows_matrix,
)
from daemon.tools.synthetic import GeneratorConfig, generate
from models.interning import MISSING, Interner
from tests.conftest import wait_until

BAD = [
    b"not json",
    b'{"type":"impression","id":"x","ts":1,"features":{"a":[1]}}',  # nested value
    b'{"type":"click","id":7,"ts":1}',  # id not a string
    b'{"type":"impression","id":"y","ts":1,"features":{"' + b"n" * 200 + b'":1}}',  # name too long
    b"",
    None,
]


def _batches() -> list[list[bytes | None]]:
    cfg = GeneratorConfig(seed=4, n_impressions=3000, preset="small", event_rate=20.0)
    raws: list[bytes | None] = [encode(ev) for ev in generate(cfg)]
    batches = [raws[i : i + 700] for i in range(0, len(raws), 700)]
    # bad records among good ones; a labelled example; a field that appears only later, with
    # more distinct values than a column remembers names for (its names are then forgotten)
    batches[1] = batches[1][:5] + BAD + batches[1][5:]
    batches[2] = [*batches[2], encode(Labeled(10, {"late": "v0", "a": 1.5}, 1))]
    batches[3] = [encode(Impression(f"n{i}", 20 + i, {"late": f"v{i}", "zz": i % 3 == 0}))
                  for i in range(40)] + batches[3]
    return batches


def _flat(events: list) -> list[tuple]:
    return [(type(e).__name__, getattr(e, "id", None), e.ts, e.features, getattr(e, "label", None))
            for e in events]


def _names(interner: Interner) -> list:
    return [(n.cap, n.names) for n in interner._names]


def test_the_worker_decodes_exactly_like_the_loop() -> None:
    here, mirror = Interner(names_per_column=16), Interner(names_per_column=16)
    worker = DecodeWorker(DEFAULT_LIMITS, mirror)
    try:
        batches = _batches()
        for batch in batches[:2]:
            worker.submit(batch)  # two in flight: results come back in order
        got = [worker.collect(), worker.collect()]
        for batch in batches[2:]:
            worker.submit(batch)
            got.append(worker.collect())
    finally:
        worker.close()
    for batch, (events, bad, width) in zip(batches, got, strict=True):
        want_events, want_bad, want_width = decode_rows(batch, DEFAULT_LIMITS, here)
        assert _flat(events) == _flat(want_events)
        assert [(i, e.reason, e.detail) for i, e in bad] == [(i, e.reason, e.detail) for i, e in want_bad]
        assert width == want_width
    # the six bad records of batch 1 (at 5..10) are reported where they are, each with its reason
    assert [(i, e.reason) for i, e in got[1][1]] == list(zip(range(5, 11), [
        "not_json", "bad_feature_value", "wrong_type", "field_name_too_long", "empty", "empty"], strict=True))
    assert [len(bad) for _, bad, _ in got] == [0, len(BAD), 0, 0, 0]
    assert mirror.fields == here.fields and "late" in here.fields
    assert _names(mirror) == _names(here)
    assert here._names[here.column("late")].names is None  # 41 values > 16: forgotten on both sides


@pytest.mark.parametrize("chunk", [300, 1000])
def test_wire_batches_round_trip_through_a_shared_region(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the worker writes is what the daemon reads, ids with a NUL in them included (those
    travel in the message instead of the region)."""
    from connectors import decode_worker
    from connectors.decode_worker import Region, anonymous_file, read_wire, write_wire

    monkeypatch.setattr(decode_worker, "CHUNK", chunk)
    interner = Interner(names_per_column=16)
    nul_ids = [encode(Impression("a\x00b", 5, {"x": 1})), encode(Click("c\x00", 6))]
    region = Region(anonymous_file("featsieve-test"))
    try:
        for batch in [*_batches(), [], [None], nul_ids]:
            shipped = decode_worker.decode_wire(batch, DEFAULT_LIMITS, interner)
            assert read_wire(write_wire(shipped, region), region) == shipped
        assert shipped.ids == ["a\x00b", "c\x00"]
    finally:
        region.close()


def test_batches_larger_than_the_shared_regions_grow_them() -> None:
    """A batch of ~3 MB (the regions start at 1 MB) in and ~1.5 MB of rows out, twice per slot;
    ready() tells when the oldest batch is back."""
    from connectors.decode_worker import Region

    cfg = GeneratorConfig(seed=5, n_impressions=5000, preset="default", event_rate=20.0)
    big = [encode(ev) for ev in generate(cfg)]
    assert sum(map(len, big)) > 2 * Region.INITIAL
    here, mirror = Interner(), Interner()
    worker = DecodeWorker(DEFAULT_LIMITS, mirror)
    try:
        assert not worker.ready()  # nothing in flight
        for round_ in range(2 * worker.max_in_flight):
            batch = big[round_ * 100 :] + [None]  # a tombstone at the end
            worker.submit(batch)
            while not worker.ready():
                pass
            events, bad, width = worker.collect()
            want_events, want_bad, want_width = decode_rows(batch, DEFAULT_LIMITS, here)
            assert _flat(events) == _flat(want_events) and width == want_width
            assert [(i, e.reason) for i, e in bad] == [(i, e.reason) for i, e in want_bad] == [(len(batch) - 1, "empty")]
    finally:
        worker.close()


def test_a_batch_is_decoded_in_chunks_like_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a poll's batch give the events, errors and rows one pass gives, also when a
    later chunk admits a field (the rows of earlier chunks are widened with it missing)."""
    from connectors import decode_worker

    batch = [r for b in _batches() for r in b]
    one_interner, chunked_interner = Interner(names_per_column=16), Interner(names_per_column=16)
    one_pass = decode_rows(batch, DEFAULT_LIMITS, one_interner)
    monkeypatch.setattr(decode_worker, "CHUNK", 300)
    chunked = decode_rows(batch, DEFAULT_LIMITS, chunked_interner)
    assert chunked[2] == one_pass[2] == len(chunked_interner.fields)
    assert [(i, e.reason) for i, e in chunked[1]] == [(i, e.reason) for i, e in one_pass[1]]

    def by_name(events: list, fields: list[str]) -> dict[str, list[int]]:
        m = rows_matrix([e.features for e in events if e.features is not None], len(fields))
        return {name: m[:, k].tolist() for k, name in enumerate(fields)}

    # compared by name: chunks may give columns in another order than one sorted pass
    cols = chunked_interner.fields
    ours = by_name(chunked[0], cols)
    assert ours == by_name(one_pass[0], one_interner.fields)
    assert set(ours["late"][:2000]) == {MISSING} and set(ours["late"]) != {MISSING}
    step = 8 * chunked[2]  # rows of one width: earlier chunks' rows were widened
    assert {len(e.features) for e in chunked[0] if e.features is not None} == {step}


def test_rows_read_later_columns_as_missing() -> None:
    interner = Interner()
    (old,), _, w_old = decode_rows([encode(Impression("a", 1, {"b": "x"}))], DEFAULT_LIMITS, interner)
    (new,), _, w_new = decode_rows([encode(Impression("c", 2, {"a": 1, "b": "x"}))], DEFAULT_LIMITS, interner)
    assert (w_old, w_new) == (1, 2) and isinstance(old, Impression) and isinstance(old.features, bytes)
    m = rows_matrix([old.features, new.features], w_new)  # type: ignore[list-item]
    b, a = interner.column("b"), interner.column("a")
    assert m[0, b] == m[1, b] and m[0, a] == MISSING and m[1, a] != MISSING
    (click,), _, _ = decode_rows([encode(Click("c", 3, {"q": 1}))], DEFAULT_LIMITS, interner)
    assert click.features is None and "q" not in interner.fields  # a click's features are not joined


def test_a_dead_worker_is_reported() -> None:
    worker = DecodeWorker(DEFAULT_LIMITS, Interner())
    try:
        worker.submit([encode(Impression("a", 1, {"f": 1}))])
        worker.collect()
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(DecodeWorkerError):
            worker.submit([encode(Impression("b", 2, {"f": 2}))])
            worker.collect()
    finally:
        worker.close(timeout_s=1.0)


def test_the_worker_does_not_outlive_a_killed_daemon() -> None:
    import subprocess
    import sys

    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from connectors.codec import DEFAULT_LIMITS\n"
         "from connectors.decode_worker import DecodeWorker\n"
         "from models.interning import Interner\n"
         "w = DecodeWorker(DEFAULT_LIMITS, Interner())\n"
         "print(w.pid, flush=True)\n"
         "time.sleep(60)\n"],  # a daemon stand-in that lives until the test kills it
        stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())  # type: ignore[union-attr]
        parent.kill()
        parent.wait(10)
        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        try:
            wait_until(gone, 20, "the decode worker to end with its daemon")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            raise
    finally:
        if parent.poll() is None:
            parent.kill()


# ------------------------------------------------------------------ on the real broker
def _produce(bootstrap: str, topics: tuple[str, str]) -> int:
    from daemon.config import load_settings
    from daemon.tools.bench_stream import produce_stream

    settings = load_settings(env={"FEATSIEVE_BOOTSTRAP": bootstrap})
    return produce_stream(settings, topics, 12_000, seed=5, partitions=6)


def _run(bootstrap: str, topics: tuple[str, str], name: str, tmp_path, decode_process: bool,
         kill_after: int | None = None, max_events: int | None = None) -> tuple[dict, int]:
    from daemon import runloop
    from daemon.config import load_settings

    settings = load_settings(env={"FEATSIEVE_BOOTSTRAP": bootstrap}).with_overrides(
        input_topics=",".join(topics), group_id=name, model_id=name, state_dir=str(tmp_path / name),
        mask_topic=f"{name}.masks", dlq_topic=f"{name}.dlq", gates=False, metrics_port=0,
        decode_process=decode_process, max_poll_records=700)  # 12 partitions: more than max_in_flight
    daemon = runloop.Daemon(settings, CollectorRegistry(), exit_at_end=max_events is None,
                            max_events=max_events)
    if kill_after is not None:
        original = runloop.DecodeWorker.collect_wire
        calls = {"n": 0}

        def collect(worker: DecodeWorker) -> tuple:
            calls["n"] += 1
            if calls["n"] == kill_after:
                os.kill(worker.pid, signal.SIGKILL)
            return original(worker)

        runloop.DecodeWorker.collect_wire = collect  # type: ignore[method-assign]
        try:
            assert daemon.run() == 0
        finally:
            runloop.DecodeWorker.collect_wire = original  # type: ignore[method-assign]
        assert calls["n"] >= kill_after and daemon.decoder is None
    else:
        assert daemon.run() == 0
    scores = {f.name: (f.mi, f.examples, f.positives, f.cardinality) for f in daemon.global_mi().scores()}
    assert sum(o for shard in daemon.shards.values() for o in shard.offsets.values()) == daemon.events_seen
    return scores, daemon.events_seen


@pytest.mark.broker
@pytest.mark.slow
def test_the_daemon_ends_in_the_same_state_with_or_without_the_worker(bootstrap: str, unique: str,
                                                                       tmp_path) -> None:
    topics = (f"{unique}.impressions", f"{unique}.clicks")
    produced = _produce(bootstrap, topics)
    in_loop, n1 = _run(bootstrap, topics, unique + "a", tmp_path, decode_process=False)
    worker, n2 = _run(bootstrap, topics, unique + "b", tmp_path, decode_process=True)
    killed, n3 = _run(bootstrap, topics, unique + "c", tmp_path, decode_process=True, kill_after=3)
    assert n1 == n2 == n3 == produced
    assert in_loop and worker == in_loop and killed == in_loop
    # plain Python numbers (not NumPy scalars or arrays), so the equality above is exact
    assert {type(x) for v in in_loop.values() for x in v} <= {int, float}, in_loop
    assert np.isfinite([v[0] for v in in_loop.values()]).all()


def test_rows_of_another_instance_map_to_our_columns() -> None:
    from connectors.decode_worker import remap_rows

    theirs, ours = Interner(), Interner()
    (ev,), _, _ = decode_rows([encode(Impression("a", 1, {"b": "x", "c": 2, "d": True}))], DEFAULT_LIMITS, theirs)
    decode_rows([encode(Impression("z", 1, {"e": 0}))], DEFAULT_LIMITS, ours)  # our columns differ
    ours.admit(["b", "c"])  # "d": a name we give no column (as when max_fields is reached)
    cols = [ours.column(f) for f in theirs.fields]
    (row,) = remap_rows([ev.features], cols, len(ours.fields))  # type: ignore[list-item]
    got = np.frombuffer(row, "<u8")
    want = ours.encode([{"b": "x", "c": 2}]).hashes[0]
    assert got.tolist() == want.tolist() and got[ours.column("e")] == MISSING


def test_stats_records_carry_rows() -> None:
    from connectors.stats import decode
    from connectors.stats import encode as encode_stats

    payload = {"shard": {"join": {"impressions": [["a", 1, b"\x00\x01\xff" * 3], ["b", 2, None]]}}}
    assert decode(encode_stats(payload))["shard"] == payload["shard"]


@pytest.mark.broker
@pytest.mark.slow
def test_max_events_stops_at_exactly_that_many(bootstrap: str, unique: str, tmp_path) -> None:
    topics = (f"{unique}.impressions", f"{unique}.clicks")
    _produce(bootstrap, topics)
    for decode_process in (True, False):
        _, n = _run(bootstrap, topics, f"{unique}{decode_process}", tmp_path, decode_process, max_events=5_001)
        assert n == 5_001


def test_impressions_restored_with_feature_dicts_wait_as_rows(tmp_path) -> None:
    """A snapshot of an earlier version holds feature dicts in the join: restore turns them into rows."""
    from connectors.join import JoinBuffer
    from daemon.config import load_settings
    from daemon.runloop import Daemon
    from daemon.shards import ShardState
    from models.mi import MIState

    daemon = Daemon(load_settings(env={}).with_overrides(state_dir=str(tmp_path)), CollectorRegistry())
    join = JoinBuffer(window_ms=60_000, lateness_ms=0, sources=[("t", 0)])
    join.process([Impression("a", 1, {"f": "x", "g": 2}), Impression("b", 2, {"f": "y"})], ("t", 0))
    daemon.shards = {0: ShardState(0, join, MIState(daemon.mi_config))}
    daemon._rows_from_dicts()
    rows = [f for _, f in join._imps.values()]
    assert all(isinstance(r, bytes) for r in rows)
    got = rows_matrix(rows, len(daemon.interner.fields))
    assert got.tolist() == Interner().encode([{"f": "x", "g": 2}, {"f": "y"}]).hashes.tolist()


def _pipeline_run(tmp_path, name: str, polls: list, kill_at: int | None) -> tuple[dict, list]:
    """Feed ``polls`` (``{tp: records}`` each) to a daemon's batch pipeline, no broker: with a
    worker killed at its ``kill_at``-th collect (None: no worker). Returns the scores and every
    offset a shard held after each poll."""
    from daemon.config import load_settings
    from daemon.runloop import Daemon

    settings = load_settings(env={}).with_overrides(state_dir=str(tmp_path / name), gates=False)
    daemon = Daemon(settings, CollectorRegistry())
    seen: list = []
    if kill_at is not None:
        daemon.decoder = DecodeWorker(daemon.limits, daemon.interner)
        calls = {"n": 0}
        collect = daemon.decoder.collect_wire

        def killing_collect() -> tuple:
            calls["n"] += 1
            if calls["n"] == kill_at:
                os.kill(daemon.decoder.pid, signal.SIGKILL)  # type: ignore[union-attr]
            return collect()

        daemon.decoder.collect_wire = killing_collect  # type: ignore[method-assign]
    try:
        for batch in [*polls, {}]:  # an empty poll applies what is left in flight
            daemon._take(batch)
            seen.append({k: v for s in daemon.shards.values() for k, v in s.offsets.items()})
    finally:
        if daemon.decoder is not None:
            daemon.decoder.close(timeout_s=1.0)
    assert not daemon._in_flight
    return {f.name: (f.mi, f.examples, f.cardinality) for f in daemon.global_mi().scores()}, seen


def test_a_worker_dying_mid_stream_leaves_batches_applied_in_order(tmp_path) -> None:
    """Whichever collect the worker dies in, every batch is applied once and in partition order."""
    from kafka import TopicPartition
    from kafka.consumer.fetcher import ConsumerRecord

    cfg = GeneratorConfig(seed=6, n_impressions=2500, preset="small", event_rate=20.0)
    tps = {"Impression": TopicPartition("i", 0), "Click": TopicPartition("c", 0)}
    records: dict = {tp: [] for tp in tps.values()}
    for ev in generate(cfg):
        tp = tps[type(ev).__name__]
        records[tp].append(ConsumerRecord(tp.topic, 0, 0, len(records[tp]), ev.ts, 0, None, encode(ev),
                                          [], None, 0, 0, 0))
    step = {tps["Impression"]: 300, tps["Click"]: 12}
    polls = [{tp: r[k * step[tp] : (k + 1) * step[tp]] for tp, r in records.items()
              if r[k * step[tp] : (k + 1) * step[tp]]} for k in range(9)]
    assert sum(len(r) for p in polls for r in p.values()) == sum(map(len, records.values()))
    want, _ = _pipeline_run(tmp_path, "loop", polls, kill_at=None)
    for kill_at in range(1, 8):
        got, seen = _pipeline_run(tmp_path, f"k{kill_at}", polls, kill_at)
        for before, after in pairwise(seen):  # no offset ever goes back
            assert all(after[k] >= v for k, v in before.items()), kill_at
        assert seen[-1] == {(tp.topic, 0): len(r) for tp, r in records.items()}, kill_at
        assert got == want, kill_at
