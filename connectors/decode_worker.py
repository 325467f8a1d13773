"""Decoding off the poll loop: records → events whose features are rows of value hashes.

The poll loop's own work per record is kafka-python's parsing of the fetch (the
same as any consumer's); decoding the JSON and hashing ~40 values is as much
again. :class:`DecodeWorker` does that second half in a process of its own, so
that on two cores the loop polls batch k+1 while batch k is decoded.

Both ways of decoding give the same thing (tests/test_decode_worker.py):

* :func:`decode_rows` decodes and hashes a batch in this process with the
  daemon's :class:`~models.interning.Interner`: events in input order, each
  impression's and labelled example's ``features`` replaced by its *row*, the
  ``bytes`` of its value hashes (little-endian uint64, one per interner column
  at the time; later columns are absent from older rows and read as missing).
  A click's optional features are not joined, so clicks carry none.
* the worker runs the same (:func:`decode_wire`) on a replica of that interner, started
  from its snapshot, and ships the result in columns (:class:`WireBatch`), through
  shared memory, together with the interner's journal; :meth:`DecodeWorker.collect` replays the
  journal into the daemon's interner before it rebuilds the events, so the
  daemon's interner is always the replica's state as of the batch in hand.

Batches come back in the order they were submitted. If the worker dies, the
caller re-decodes what was in flight with :func:`decode_rows` and carries on in
process (nothing submitted is lost: the records stay with the caller until
their batch is applied).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import mmap
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from connectors.codec import Click, Event, EventError, Impression, Labeled, Limits, decode_many
from models.interning import MISSING, Interner

log = logging.getLogger("featsieve.decode")

_IMP, _CLICK, _LABELED = 0, 1, 2
KIND_CLICK = _CLICK  # WireBatch.kinds of a click (the only events without a row)
ROW_DTYPE = np.dtype("<u8")


CHUNK = 1000  # records decoded and hashed together (see decode_wire)


def decode_rows(raws: Sequence[bytes | None], limits: Limits, interner: Interner
                ) -> tuple[list[Event], list[tuple[int, EventError]], int]:
    """Decode and hash a batch: ``(events, bad, width)``; ``width`` columns per row.

    The same as the worker gives (:func:`decode_wire`, then :func:`from_wire`), in this process.
    """
    batch = decode_wire(raws, limits, interner)
    events, bad = from_wire(batch)
    return events, bad, batch.width


def decode_wire(raws: Sequence[bytes | None], limits: Limits, interner: Interner) -> WireBatch:
    """Decode and hash a batch into wire columns (the journal is left to the caller).

    A poll's batch (up to 10 000 records) is taken :data:`CHUNK` records at a time: hashing
    walks the decoded values a column at a time, and a chunk's objects (~5 kB an event) are
    still in the CPU's cache from decoding, where a whole batch's are not (measured: ~20% less
    time per event than one pass over 10 000). Rows of a chunk before one that admitted new
    fields read those as missing.
    """
    kinds = bytearray()
    ids: list[str] = []
    ts: list[int] = []
    labels: list[int] = []
    bad: list[tuple[int, str, str]] = []
    blocks: list[np.ndarray] = []
    extras: list[tuple[int, str, int]] = []
    last_seen: list[int] = []
    for start in range(0, len(raws), CHUNK):
        events, chunk_bad = decode_many(raws[start : start + CHUNK], limits)
        bad += [(start + i, err.reason, err.detail) for i, err in chunk_bad]
        features: list[Any] = []
        first = len(kinds)  # the chunk's first event's index in the batch
        for ev in events:
            ts.append(ev.ts)
            kind = ev.__class__
            if kind is Impression:
                kinds.append(_IMP)
                ids.append(ev.id)  # type: ignore[union-attr]
                features.append(ev.features)
            elif kind is Click:
                kinds.append(_CLICK)
                ids.append(ev.id)  # type: ignore[union-attr]
            else:
                kinds.append(_LABELED)
                labels.append(ev.label)  # type: ignore[union-attr]
                features.append(ev.features)
        if features:
            if not interner.admit_new:
                interner.unadmitted = []
            block = interner.encode(features).hashes
            blocks.append(block)
            if interner.unadmitted is not None:
                # the daemon's own bookkeeping (admission, stale columns) wants event indices
                with_features = [i for i in range(first, len(kinds)) if kinds[i] != _CLICK]
                if interner.unadmitted:
                    extras += [(with_features[r], name, h) for name, rows, hashes in interner.unadmitted
                               for r, h in zip(rows.tolist(), hashes.tolist(), strict=True)]
                _last_present(block, with_features, last_seen)
            interner.unadmitted = None
        # free this chunk's dicts before the next is decoded: its memory is then reused while
        # still in cache (keeping two chunks alive cost ~10% of the whole)
        del events, features
    width = len(interner.fields)
    rows = b"".join(_widen(block, width).astype(ROW_DTYPE, copy=False).tobytes() for block in blocks)
    extras.sort()
    return WireBatch(bytes(kinds), ids, ts, labels, rows, width, bad, extras=extras, last_seen=last_seen)


def _last_present(block: np.ndarray, events: list[int], last_seen: list[int]) -> None:
    """For each column of ``block`` (rows: the events numbered ``events``) with a value in some
    row, set ``last_seen[col]`` to the last such event's number (-1: none in the batch)."""
    present = block != MISSING
    if not present.size:
        return
    last = present.shape[0] - 1 - np.argmax(present[::-1], axis=0)
    any_col = present.any(axis=0)
    while len(last_seen) < block.shape[1]:
        last_seen.append(-1)
    for col in np.flatnonzero(any_col).tolist():
        last_seen[col] = events[int(last[col])]


def _widen(hashes: np.ndarray, width: int) -> np.ndarray:
    """An (n, w) hash matrix as (n, width), the columns admitted since read as missing."""
    if hashes.shape[1] == width:
        return hashes
    out = np.full((hashes.shape[0], width), MISSING, dtype=np.uint64)
    out[:, : hashes.shape[1]] = hashes
    return out


def hash_rows(hashes: np.ndarray) -> list[bytes]:
    """The rows of an (n, width) hash matrix, each as the bytes the join holds."""
    blob = hashes.astype(ROW_DTYPE, copy=False).tobytes()
    step = 8 * hashes.shape[1]
    return [blob[k * step : (k + 1) * step] for k in range(hashes.shape[0])]


def rows_matrix(rows: Sequence[bytes], width: int) -> np.ndarray:
    """Stack rows (of at most ``width`` columns each) into an (n, width) uint64 matrix."""
    step = 8 * width
    if all(len(r) == step for r in rows):
        return np.frombuffer(b"".join(rows), ROW_DTYPE).reshape(len(rows), width).astype(np.uint64)
    out = np.full((len(rows), width), MISSING, dtype=np.uint64)
    for k, r in enumerate(rows):  # rows from before later columns were admitted
        out[k, : len(r) // 8] = np.frombuffer(r, ROW_DTYPE)
    return out


def remap_rows(rows: Sequence[bytes], cols: Sequence[int | None], width: int) -> list[bytes]:
    """Rows hashed under another interner's columns, as rows of ours: their column ``j`` is our
    column ``cols[j]`` (None: a name we track no column for, dropped); ours are ``width`` wide."""
    keep = [j for j, c in enumerate(cols) if c is not None]
    dest = np.array([cols[j] for j in keep], dtype=np.int64)
    out = []
    for row in rows:
        theirs = np.full(len(cols), MISSING, ROW_DTYPE)
        theirs[: len(row) // 8] = np.frombuffer(row, ROW_DTYPE)
        ours = np.full(width, MISSING, ROW_DTYPE)
        ours[dest] = theirs[keep]
        out.append(ours.tobytes())
    return out


_MISSING_BYTES = np.array([MISSING], ROW_DTYPE).tobytes()


def blank_column(rows: Sequence[bytes], col: int) -> list[bytes]:
    """Rows with column ``col`` read as missing (a reclaimed column's old values)."""
    at = 8 * col
    return [r[:at] + _MISSING_BYTES + r[at + 8 :] if len(r) > at else r for r in rows]


def column_value(row: bytes, col: int) -> int:
    """The hash in column ``col`` of a row (MISSING past its end)."""
    at = 8 * col
    return int.from_bytes(row[at : at + 8], "little") if len(row) > at else MISSING


@dataclass
class WireBatch:
    """A decoded batch in columns, for the way back: written to shared memory by :func:`write_wire`
    (pickling only the small parts) and rebuilt into events by :func:`from_wire`. ``ids`` are those
    of the impressions and clicks, in order (a labelled example has none)."""

    kinds: bytes
    ids: list[str]
    ts: list[int]
    labels: list[int]
    rows: bytes
    width: int
    bad: list[tuple[int, str, str]]
    journal: list[tuple[Any, ...]] = field(default_factory=list)
    # with admit_new off: (event index, name, hash), sorted, the values of names without a column,
    # and per column the index of the batch's last event holding a value (-1: none)
    extras: list[tuple[int, str, int]] = field(default_factory=list)
    last_seen: list[int] = field(default_factory=list)


def from_wire(batch: WireBatch) -> tuple[list[Event], list[tuple[int, EventError]]]:
    step = 8 * batch.width
    blob = batch.rows
    events: list[Event] = []
    append = events.append
    r = 0
    ids = iter(batch.ids)
    labels = iter(batch.labels)
    for kind, t in zip(batch.kinds, batch.ts, strict=True):
        if kind == _IMP:
            append(Impression(next(ids), t, blob[r : r + step]))  # type: ignore[arg-type]
            r += step
        elif kind == _CLICK:
            append(Click(next(ids), t))
        else:
            append(Labeled(t, blob[r : r + step], next(labels)))  # type: ignore[arg-type]
            r += step
    return events, [(i, EventError(reason, detail)) for i, reason, detail in batch.bad]


# ------------------------------------------------------------------ shared memory between the two
def anonymous_file(name: str) -> int:
    """A file descriptor of an anonymous file: a memfd where there is one (Linux), else an unlinked
    temporary file. The kernel frees it when the last process holding it closes it or dies."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name)
    with tempfile.TemporaryFile(prefix=name) as f:
        return os.dup(f.fileno())


class Region:
    """A growable buffer both processes map: the daemon creates the file, either side grows it.

    A writer :meth:`reserve` s room (growing the file, at least doubling it); a reader is told
    how much a message holds and maps the file again if that is past its mapping.
    """

    INITIAL = 1 << 20

    def __init__(self, fd: int) -> None:
        self.fd = fd
        if os.fstat(fd).st_size == 0:
            os.ftruncate(fd, self.INITIAL)
        self.size = 0
        self._map: mmap.mmap | None = None
        self._remap()

    def _remap(self) -> None:
        if self._map is not None:
            self._map.close()
        self.size = os.fstat(self.fd).st_size
        self._map = mmap.mmap(self.fd, self.size)

    def reserve(self, size: int) -> None:
        if size > self.size:
            os.ftruncate(self.fd, max(size, 2 * self.size))
            self._remap()

    def write(self, at: int, data: bytes) -> int:
        """Write ``data`` at ``at`` (room reserved); returns the offset just past it."""
        assert self._map is not None
        self._map[at : at + len(data)] = data
        return at + len(data)

    def read(self, at: int, n: int) -> bytes:
        if at + n > self.size:
            self._remap()
        assert self._map is not None
        return self._map[at : at + n]

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        with contextlib.suppress(OSError):
            os.close(self.fd)


def write_values(raws: Sequence[bytes | None], region: Region) -> int:
    """Record values into ``region``: their lengths (int64, -1 for a tombstone), then their bytes;
    returns the bytes' length. Two copies of the batch in all (no pickling of 10 000 objects)."""
    try:
        lengths = np.fromiter(map(len, raws), np.int64, len(raws))  # type: ignore[arg-type]
        blob = b"".join(raws)  # type: ignore[arg-type]
    except TypeError:  # a tombstone (None) among them
        lengths = np.array([-1 if r is None else len(r) for r in raws], np.int64)
        blob = b"".join(r for r in raws if r is not None)
    region.reserve(8 * len(raws) + len(blob))
    region.write(region.write(0, lengths.tobytes()), blob)
    return len(blob)


def read_values(region: Region, n: int, blob_len: int) -> list[bytes | None]:
    lengths = np.frombuffer(region.read(0, 8 * n), np.int64).tolist()
    blob = region.read(8 * n, blob_len)
    out: list[bytes | None] = []
    at = 0
    for size in lengths:
        if size < 0:
            out.append(None)
        else:
            out.append(blob[at : at + size])
            at += size
    return out


def write_wire(batch: WireBatch, region: Region) -> tuple[Any, ...]:
    """Put a batch's columns into ``region``; returns the small rest, to send: ``(events, width,
    rows bytes, labels, ids text bytes or the ids themselves, bad, journal)``."""
    n = len(batch.kinds)
    text = "\0".join(batch.ids).encode("utf-8", "surrogatepass")
    ids_inline: list[str] | None = None
    if text.count(b"\0") != max(len(batch.ids) - 1, 0):  # an id with a NUL in it: send them as they are
        ids_inline, text = batch.ids, b""
    region.reserve(len(batch.rows) + 9 * n + len(batch.labels) + len(text))
    at = region.write(0, batch.rows)
    at = region.write(at, np.array(batch.ts, np.int64).tobytes())
    at = region.write(at, batch.kinds)
    at = region.write(at, bytes(batch.labels))
    region.write(at, text)
    return (n, batch.width, len(batch.rows), len(batch.labels), len(batch.ids),
            len(text) if ids_inline is None else ids_inline, batch.bad, batch.journal, batch.extras,
            batch.last_seen)


def read_wire(meta: tuple[Any, ...], region: Region) -> WireBatch:
    n, width, rows_len, n_labels, n_ids, ids, bad, journal, extras, last_seen = meta
    rows = region.read(0, rows_len)
    at = rows_len
    ts = np.frombuffer(region.read(at, 8 * n), np.int64).tolist()
    at += 8 * n
    kinds = region.read(at, n)
    at += n
    labels = list(region.read(at, n_labels))
    at += n_labels
    if isinstance(ids, int):
        ids = region.read(at, ids).decode("utf-8", "surrogatepass").split("\0") if n_ids else []
    return WireBatch(kinds, ids, ts, labels, rows, width, bad, journal, extras, last_seen)


# ------------------------------------------------------------------ the worker process
_BATCH = b"B"  # + struct _SLOT: the batch's values are in that slot's input region
_SLOT = struct.Struct("<IQQ")  # slot, number of values, bytes of values


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the child
    """The worker's main: the limits, the interner's snapshot and the shared regions' files first,
    then a batch at a time: its values from the slot's input region, its result into the slot's
    output region and a small message back, in order. ``None`` (or the pipe closing) stops it.

    Messages both ways are small (the data is in the regions), so one thread is enough: a
    daemon that sends while the worker replies never waits on a full pipe.
    """
    limits, interner_snapshot, in_fds, out_fds, gc_threshold = conn.recv()
    if gc_threshold is not None:
        gc.set_threshold(*gc_threshold)
    interner = Interner.restore(interner_snapshot)
    interner.journal = []
    inputs, outputs = [Region(fd) for fd in in_fds], [Region(fd) for fd in out_fds]
    while True:
        try:
            head = conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(0)  # the daemon is gone (even killed): so are we
        if head[:1] == _BATCH:
            slot, n, blob_len = _SLOT.unpack_from(head, 1)
            try:
                batch = decode_wire(read_values(inputs[slot], n, blob_len), limits, interner)
                batch.journal = interner.take_journal()
                reply: tuple[Any, ...] = ("ok", write_wire(batch, outputs[slot]))
            except Exception as exc:  # a bug, not bad data (decode_many never raises on data)
                reply = ("error", f"{type(exc).__name__}: {exc}")
            try:
                conn.send(reply)
            except OSError:
                os._exit(0)
            if reply[0] != "ok":
                return
            continue
        item = pickle.loads(head)
        if item is None:
            return
        if item[0] == "release":  # ("release", col): the daemon reclaimed that column
            interner.release(item[1])
        else:
            interner.admit(item[1])  # ("admit", names): the daemon gave these names columns
        interner.take_journal()


class DecodeWorkerError(RuntimeError):
    """The worker process failed or died; the batches in flight must be decoded in process."""


class DecodeWorker:
    """One decoding process: :meth:`submit` batches, :meth:`collect` them in order.

    The child is ``python -m connectors.decode_worker`` started with :mod:`subprocess` (not
    :mod:`multiprocessing`: the daemon has threads, so it must not fork, and spawning would
    import the caller's ``__main__`` again). It ignores SIGINT and SIGTERM, which are the
    daemon's to handle, and exits when its socket closes, so it never outlives the daemon.

    The data goes through shared memory, one input and one output :class:`Region` per batch
    that may be in flight, and only small messages through the socket: passing megabytes through
    a socket cost ~2 µs an event in the poll loop alone (measured), a copy into a mapping ~0.2.
    """

    max_in_flight = 4  # batches submitted and not collected; submit() refuses more

    def __init__(self, limits: Limits, interner: Interner,
                 gc_threshold: tuple[int, int, int] | None = None) -> None:
        """``gc_threshold``: the collector's thresholds in the worker (None: CPython's); it
        allocates an object per feature value as the poll loop does."""
        self.interner = interner
        ours, theirs = socket.socketpair()
        in_fds = [anonymous_file(f"featsieve-decode-in-{k}") for k in range(self.max_in_flight)]
        out_fds = [anonymous_file(f"featsieve-decode-out-{k}") for k in range(self.max_in_flight)]
        self._inputs, self._outputs = [Region(fd) for fd in in_fds], [Region(fd) for fd in out_fds]
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "connectors.decode_worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno(), *in_fds, *out_fds], env=env, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((limits, interner.snapshot(), in_fds, out_fds, gc_threshold))
        self.in_flight = 0
        self._submitted = 0  # batches ever submitted: batch k uses slot k % max_in_flight

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, raws: list[bytes | None]) -> None:
        if self.in_flight >= self.max_in_flight:
            raise RuntimeError(f"{self.in_flight} batches in flight: collect one first")
        slot = self._submitted % self.max_in_flight
        blob_len = write_values(raws, self._inputs[slot])
        try:
            self._conn.send_bytes(_BATCH + _SLOT.pack(slot, len(raws), blob_len))
        except (BrokenPipeError, OSError) as exc:
            raise DecodeWorkerError(f"decode worker gone ({exc})") from exc
        self.in_flight += 1
        self._submitted += 1

    def admit(self, names: list[str]) -> None:
        """Give ``names`` columns in the replica too, after the batches already submitted. The
        daemon's interner admits them first, in the same order, so both give the same columns;
        batches in flight were hashed without them and report their values in ``extras``."""
        try:
            self._conn.send(("admit", list(names)))
        except (BrokenPipeError, OSError) as exc:
            raise DecodeWorkerError(f"decode worker gone ({exc})") from exc

    def release(self, col: int) -> None:
        """Reclaim column ``col`` in the replica too, after the batches already submitted (their
        rows still hold the old field's values there: the daemon reads them as that field's)."""
        try:
            self._conn.send(("release", int(col)))
        except (BrokenPipeError, OSError) as exc:
            raise DecodeWorkerError(f"decode worker gone ({exc})") from exc

    def ready(self) -> bool:
        """Has the oldest batch in flight come back (so that :meth:`collect` does not wait)?"""
        try:
            return self.in_flight > 0 and self._conn.poll(0)
        except (EOFError, OSError):
            return True  # collect() reports what happened to the worker

    def collect(self) -> tuple[list[Event], list[tuple[int, EventError]], int]:
        """The oldest batch in flight, decoded; the daemon's interner is advanced to match it."""
        events, bad, batch = self.collect_wire()
        return events, bad, batch.width

    def collect_wire(self) -> tuple[list[Event], list[tuple[int, EventError]], WireBatch]:
        """:meth:`collect`, with the batch itself (its ``extras``: values of names without a column)."""
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise DecodeWorkerError(f"decode worker died (exit code {self._proc.poll()})") from exc
        if status != "ok":
            raise DecodeWorkerError(f"decode worker failed: {payload}")
        slot = (self._submitted - self.in_flight) % self.max_in_flight
        self.in_flight -= 1
        batch = read_wire(payload, self._outputs[slot])
        self.interner.replay(batch.journal)
        events, bad = from_wire(batch)
        return events, bad, batch

    def close(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout_s)
        self._conn.close()
        for region in (*self._inputs, *self._outputs):
            region.close()


def main(argv: list[str]) -> int:  # pragma: no cover - runs in the child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon handles signals and stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(Connection(int(argv[1])))
    return 0


if __name__ == "__main__":  # pragma: no cover
    # run the imported module, not this __main__ copy: WireBatch must pickle by its real name
    from connectors import decode_worker

    sys.exit(decode_worker.main(sys.argv))
