"""Snapshots: atomic, checksummed, corrupt or truncated ones skipped, old ones pruned."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.state_store import (
    FORMAT_VERSION,
    MAGIC,
    SnapshotFromNewerBuild,
    SnapshotStore,
    StateUnreadable,
    StateWriteError,
)


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


def _newer(store: SnapshotStore, sequence: int, version: int) -> None:
    """Rewrite a snapshot's header as a newer build would have written it."""
    path = store.path_for(sequence)
    raw = bytearray(path.read_bytes())
    raw[len(MAGIC) : len(MAGIC) + 2] = version.to_bytes(2, "big")
    path.write_bytes(bytes(raw))


def test_every_snapshot_unreadable_is_refused_not_an_empty_start(tmp_path) -> None:
    store = SnapshotStore(tmp_path, keep=5)
    store.write({"i": 1})
    store.write({"i": 2})
    for seq in (1, 2):
        store.path_for(seq).write_bytes(b"garbage")
    with pytest.raises(StateUnreadable, match="none of the 2 snapshots .* is readable.*--reset-state"):
        store.load_latest()


def test_a_newer_builds_snapshot_is_refused_and_never_pruned(tmp_path) -> None:
    store = SnapshotStore(tmp_path, keep=1)
    store.write({"i": 1})
    store.write({"i": 2})
    _newer(store, 2, FORMAT_VERSION + 1)
    with pytest.raises(SnapshotFromNewerBuild, match=f"snapshot-000000000002.bin .* newer featsieve "
                                                     f"\\(snapshot format {FORMAT_VERSION + 1}"):
        store.load_latest()  # not a fall back to snapshot 1, which a checkpoint would then prune it over
    with pytest.raises(SnapshotFromNewerBuild):
        store.read(2)
    # even a build that writes (keep=1) never deletes it
    store.write({"i": 3})
    store.write({"i": 4})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["snapshot-000000000002.bin", "snapshot-000000000004.bin"]


def test_set_aside_moves_everything_and_deletes_nothing(tmp_path) -> None:
    store = SnapshotStore(tmp_path, keep=5)
    assert store.set_aside("t0") is None  # nothing to move: a first start
    store.write({"i": 1})
    store.write({"i": 2})
    _newer(store, 2, FORMAT_VERSION + 1)
    (tmp_path / "snapshot-000000000003.tmp").write_bytes(b"half")
    aside = store.set_aside("t1")
    assert aside == tmp_path / "reset-t1"
    assert sorted(p.name for p in aside.iterdir()) == [
        "snapshot-000000000001.bin", "snapshot-000000000002.bin", "snapshot-000000000003.tmp"]
    assert store.load_latest() is None  # an empty start now, deliberately


def test_a_write_the_file_system_refuses_leaves_no_partial_file_and_the_last_snapshot_intact(tmp_path) -> None:
    """The operating system's own refusal: a child process with a 64 KiB file-size limit
    (EFBIG, the path ENOSPC takes too) writes a snapshot larger than that."""
    import subprocess
    import sys
    import textwrap

    SnapshotStore(tmp_path).write({"i": 1})
    code = textwrap.dedent(f"""
        import errno, resource
        from connectors.state_store import SnapshotStore, StateWriteError
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
        try:
            SnapshotStore({str(tmp_path)!r}).write({{"big": b"x" * (1 << 20)}})
        except StateWriteError as exc:
            assert exc.errno == errno.EFBIG and {str(tmp_path)!r} in str(exc), exc
            print("refused")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "refused", done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot-000000000001.bin"]
    loaded = SnapshotStore(tmp_path).load_latest()
    assert loaded is not None and loaded.state == {"i": 1}
    assert issubclass(StateWriteError, OSError)
