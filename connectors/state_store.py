"""Atomic, checksummed snapshots of the daemon's state on local disk.

A snapshot is written as: temp file → fsync → rename → fsync of the
directory, so a reader sees either the old or the new snapshot, never a
half-written one. Each file carries a format version, the payload length
and a SHA-256 checksum; :meth:`SnapshotStore.load_latest` skips files that
fail any check (with a log line saying why) and falls back to the previous
one. If snapshots exist but none is readable, :meth:`SnapshotStore.load_latest`
raises :class:`StateUnreadable` instead of returning None (a silent start from
empty state would replay the input from offset 0); a snapshot written by a
newer build (a higher format version) raises :class:`SnapshotFromNewerBuild`
and is never pruned. :meth:`SnapshotStore.set_aside` moves every snapshot
into a ``reset-<time>`` subdirectory (``featsieve run --reset-state``):
nothing is ever deleted except older snapshots of this build's format. The payload is a pickle of plain data and NumPy arrays produced by our
own components; the state directory is trusted like the daemon's own code
(never point it at files from elsewhere).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors import failpoints

log = logging.getLogger(__name__)

MAGIC = b"FEATSIEVE-SNAPSHOT\n"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">HQ32s")  # format version, payload length, sha256
_NAME = re.compile(r"^snapshot-(\d{12})\.bin$")


class SnapshotError(RuntimeError):
    """A snapshot file is unreadable: truncated, corrupt, or of another format."""


class SnapshotFromNewerBuild(SnapshotError):
    """A snapshot's format version is higher than this build reads: a downgrade. Refused, never pruned."""


class StateUnreadable(SnapshotError):
    """Snapshots exist but none of them is readable: starting empty would silently lose the state."""


class StateWriteError(OSError):
    """A snapshot could not be written (disk full, file too large, permissions, I/O error).

    The partial file is removed; the snapshots written before are untouched, so the state on
    disk stays the last complete one. ``errno`` and ``strerror`` are the operating system's."""


@dataclass(frozen=True)
class LoadedSnapshot:
    sequence: int
    path: Path
    state: Any
    size_bytes: int


class SnapshotStore:
    """Numbered snapshots in one directory; keeps the newest ``keep`` files."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)

    def _sequences(self) -> list[int]:
        out = []
        for entry in self.directory.iterdir():
            m = _NAME.match(entry.name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def path_for(self, sequence: int) -> Path:
        return self.directory / f"snapshot-{sequence:012d}.bin"

    def write(self, state: Any) -> tuple[int, int]:
        """Write a new snapshot atomically; returns (sequence, bytes written)."""
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        digest = hashlib.sha256(payload).digest()
        seqs = self._sequences()
        sequence = (seqs[-1] + 1) if seqs else 1
        final = self.path_for(sequence)
        tmp = final.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(MAGIC)
                fh.write(_HEADER.pack(FORMAT_VERSION, len(payload), digest))
                half = len(payload) // 2
                fh.write(payload[:half])
                failpoints.hit("snapshot_write", sequence, flush=fh)  # tests: a crash mid-write
                fh.write(payload[half:])
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a partial file only takes the space a retry needs
            raise StateWriteError(exc.errno, f"could not write a snapshot to {self.directory}: "
                                  f"{exc.strerror or exc}") from exc
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._prune()
        return sequence, len(MAGIC) + _HEADER.size + len(payload)

    def _prune(self) -> None:
        # a newer build's snapshots are never ours to delete (a downgrade must not destroy them)
        seqs = [seq for seq in self._sequences() if not self._is_newer(seq)]
        for seq in seqs[: max(0, len(seqs) - self.keep)]:
            self.path_for(seq).unlink(missing_ok=True)
        for stale in self.directory.glob("snapshot-*.tmp"):
            stale.unlink(missing_ok=True)

    def _version(self, sequence: int) -> int | None:
        """The format version in a snapshot's header; None if the header cannot be read."""
        try:
            with open(self.path_for(sequence), "rb") as fh:
                data = fh.read(len(MAGIC) + _HEADER.size)
        except OSError:
            return None
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEADER.size:
            return None
        return int(_HEADER.unpack(data[len(MAGIC):])[0])

    def _is_newer(self, sequence: int) -> bool:
        version = self._version(sequence)
        return version is not None and version > FORMAT_VERSION

    def newer_snapshots(self) -> list[tuple[Path, int]]:
        """Snapshots written by a newer build (format version above :data:`FORMAT_VERSION`), with it."""
        found = [(self.path_for(seq), self._version(seq)) for seq in self._sequences()]
        return [(path, v) for path, v in found if v is not None and v > FORMAT_VERSION]

    def snapshot_paths(self) -> list[Path]:
        return [self.path_for(seq) for seq in self._sequences()]

    def set_aside(self, stamp: str) -> Path | None:
        """Move every snapshot (and temp file) into ``reset-<stamp>/``; None if there was none.

        Nothing is deleted: an operator who reset by mistake moves the files back.
        """
        files = [*self.snapshot_paths(), *self.directory.glob("snapshot-*.tmp")]
        if not files:
            return None
        aside = self.directory / f"reset-{stamp}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in files:
            os.replace(path, aside / path.name)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return aside

    def read(self, sequence: int) -> LoadedSnapshot:
        path = self.path_for(sequence)
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            raise SnapshotError(f"{path.name}: not a featsieve snapshot (bad magic)")
        head = data[len(MAGIC) : len(MAGIC) + _HEADER.size]
        if len(head) < _HEADER.size:
            raise SnapshotError(f"{path.name}: truncated header")
        version, length, digest = _HEADER.unpack(head)
        if version > FORMAT_VERSION:
            raise SnapshotFromNewerBuild(
                f"{path.name} was written by a newer featsieve (snapshot format {version}, this build reads "
                f"{FORMAT_VERSION})")
        if version != FORMAT_VERSION:
            raise SnapshotError(f"{path.name}: format version {version}, this build reads {FORMAT_VERSION}")
        payload = data[len(MAGIC) + _HEADER.size :]
        if len(payload) != length:
            raise SnapshotError(f"{path.name}: truncated ({len(payload)} of {length} payload bytes)")
        if hashlib.sha256(payload).digest() != digest:
            raise SnapshotError(f"{path.name}: checksum mismatch")
        return LoadedSnapshot(sequence, path, pickle.loads(payload), len(data))

    def load_latest(self) -> LoadedSnapshot | None:
        """The newest valid snapshot, or None when there is no snapshot at all.

        Invalid ones are logged and skipped in favour of an older valid one. Raises
        :class:`SnapshotFromNewerBuild` if any snapshot comes from a newer build (falling back to an
        older one would checkpoint over it), and :class:`StateUnreadable` if snapshots exist and
        none of them can be read.
        """
        newer = self.newer_snapshots()
        if newer:
            path, version = newer[-1]
            raise SnapshotFromNewerBuild(
                f"{path.name} in {self.directory} was written by a newer featsieve (snapshot format "
                f"{version}, this build reads {FORMAT_VERSION}); run that build, or start with --reset-state (the snapshots are moved "
                "aside, never deleted)")
        seqs = self._sequences()
        problems = []
        for seq in reversed(seqs):
            try:
                return self.read(seq)
            except (SnapshotError, OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                problems.append(str(exc))
                log.error("ignoring snapshot %s: %s; falling back to the previous one", seq, exc)
        if seqs:
            raise StateUnreadable(
                f"none of the {len(seqs)} snapshots in {self.directory} is readable ({'; '.join(problems)}); "
                "refusing to start from empty state (that would replay the input from the beginning): "
                "restore the files, or start with --reset-state to move them aside and start empty")
        return None
