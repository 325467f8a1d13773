"""State is never silently lost or misread: unreadable, newer and mismatched snapshots refuse start-up
(daemon/baked.py, connectors/state_store.py), changed settings that can apply do, deterministically."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from connectors.codec import Impression
from connectors.join import JoinBuffer
from connectors.state_store import FORMAT_VERSION, MAGIC
from daemon.baked import BAKED, StateRefused, baked_settings
from daemon.config import SETTINGS_BY_NAME, Settings, load_settings
from daemon.runloop import STATE_FORMAT, Daemon


def settings(state: Path, **overrides: object) -> Settings:
    return load_settings(env={}).with_overrides(state_dir=str(state), gates=False, decode_process=False,
                                                **overrides)


def daemon_with_state(state: Path, **overrides: object) -> Daemon:
    """A daemon that has read a few impressions into shard 0 and written a snapshot."""
    d = Daemon(settings(state, **overrides), CollectorRegistry())
    shard = d._new_shard(0)
    d.shards[0] = shard
    d.interner.admit(["a", "b"])
    rows = [bytes(16)] * 5
    shard.join.process([Impression(f"i{k}", 1000 + k, rows[k]) for k in range(5)], ("ad.impressions", 0))
    d.store.write(d.state_snapshot())
    return d


def restart(state: Path, **overrides: object) -> Daemon:
    d = Daemon(settings(state, **overrides), CollectorRegistry())
    d._restored_gates = None
    d._restore()
    return d


def test_every_baked_setting_is_a_real_setting_and_recorded(tmp_path: Path) -> None:
    assert all(b.name in SETTINGS_BY_NAME for b in BAKED)
    daemon_with_state(tmp_path)
    recorded = restart(tmp_path).store.load_latest().state["settings"]  # type: ignore[union-attr]
    assert recorded == baked_settings(settings(tmp_path))


def test_an_empty_state_dir_is_a_first_start(tmp_path: Path) -> None:
    d = Daemon(settings(tmp_path / "new"), CollectorRegistry())
    assert d._restore() == 0 and d.shards == {}


def test_no_readable_snapshot_refuses_unless_reset(tmp_path: Path) -> None:
    daemon_with_state(tmp_path)
    for path in tmp_path.glob("snapshot-*.bin"):
        path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(StateRefused, match="none of the 1 snapshots .* is readable"):
        restart(tmp_path)
    d = Daemon(settings(tmp_path), CollectorRegistry(), reset_state=True)
    assert d._restore() == 0 and d.shards == {}
    assert [p.name for p in tmp_path.glob("reset-*/*")] == ["snapshot-000000000001.bin"]  # kept, not deleted


@pytest.mark.parametrize("where", ["file", "state"])
def test_a_newer_builds_state_is_refused_and_kept(tmp_path: Path, where: str) -> None:
    d = daemon_with_state(tmp_path)
    if where == "state":
        d.store.write({**d.state_snapshot(), "format": STATE_FORMAT + 1})
    else:
        path = d.store.path_for(1)
        raw = bytearray(path.read_bytes())
        raw[len(MAGIC) : len(MAGIC) + 2] = (FORMAT_VERSION + 1).to_bytes(2, "big")
        path.write_bytes(bytes(raw))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StateRefused, match="newer featsieve"):
        restart(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("name,value", [("attribution_window_s", 900.0), ("lateness_s", 5.0),
                                        ("mi_max_values", 1024), ("mi_block_s", 600.0),
                                        ("input_topics", "x.impressions,x.clicks"), ("max_fields", 1)])
def test_a_changed_setting_that_cannot_apply_stops_start_up_naming_it(tmp_path: Path, name: str,
                                                                       value: object) -> None:
    daemon_with_state(tmp_path)
    with pytest.raises(StateRefused, match=f"{name} is .* but the state was built with .*--reset-state"):
        restart(tmp_path, **{name: value})
    assert restart(tmp_path).shards[0].join.pending_impressions == 5  # set back: starts as before


def test_changed_settings_that_can_apply_do(tmp_path: Path) -> None:
    daemon_with_state(tmp_path)
    d = restart(tmp_path, max_pending_impressions=1000, max_future_s=10.0, mi_blocks=3, pairs_top_n=2,
                max_fields=300, max_pending_bytes=1 << 20, max_pairs=10, pair_min_z=3.0)
    join = d.shards[0].join
    assert (join.max_pending, join.max_future_ms, join.max_pending_bytes) == (1000, 10_000, 1 << 20)
    config = d.shards[0].mi.config
    assert (config.blocks, config.pairs_top_n, config.max_pairs, config.pair_keep_z) == (3, 2, 10, 3.0)
    assert d.interner.max_fields == 300


def test_a_lower_pending_bound_trims_the_oldest_deterministically() -> None:
    join = JoinBuffer(window_ms=10_000, max_pending=10)
    src = ("imp", 0)
    join.process([Impression(f"i{k}", 100 + (k * 7) % 10, {"a": k}) for k in range(10)], src)
    restored = JoinBuffer.restore(join.snapshot())
    restored.reconfigure(max_pending=4, max_future_ms=join.max_future_ms, max_pending_bytes=join.max_pending_bytes)
    res = restored.process([Impression("new", 200, {"a": 99})], src)
    # the seven oldest in (ts, id) order leave as negatives, at once
    assert [ex.ts for ex in res.examples] == [100, 101, 102, 103, 104, 105, 106]
    assert restored.pending_impressions == 4 and restored.stats()["evicted"] == 7


def test_pending_impressions_are_bounded_in_bytes() -> None:
    join = JoinBuffer(window_ms=10_000, max_pending=1_000_000, max_pending_bytes=10 * (192 + 2 + 320))
    src = ("imp", 0)
    res = join.process([Impression(f"{k:02d}", k, bytes(320)) for k in range(30)], src)
    assert join.pending_impressions == 10 and join.pending_bytes <= join.max_pending_bytes
    assert [ex.ts for ex in res.examples] == list(range(20))  # the oldest, as negatives
    wide = join.process([Impression("wide", 100, bytes(2048))], src)
    assert len(wide.examples) == 5 and join.pending_bytes <= join.max_pending_bytes
    again = JoinBuffer.restore(join.snapshot())
    assert again.pending_bytes == join.pending_bytes


def test_state_this_build_cannot_restore_is_refused_not_dropped(tmp_path: Path) -> None:
    d = daemon_with_state(tmp_path)
    state = d.state_snapshot()
    state["interner"] = {**state["interner"], "hash": "blake2b-8"}  # another value hash
    d.store.write(state)
    with pytest.raises(StateRefused, match="cannot be restored by this build .*value hash.*--reset-state"):
        restart(tmp_path)


def test_changed_gate_settings_start_the_gate_model_afresh(tmp_path: Path) -> None:
    d = daemon_with_state(tmp_path)
    d.store.write(d.state_snapshot(gates={"format": 2}))  # a gate snapshot (its content is not read here)
    assert restart(tmp_path)._restored_gates == {"format": 2}
    assert restart(tmp_path, gate_window=5000)._restored_gates is None
    assert restart(tmp_path, seed=3)._restored_gates is None


def test_lost_partitions_are_not_checkpointed_and_a_group_member_drops_their_shards(tmp_path: Path) -> None:
    """KIP-429: an evicted member's partitions may have another owner already: unlike a revocation,
    nothing is written or committed for them."""
    from kafka import TopicPartition

    for coordination, shard_kept in (("single", True), ("group", False)):
        state = tmp_path / coordination
        d = daemon_with_state(state, coordination=coordination)
        tp = TopicPartition("ad.impressions", 0)
        d.assigned = {tp}
        before = sorted(p.name for p in state.iterdir())
        d.on_lost([tp])
        assert sorted(p.name for p in state.iterdir()) == before  # no snapshot written
        assert d.assigned == set() and (0 in d.shards) is shard_kept, coordination
        assert d.metrics.rebalances.labels("lost")._value.get() == 1
