"""Time order for ``featsieve evaluate``: spill encoded examples to disk in sorted chunks, merge them back.

A joined JSONL file yields examples when their label is known, not in event
time: a positive when its click arrives, a negative when the attribution
window passes (with 1000 impressions/s and a 30-minute window, every negative
of a 100 000-impression file comes out at the end). A prequential replay
needs event-time order, so examples are interned (value hashes, see
models/interning.py), buffered in chunks of ``chunk_rows``, each chunk sorted
by time (stable: ties keep arrival order) and saved to a temporary directory;
:meth:`TimeOrderedSpill.batches` merges the chunks back in batches.

Memory: one chunk while writing; while reading, one block of ``block_rows``
per chunk plus one output batch. The disk holds 8 bytes per value plus 9 per
example. Order is total and deterministic: (time, arrival sequence).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from models.interning import MISSING


class TimeOrderedSpill:
    """Append batches of (hashes, labels, ts); read them back sorted by (ts, arrival)."""

    def __init__(self, directory: Path, chunk_rows: int = 65_536) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.directory = directory
        self.chunk_rows = chunk_rows
        self.rows = 0
        self.width = 0
        self._chunks: list[tuple[Path, int, int]] = []  # (stem, rows, width)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def append(self, hashes: np.ndarray, labels: np.ndarray, ts: np.ndarray) -> None:
        if not len(labels):
            return
        self._pending.append((hashes, labels.astype(np.int8), ts.astype(np.int64)))
        self._pending_rows += len(labels)
        self.rows += len(labels)
        self.width = max(self.width, hashes.shape[1])
        if self._pending_rows >= self.chunk_rows:
            self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        width = max(h.shape[1] for h, _, _ in self._pending)
        hashes = np.concatenate([_pad(h, width) for h, _, _ in self._pending])
        labels = np.concatenate([y for _, y, _ in self._pending])
        ts = np.concatenate([t for _, _, t in self._pending])
        order = np.argsort(ts, kind="stable")
        stem = self.directory / f"chunk{len(self._chunks):06d}"
        np.save(stem.with_suffix(".h.npy"), hashes[order])
        np.save(stem.with_suffix(".y.npy"), labels[order])
        np.save(stem.with_suffix(".t.npy"), ts[order])
        self._chunks.append((stem, len(labels), width))
        self._pending, self._pending_rows = [], 0

    def batches(self, batch_rows: int, block_rows: int = 8192,
                max_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(hashes (n, width), labels, ts) in time order, ``batch_rows`` at a time, at most ``max_rows``."""
        self._write()
        width = self.width
        sources = []
        for stem, _, w in self._chunks:
            sources.append((np.load(stem.with_suffix(".h.npy"), mmap_mode="r"),
                            np.load(stem.with_suffix(".y.npy"), mmap_mode="r"),
                            np.load(stem.with_suffix(".t.npy"), mmap_mode="r"), w))
        cursor = [0] * len(sources)
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        out_rows = 0
        emitted = 0
        limit = self.rows if max_rows is None else min(max_rows, self.rows)
        while emitted < limit:
            blocks = []
            threshold = np.iinfo(np.int64).max
            for i, (_, _, t, _) in enumerate(sources):
                lo = cursor[i]
                hi = min(lo + block_rows, len(t))
                blocks.append((lo, hi))
                if lo < hi and hi < len(t):  # a chunk with rows beyond its block bounds what is safe
                    threshold = min(threshold, int(t[hi - 1]))
            parts = []
            for i, (lo, hi) in enumerate(blocks):
                if lo >= hi:
                    continue
                h, y, t, w = sources[i]
                take = lo + int(np.searchsorted(t[lo:hi], threshold, side="right"))
                if take > lo:
                    parts.append((i, _pad(np.asarray(h[lo:take]), width), np.asarray(y[lo:take]),
                                  np.asarray(t[lo:take])))
                    cursor[i] = take
            hashes = np.concatenate([p[1] for p in parts])
            labels = np.concatenate([p[2] for p in parts])
            ts = np.concatenate([p[3] for p in parts])
            chunk_of = np.concatenate([np.full(len(p[2]), p[0], np.int64) for p in parts])
            # chunks hold consecutive arrivals, so (ts, chunk, position) is (ts, arrival)
            order = np.lexsort((chunk_of, ts))
            merged = (hashes[order], labels[order], ts[order])
            out.append(merged)
            out_rows += len(labels)
            while out_rows >= batch_rows or (out_rows and emitted + out_rows >= limit) or \
                    (out_rows and all(c >= len(s[2]) for c, s in zip(cursor, sources, strict=True))):
                h_all = np.concatenate([o[0] for o in out])
                y_all = np.concatenate([o[1] for o in out])
                t_all = np.concatenate([o[2] for o in out])
                n = min(batch_rows, len(y_all), limit - emitted)
                yield h_all[:n], y_all[:n], t_all[:n]
                emitted += n
                if emitted >= limit:
                    return
                out = [(h_all[n:], y_all[n:], t_all[n:])]
                out_rows = len(y_all) - n


def _pad(hashes: np.ndarray, width: int) -> np.ndarray:
    if hashes.shape[1] == width:
        return hashes
    out = np.full((hashes.shape[0], width), np.uint64(MISSING), dtype=np.uint64)
    out[:, : hashes.shape[1]] = hashes
    return out
