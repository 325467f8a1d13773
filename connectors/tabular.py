"""Offline input for ``featsieve score`` (and anything else that replays a file): CSV or JSONL, streamed.

* **CSV** with a header and a 0/1 label column (``--label``). Cells are
  strings; an empty cell is a missing value. Rows whose label is not one of
  ``0 1 true false`` are skipped and counted (``bad_label``).
* **JSONL** of schema-v1 events (``.jsonl``, ``.ndjson``, ``.json``):
  impressions and clicks are joined by event time over the attribution
  window exactly as the daemon does (connectors/join.py), impressions still
  open at the end of the file become negatives; ``labeled`` events are used
  as they are. Lines that do not decode are skipped and counted by reason.

Both are read in batches of ``batch_rows``: memory does not grow with the
file. :func:`score_file` feeds the batches to the same MI core as the daemon
(``models/mi.py``), with one evidence block (nothing expires in a file).
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from connectors.codec import Limits, decode_many
from connectors.join import JoinBuffer
from models.interning import (
    MISSING,
    EncodedBatch,
    Interner,
    hash_column,
    hash_utf8_cells,
    value_hash,
)
from models.mi import MIConfig, MIState

_TRUE = {"1", "true", "True", "TRUE"}
_FALSE = {"0", "false", "False", "FALSE"}


@dataclass
class Batch:
    features: list[dict[str, Any]]
    labels: np.ndarray  # int8
    ts: np.ndarray  # int64, epoch ms (the row number for CSV)


def _open(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by the caller's with


def is_csv(path: str) -> bool:
    return path.removesuffix(".gz").endswith(".csv")


def read_batches(path: str, label: str | None = None, batch_rows: int = 8192, window_ms: int = 1_800_000,
                 skipped: Counter[str] | None = None) -> Iterator[Batch]:
    """Labelled examples of a CSV or JSONL file, in batches, in file order."""
    skipped = Counter() if skipped is None else skipped
    if is_csv(path):
        if not label:
            raise ValueError("a CSV input needs the name of its 0/1 label column")
        yield from _csv_batches(path, label, batch_rows, skipped)
    else:
        yield from _jsonl_batches(path, batch_rows, window_ms, skipped)


def _csv_batches(path: str, label: str, batch_rows: int, skipped: Counter[str]) -> Iterator[Batch]:
    with _open(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        if label not in header:
            raise ValueError(f"label column {label!r} is not in {path}; columns: {', '.join(header)}")
        li = header.index(label)
        names = [(i, n) for i, n in enumerate(header) if i != li]
        row_no = 0
        feats: list[dict[str, Any]] = []
        labels: list[int] = []
        rows: list[int] = []
        for row in reader:
            row_no += 1
            if len(row) != len(header):
                skipped["wrong_column_count"] += 1
                continue
            cell = row[li].strip()
            if cell in _TRUE:
                labels.append(1)
            elif cell in _FALSE:
                labels.append(0)
            else:
                skipped["bad_label"] += 1
                continue
            feats.append({n: row[i] for i, n in names if row[i] != ""})
            rows.append(row_no)
            if len(feats) >= batch_rows:
                yield Batch(feats, np.array(labels, np.int8), np.array(rows, np.int64))
                feats, labels, rows = [], [], []
        if feats:
            yield Batch(feats, np.array(labels, np.int8), np.array(rows, np.int64))


_CHUNK_BYTES = 1 << 22
_LABEL_HASHES = {value_hash(v): 1 for v in _TRUE} | {value_hash(v): 0 for v in _FALSE}


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``tail``: hands bytes already read back to a text reader."""

    def __init__(self, head: bytes, tail: Any) -> None:
        self._head, self._tail = head, tail

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._tail.read(len(b))
        b[: len(data)] = data
        return len(data)


def _open_bytes(path: str) -> Any:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # noqa: SIM115


def encoded_batches(path: str, label: str | None, interner: Interner, batch_rows: int = 8192,
                    window_ms: int = 1_800_000, skipped: Counter[str] | None = None,
                    ) -> Iterator[tuple[EncodedBatch, np.ndarray, np.ndarray]]:
    """``(hashes, labels, ts)`` of :func:`read_batches`' examples, hashed with ``interner``.

    Same rows, same order, same skips and the same hashes as encoding :func:`read_batches`'
    feature dicts; a CSV is hashed straight from its bytes, a column at a time, as long as
    it has no quote and no carriage return (from the first one on, the csv module reads it).
    """
    skipped = Counter() if skipped is None else skipped
    if not is_csv(path):
        for b in read_batches(path, label, batch_rows, window_ms, skipped):
            yield interner.encode(b.features), b.labels, b.ts
        return
    if not label:
        raise ValueError("a CSV input needs the name of its 0/1 label column")
    with _open_bytes(path) as raw:
        first = raw.readline()
        header = next(csv.reader([first.decode("utf-8")]), None)
        if header is None:
            return
        if label not in header:
            raise ValueError(f"label column {label!r} is not in {path}; columns: {', '.join(header)}")
        reader = _CsvBytes(header, header.index(label), interner, batch_rows, skipped)
        pending = b""
        while True:
            data = raw.read(_CHUNK_BYTES)
            block = pending + data
            end = len(block) if not data else block.rfind(b"\n") + 1
            if not data and block and not block.endswith(b"\n"):
                block += b"\n"
                end = len(block)
            if b'"' in block or b"\r" in block:
                text = io.TextIOWrapper(io.BufferedReader(_Prefixed(block, raw)), encoding="utf-8", newline="")
                yield from reader.rows_of(csv.reader(text))
                return
            yield from reader.lines_of(block[:end])
            pending = block[end:]
            if not data:
                break


class _CsvBytes:
    """The CSV rows of :func:`encoded_batches`, in batches of ``batch_rows`` examples."""

    def __init__(self, header: list[str], li: int, interner: Interner, batch_rows: int,
                 skipped: Counter[str]) -> None:
        self.header = header
        self.width = len(header)
        self.li = li
        self.interner = interner
        self.batch_rows = batch_rows
        self.skipped = skipped
        self.row_no = 0

    def lines_of(self, block: bytes) -> Iterator[tuple[EncodedBatch, np.ndarray, np.ndarray]]:
        """Rows of ``block`` (whole lines, no quotes, no CR): cells found with NumPy, hashed by column."""
        if not block:
            return
        if not block.isascii():
            block.decode("utf-8")  # the same UnicodeDecodeError a text reader would raise
        buf = np.frombuffer(block, np.uint8)
        ends = np.flatnonzero(buf == 10)
        starts = np.concatenate([[0], ends[:-1] + 1])
        commas = np.flatnonzero(buf == 44)
        first_comma = np.searchsorted(commas, starts)
        per_line = np.searchsorted(commas, ends) - first_comma
        numbers = self.row_no + 1 + np.arange(len(ends))
        self.row_no += len(ends)
        ok = (per_line == self.width - 1) & (ends > starts)
        if not ok.all():
            self.skipped["wrong_column_count"] += int((~ok).sum())
        starts, ends, numbers, first_comma = starts[ok], ends[ok], numbers[ok], first_comma[ok]
        cuts = commas[first_comma[:, None] + np.arange(self.width - 1)]  # (rows, width - 1)
        cell_start = np.concatenate([starts[:, None], cuts + 1], axis=1)
        cell_len = np.concatenate([cuts, ends[:, None]], axis=1) - cell_start
        labels, good = self._labels(block, buf, cell_start[:, self.li], cell_len[:, self.li])
        cell_start, cell_len, numbers = cell_start[good], cell_len[good], numbers[good]
        hashed, names = [], []
        for j, name in enumerate(self.header):
            st, ln = cell_start[:, j], cell_len[:, j]
            if j == self.li or not ln.any():  # a field only gets a column once it has a value
                continue
            names.append(name)
            h = hash_utf8_cells(buf, st, ln)
            h[ln == 0] = MISSING  # an empty cell is a missing value
            hashed.append((h, _cell_reader(block, st, ln)))
        yield from self._emit(names, hashed, labels, numbers)

    def _labels(self, block: bytes, buf: np.ndarray, st: np.ndarray, ln: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = hash_utf8_cells(buf, st, ln)
        labels = np.full(len(h), -1, np.int8)
        for value_h, y in _LABEL_HASHES.items():
            labels[h == value_h] = y
        for i in np.flatnonzero(labels < 0).tolist():  # spaces around, or not a label at all
            cell = block[st[i] : st[i] + ln[i]].decode("utf-8").strip()
            labels[i] = 1 if cell in _TRUE else 0 if cell in _FALSE else -1
        good = labels >= 0
        if not good.all():
            self.skipped["bad_label"] += int((~good).sum())
        return labels[good], good

    def rows_of(self, rows: Iterator[list[str]]) -> Iterator[tuple[EncodedBatch, np.ndarray, np.ndarray]]:
        """Rows parsed by the csv module (quoted input): columns built from the rows, hashed by column."""
        table: list[list[str]] = []
        labels: list[int] = []
        numbers: list[int] = []
        for row in rows:
            self.row_no += 1
            if len(row) != self.width:
                self.skipped["wrong_column_count"] += 1
                continue
            cell = row[self.li].strip()
            if cell in _TRUE:
                labels.append(1)
            elif cell in _FALSE:
                labels.append(0)
            else:
                self.skipped["bad_label"] += 1
                continue
            table.append(row)
            numbers.append(self.row_no)
            if len(table) >= self.batch_rows:
                yield from self._emit_rows(table, labels, numbers)
                table, labels, numbers = [], [], []
        if table:
            yield from self._emit_rows(table, labels, numbers)

    def _emit_rows(self, table: list[list[str]], labels: list[int], numbers: list[int],
                   ) -> Iterator[tuple[EncodedBatch, np.ndarray, np.ndarray]]:
        hashed, names = [], []
        for j, col in enumerate(zip(*table, strict=True)):
            values = [v if v != "" else None for v in col]
            if j == self.li or values.count(None) == len(values):
                continue
            names.append(self.header[j])
            hashed.append((hash_column(values), values.__getitem__))
        yield from self._emit(names, hashed, np.array(labels, np.int8), np.array(numbers, np.int64))

    def _emit(self, names: list[str], hashed: list[tuple[np.ndarray, Callable[[int], Any]]],
              labels: np.ndarray, numbers: np.ndarray) -> Iterator[tuple[EncodedBatch, np.ndarray, np.ndarray]]:
        # At most batch_rows rows a batch; a block's last batch may be shorter (counts do not care).
        for lo in range(0, len(labels), self.batch_rows):
            hi = min(lo + self.batch_rows, len(labels))
            part = [(h[lo:hi], _shifted(get, lo)) for h, get in hashed]
            enc = self.interner.encode_hashed(names, part, hi - lo)
            yield enc, labels[lo:hi], numbers[lo:hi]


def _shifted(get: Callable[[int], Any], lo: int) -> Callable[[int], Any]:
    return lambda i: get(lo + i)


def _cell_reader(block: bytes, st: np.ndarray, ln: np.ndarray) -> Callable[[int], Any]:
    def value(i: int) -> Any:
        return block[int(st[i]) : int(st[i] + ln[i])].decode("utf-8") or None
    return value


def _jsonl_batches(path: str, batch_rows: int, window_ms: int, skipped: Counter[str]) -> Iterator[Batch]:
    join = JoinBuffer(window_ms=window_ms, lateness_ms=window_ms, max_pending=10_000_000,
                      max_future_ms=365 * 86_400_000)
    limits = Limits()

    def emit(examples: list[Any]) -> Iterator[Batch]:
        for lo in range(0, len(examples), batch_rows):
            part = examples[lo : lo + batch_rows]
            yield Batch([e.features for e in part], np.fromiter((e.label for e in part), np.int8, len(part)),
                        np.fromiter((e.ts for e in part), np.int64, len(part)))

    with _open(path) as handle:
        while True:
            lines = [line.encode() for line in _take(handle, batch_rows) if line.strip()]
            if not lines:
                break
            events, bad = decode_many(lines, limits)
            for _, err in bad:
                skipped[err.reason] += 1
            result = join.process(events, "file")  # labeled events come out as they are
            if result.rejected:
                skipped["ts_out_of_range"] += len(result.rejected)
            yield from emit(list(result.examples) + list(join.expire()))
        yield from emit(list(join.flush()))


def _take(handle: io.TextIOBase, n: int) -> list[str]:
    out = []
    for line in handle:
        out.append(line)
        if len(out) >= n:
            break
    return out


def score_file(path: str, label: str | None = None, pairs: bool = False, config: MIConfig | None = None,
               window_ms: int = 1_800_000, progress: bool = False, batch_rows: int = 8192,
               max_fields: int = 256) -> dict[str, Any]:
    """Score every field of a file (and, with ``pairs``, pairs of the top fields) with the daemon's MI core.

    Pairs need the field ranking first, so they take a second pass over the file with the
    chosen pairs only (field counts are taken from the first pass, never counted twice).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    cfg = replace(config or MIConfig(), block_ms=0)
    t0 = time.perf_counter()
    interner = Interner(max_fields)
    state = MIState(replace(cfg, pairs_top_n=0))
    skipped: Counter[str] = Counter()
    rows = positives = 0
    for encoded, labels, _ in encoded_batches(path, label, interner, batch_rows, window_ms, skipped):
        state.update(encoded, labels, np.zeros(len(labels), np.int64))
        rows += len(labels)
        positives += int(labels.sum())
        if progress:
            print(f"\rscored {rows:,} rows", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    scores = state.scores(with_pairs=False)
    result: dict[str, Any] = {"input": path, "rows": rows, "positives": positives}
    pair_list: list[dict[str, Any]] = []
    if pairs and cfg.pairs_top_n >= 2:
        pair_state = MIState(cfg)
        top = [s.name for s in scores[: cfg.pairs_top_n] if s.score > 0]
        pair_state.set_pairs((a, b) for i, a in enumerate(top) for b in top[i + 1 :])
        pair_interner = Interner(max_fields)
        for encoded, labels, _ in encoded_batches(path, label, pair_interner, batch_rows, window_ms):
            pair_state.update(encoded, labels, np.zeros(len(labels), np.int64))
        field_scores = {s.name: s for s in scores}
        pair_scores = pair_state.pair_scores(field_scores)
        redundant = {}
        for p in pair_scores:
            if p.nmi >= cfg.redundancy_threshold:
                a, b = (field_scores[f] for f in p.fields)
                strong, weak = (a, b) if (-a.score, a.name) <= (-b.score, b.name) else (b, a)
                redundant.setdefault(weak.name, strong.name)
        scores = [replace(s, redundant_with=redundant.get(s.name)) for s in scores]
        pair_list = [{"fields": list(p.fields), "score": p.score, "mi": p.mi, "z": p.z, "gain": p.gain,
                      "nmi": p.nmi} for p in pair_scores]
    seconds = time.perf_counter() - t0
    result.update({
        "skipped_rows": dict(skipped),
        "seconds": seconds,
        "rows_per_s": rows / seconds if seconds > 0 else None,
        "fields": [{"rank": i + 1, **asdict(s)} for i, s in enumerate(scores)],
        "config": asdict(cfg),
        "untracked_fields": interner.untracked_fields,
    })
    if pairs:
        result["pairs"] = pair_list
    return result
