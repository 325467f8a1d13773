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
* the worker runs :func:`decode_rows` on a replica of that interner, started
  from its snapshot, and ships the result in columns (:class:`WireBatch`)
  together with the interner's journal; :meth:`DecodeWorker.collect` replays the
  journal into the daemon's interner before it rebuilds the events, so the
  daemon's interner is always the replica's state as of the batch in hand.

Batches come back in the order they were submitted. If the worker dies, the
caller re-decodes what was in flight with :func:`decode_rows` and carries on in
process (nothing submitted is lost: the records stay with the caller until
their batch is applied).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
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
ROW_DTYPE = np.dtype("<u8")


CHUNK = 1000  # records decoded and hashed together (see decode_rows)
_MISSING_CELL = MISSING.to_bytes(8, "little")


def decode_rows(raws: Sequence[bytes | None], limits: Limits, interner: Interner
                ) -> tuple[list[Event], list[tuple[int, EventError]], int]:
    """Decode and hash a batch: ``(events, bad, width)``; ``width`` columns per row.

    A poll's batch (up to 10 000 records) is taken :data:`CHUNK` records at a time: hashing
    walks the decoded values a column at a time, and a chunk's objects (~5 kB an event) are
    still in the CPU's cache from decoding, where a whole batch's are not (measured: ~20% less
    time per event than one pass over 10 000).
    """
    if len(raws) <= CHUNK:
        return _decode_chunk(raws, limits, interner)
    events: list[Event] = []
    bad: list[tuple[int, EventError]] = []
    first_width = width = len(interner.fields)
    for start in range(0, len(raws), CHUNK):
        chunk_events, chunk_bad, width = _decode_chunk(raws[start : start + CHUNK], limits, interner)
        events += chunk_events
        bad += [(start + i, err) for i, err in chunk_bad]
    if width != first_width:  # a chunk admitted new fields: earlier rows hold them as missing
        step = 8 * width
        for ev in events:
            row = ev.features
            if row.__class__ is bytes and len(row) < step:  # type: ignore[arg-type]
                ev.features = row + _MISSING_CELL * ((step - len(row)) // 8)  # type: ignore[assignment,operator]
    return events, bad, width


def _decode_chunk(raws: Sequence[bytes | None], limits: Limits, interner: Interner
                  ) -> tuple[list[Event], list[tuple[int, EventError]], int]:
    events, bad = decode_many(raws, limits)
    with_features = [ev for ev in events if ev.__class__ is not Click]
    for ev in events:
        if ev.__class__ is Click:
            ev.features = None
    width = len(interner.fields)
    if with_features:
        encoded = interner.encode([ev.features for ev in with_features])  # type: ignore[misc]
        width = encoded.hashes.shape[1]
        for ev, row in zip(with_features, hash_rows(encoded.hashes), strict=True):
            ev.features = row  # type: ignore[assignment]
    return events, bad, width


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


@dataclass
class WireBatch:
    """A decoded batch in columns, for the pipe: cheap to pickle, rebuilt by :func:`from_wire`."""

    kinds: bytes
    ids: list[str | None]
    ts: list[int]
    labels: list[int]
    rows: bytes
    width: int
    bad: list[tuple[int, str, str]]
    journal: list[tuple[Any, ...]] = field(default_factory=list)


def to_wire(events: list[Event], bad: list[tuple[int, EventError]], width: int,
            journal: list[tuple[Any, ...]]) -> WireBatch:
    kinds = bytearray(len(events))
    ids: list[str | None] = []
    ts: list[int] = []
    labels: list[int] = []
    rows: list[bytes] = []
    for k, ev in enumerate(events):
        ts.append(ev.ts)
        if ev.__class__ is Impression:
            ids.append(ev.id)  # type: ignore[union-attr]
            rows.append(ev.features)  # type: ignore[arg-type]
        elif ev.__class__ is Click:
            kinds[k] = _CLICK
            ids.append(ev.id)  # type: ignore[union-attr]
        else:
            kinds[k] = _LABELED
            ids.append(None)
            rows.append(ev.features)  # type: ignore[arg-type]
            labels.append(ev.label)  # type: ignore[union-attr]
    return WireBatch(bytes(kinds), ids, ts, labels, b"".join(rows), width,
                     [(i, e.reason, e.detail) for i, e in bad], journal)


def from_wire(batch: WireBatch) -> tuple[list[Event], list[tuple[int, EventError]]]:
    step = 8 * batch.width
    blob = batch.rows
    events: list[Event] = []
    append = events.append
    r = 0
    labels = iter(batch.labels)
    for kind, ident, t in zip(batch.kinds, batch.ids, batch.ts, strict=True):
        if kind == _IMP:
            append(Impression(ident, t, blob[r : r + step]))  # type: ignore[arg-type]
            r += step
        elif kind == _CLICK:
            append(Click(ident, t))  # type: ignore[arg-type]
        else:
            append(Labeled(t, blob[r : r + step], next(labels)))  # type: ignore[arg-type]
            r += step
    return events, [(i, EventError(reason, detail)) for i, reason, detail in batch.bad]


# ------------------------------------------------------------------ the worker process
_BATCH = b"B"  # a batch of record values: this header (lengths, -1 for None), then one blob


def _pack_values(raws: list[bytes | None]) -> tuple[bytes, bytes]:
    """Record values as two buffers (no pickling of 10 000 small objects)."""
    try:
        lengths = np.fromiter(map(len, raws), np.int64, len(raws))  # type: ignore[arg-type]
        blob = b"".join(raws)  # type: ignore[arg-type]
    except TypeError:  # a tombstone (None) among them
        lengths = np.array([-1 if r is None else len(r) for r in raws], np.int64)
        blob = b"".join(r for r in raws if r is not None)
    return _BATCH + lengths.tobytes(), blob


def _unpack_values(head: bytes, blob: bytes) -> list[bytes | None]:
    lengths = np.frombuffer(head, np.int64, offset=len(_BATCH)).tolist()
    out: list[bytes | None] = []
    at = 0
    for n in lengths:
        if n < 0:
            out.append(None)
        else:
            out.append(blob[at : at + n])
            at += n
    return out


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the child
    """The worker's main: the limits and the interner's snapshot first, then record batches in
    and :class:`WireBatch` es out, in order.

    A receiving and a sending thread keep the pipe moving while a batch is decoded, so
    neither side waits for the other's pickling. ``None`` (or the pipe closing) stops it.
    """
    limits, interner_snapshot = conn.recv()
    interner = Interner.restore(interner_snapshot)
    interner.journal = []
    # unbounded: the daemon bounds what it has in flight (DecodeWorker.max_in_flight), and the
    # receiver must always read, or a daemon blocked in send and a worker blocked in put would
    # wait for each other
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def receive() -> None:
        try:
            while True:
                head = conn.recv_bytes()
                if head[:1] == _BATCH:
                    inbox.put(_unpack_values(head, conn.recv_bytes()))
                    continue
                item = pickle.loads(head)
                inbox.put(item)
                if item is None:
                    return
        except (EOFError, OSError):
            os._exit(0)  # the daemon is gone (even killed): so are we

    def send() -> None:
        while True:
            item = outbox.get()
            if item is None:
                return
            try:
                conn.send(item)
            except OSError:
                os._exit(0)

    threading.Thread(target=receive, name="decode-recv", daemon=True).start()
    sender = threading.Thread(target=send, name="decode-send", daemon=True)
    sender.start()
    while True:
        raws = inbox.get()
        if raws is None:
            break
        if raws.__class__ is tuple:  # ("admit", names): the daemon gave these names columns
            interner.admit(raws[1])
            interner.take_journal()
            continue
        try:
            events, bad, width = decode_rows(raws, limits, interner)
            outbox.put(("ok", to_wire(events, bad, width, interner.take_journal())))
        except Exception as exc:  # a bug, not bad data (decode_many never raises on data)
            outbox.put(("error", f"{type(exc).__name__}: {exc}"))
            break
    outbox.put(None)
    sender.join(10)


class DecodeWorkerError(RuntimeError):
    """The worker process failed or died; the batches in flight must be decoded in process."""


class DecodeWorker:
    """One decoding process fed through a socket pair; :meth:`submit` batches, :meth:`collect`
    them in order.

    The child is ``python -m connectors.decode_worker`` started with :mod:`subprocess` (not
    :mod:`multiprocessing`: the daemon has threads, so it must not fork, and spawning would
    import the caller's ``__main__`` again). It ignores SIGINT and SIGTERM, which are the
    daemon's to handle, and exits when its socket closes, so it never outlives the daemon.
    """

    def __init__(self, limits: Limits, interner: Interner) -> None:
        self.interner = interner
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "connectors.decode_worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((limits, interner.snapshot()))
        self.in_flight = 0

    max_in_flight = 4  # batches submitted and not collected; submit() refuses more

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, raws: list[bytes | None]) -> None:
        if self.in_flight >= self.max_in_flight:
            raise RuntimeError(f"{self.in_flight} batches in flight: collect one first")
        try:
            head, blob = _pack_values(raws)
            self._conn.send_bytes(head)
            self._conn.send_bytes(blob)
        except (BrokenPipeError, OSError) as exc:
            raise DecodeWorkerError(f"decode worker gone ({exc})") from exc
        self.in_flight += 1

    def admit(self, names: list[str]) -> None:
        """Give ``names`` columns in the replica too, after the batches already submitted (the
        daemon's interner must admit them at the same point: call this with nothing in flight)."""
        try:
            self._conn.send(("admit", list(names)))
        except (BrokenPipeError, OSError) as exc:
            raise DecodeWorkerError(f"decode worker gone ({exc})") from exc

    def collect(self) -> tuple[list[Event], list[tuple[int, EventError]], int]:
        """The oldest batch in flight, decoded; the daemon's interner is advanced to match it."""
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise DecodeWorkerError(f"decode worker died (exit code {self._proc.poll()})") from exc
        if status != "ok":
            raise DecodeWorkerError(f"decode worker failed: {payload}")
        self.in_flight -= 1
        self.interner.replay(payload.journal)
        events, bad = from_wire(payload)
        return events, bad, payload.width

    def close(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout_s)
        self._conn.close()


def main(argv: list[str]) -> int:  # pragma: no cover - runs in the child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon handles signals and stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(Connection(int(argv[1])))
    return 0


if __name__ == "__main__":  # pragma: no cover
    # run the imported module, not this __main__ copy: WireBatch must pickle by its real name
    from connectors import decode_worker

    sys.exit(decode_worker.main(sys.argv))
