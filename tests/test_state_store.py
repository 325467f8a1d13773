"""Snapshots: atomic, checksummed, corrupt or truncated ones skipped, old ones pruned."""

from __future__ import annotations

import numpy as np

from connectors.state_store import SnapshotStore


def test_round_trip_and_prune(tmp_path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    for i in range(4):
        store.write({"i": i, "a": np.arange(i + 1)})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["snapshot-000000000003.bin", "snapshot-000000000004.bin"]
    loaded = store.load_latest()
    assert loaded is not None and loaded.state["i"] == 3 and loaded.sequence == 4
    assert np.array_equal(loaded.state["a"], np.arange(4))


def test_truncated_and_corrupt_fall_back(tmp_path, caplog) -> None:
    store = SnapshotStore(tmp_path, keep=5)
    store.write({"i": 1})
    store.write({"i": 2})
    store.write({"i": 3})
    p3 = store.path_for(3)
    p3.write_bytes(p3.read_bytes()[:-5])  # truncated
    p2 = store.path_for(2)
    raw = bytearray(p2.read_bytes())
    raw[-1] ^= 0xFF  # corrupt
    p2.write_bytes(bytes(raw))
    loaded = store.load_latest()
    assert loaded is not None and loaded.state == {"i": 1}
    text = caplog.text
    assert "truncated" in text and "checksum" in text


def test_leftover_temp_file_is_ignored(tmp_path) -> None:
    store = SnapshotStore(tmp_path)
    store.write({"i": 1})
    (tmp_path / "snapshot-000000000002.tmp").write_bytes(b"half written")
    assert store.load_latest().state == {"i": 1}
    store.write({"i": 2})
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_dir(tmp_path) -> None:
    assert SnapshotStore(tmp_path / "new").load_latest() is None
