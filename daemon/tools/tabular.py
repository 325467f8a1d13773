"""Offline input for ``featsieve score`` (and anything else that replays a file): CSV or JSONL, streamed.

* **CSV** with a header and a 0/1 label column (``--label``). Cells are
  strings; an empty cell is a missing value. Rows whose label is not one of
  ``0 1 true false`` are skipped and counted (``bad_label``); when more than
  ``MAX_BAD_LABEL_SHARE`` of the rows are (a probability, a count, the wrong
  column) :func:`score_file` raises :class:`InputError` instead.
* **JSONL** of schema-v1 events (``.jsonl``, ``.ndjson``, ``.json``):
  impressions and clicks are joined by event time over the attribution
  window exactly as the daemon does (connectors/join.py), impressions still
  open at the end of the file become negatives; ``labeled`` events are used
  as they are. Lines that do not decode are skipped and counted by reason.

The format (:func:`input_format`) is the one declared (``--input-format``), else
the extension (``.csv``; ``.jsonl``, ``.ndjson``, ``.json``; each optionally
``.gz``), else the content: a first line that is a JSON object is JSONL, one
with a comma is CSV; anything else is an :class:`InputError` naming the file.

Both are read in batches of ``batch_rows``: memory does not grow with the
file. :func:`score_file` feeds the batches to the same MI core as the daemon
(``models/mi.py``), with one evidence block (nothing expires in a file).
"""

from __future__ import annotations

import csv
import gzip
import io
import mmap
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from connectors import progress
from connectors.codec import Limits, decode_many
from connectors.join import JoinBuffer
from models.fieldcounts import FieldCounts
from models.interning import (
    MISSING,
    EncodedBatch,
    Interner,
    hash_column,
    hash_utf8_cells,
    value_hash,
)
from models.mi import MIConfig, MIState, ranked_pairs

_TRUE = {"1", "true", "True", "TRUE"}
_FALSE = {"0", "false", "False", "FALSE"}
FORMATS = ("csv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_SNIFF_BYTES = 1 << 16
MAX_BAD_LABEL_SHARE = 0.01  # more rows than this with a label other than 0/1: not a label column


class InputError(ValueError):
    """The input file is not what it must be (unknown format, no label column, a label that is not 0/1,
    no decodable line); the message names the file. A user error, not a bug."""


def input_format(path: str, declared: str | None = None) -> str:
    """``csv`` or ``jsonl``: ``declared`` if given, else by extension, else by content (see the module doc)."""
    if declared is not None:
        if declared not in FORMATS:
            raise InputError(f"unknown input format {declared!r} (allowed: {', '.join(FORMATS)})")
        return declared
    by_ext = _EXTENSIONS.get(Path(path.removesuffix(".gz")).suffix.lower())
    if by_ext is not None:
        return by_ext
    try:
        with _open_bytes(path) as raw:
            head = raw.read(_SNIFF_BYTES)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(f"cannot read {path}: {exc}") from None
    first = next((line.strip() for line in head.split(b"\n") if line.strip()), b"")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text.startswith("{"):
        return "jsonl"
    if "," in text and text.isprintable():
        return "csv"
    raise InputError(f"cannot tell the format of {path}: not named .csv/.jsonl and its first line is neither "
                     "CSV nor a JSON object (give --input-format csv|jsonl)")


@dataclass
class Batch:
    features: list[dict[str, Any]]
    labels: np.ndarray  # int8
    ts: np.ndarray  # int64, epoch ms (the row number for CSV)


def _open(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by the caller's with


def is_csv(path: str, declared: str | None = None) -> bool:
    return input_format(path, declared) == "csv"


def read_batches(path: str, label: str | None = None, batch_rows: int = 8192, window_ms: int = 1_800_000,
                 skipped: Counter[str] | None = None, fmt: str | None = None,
                 meter: ReadMeter | None = None) -> Iterator[Batch]:
    """Labelled examples of a CSV or JSONL file, in batches, in file order (``fmt``: see :func:`input_format`)."""
    skipped = Counter() if skipped is None else skipped
    if is_csv(path, fmt):
        if not label:
            raise InputError(f"{path} is a CSV file: give the name of its 0/1 label column (--label COLUMN)")
        yield from _csv_batches(path, label, batch_rows, skipped, meter)
    else:
        yield from _jsonl_batches(path, batch_rows, window_ms, skipped, meter)


def _csv_batches(path: str, label: str, batch_rows: int, skipped: Counter[str],
                 meter: ReadMeter | None) -> Iterator[Batch]:
    with _open(path) as handle:
        if meter is not None:
            meter.attach(handle)
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        if label not in header:
            raise InputError(f"label column {label!r} is not in {path}; columns: {', '.join(header)}")
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


class ReadMeter:
    """How far a reader is into its file, in bytes of the file on disk (compressed bytes for ``.gz``),
    so that a progress bar has a total (the file's size) whatever the format."""

    def __init__(self) -> None:
        self._tell: Callable[[], int] | None = None
        self._start = 0

    def attach(self, handle: Any, start: int = 0) -> None:
        """Measure ``handle`` (text or binary, plain or gzip) from byte ``start`` of the file on."""
        if isinstance(handle, io.TextIOWrapper):
            handle = handle.buffer  # a text reader's own tell() is disabled while it is iterated
        if isinstance(handle, gzip.GzipFile):
            handle = handle.fileobj
        self._tell, self._start = handle.tell, start

    def done(self) -> int:
        if self._tell is None:
            return 0
        try:
            return self._tell() - self._start
        except (OSError, ValueError):  # closed at the end
            return 0


def encoded_batches(path: str, label: str | None, interner: Interner, batch_rows: int = 8192,
                    window_ms: int = 1_800_000, skipped: Counter[str] | None = None,
                    fmt: str | None = None, meter: ReadMeter | None = None,
                    ) -> Iterator[tuple[EncodedBatch, np.ndarray, np.ndarray]]:
    """``(hashes, labels, ts)`` of :func:`read_batches`' examples, hashed with ``interner``.

    Same rows, same order, same skips and the same hashes as encoding :func:`read_batches`'
    feature dicts; a CSV is hashed straight from its bytes, a column at a time, as long as
    it has no quote and no carriage return (from the first one on, the csv module reads it).
    """
    skipped = Counter() if skipped is None else skipped
    if not is_csv(path, fmt):
        for b in read_batches(path, label, batch_rows, window_ms, skipped, fmt, meter):
            yield interner.encode(b.features), b.labels, b.ts
        return
    if not label:
        raise InputError(f"{path} is a CSV file: give the name of its 0/1 label column (--label COLUMN)")
    with _open_bytes(path) as raw:
        if meter is not None:
            meter.attach(raw)
        header = _read_header(raw, path, label)
        if header is None:
            return
        reader = _CsvBytes(header, header.index(label), interner, batch_rows, skipped)
        yield from reader.read(raw)


def _read_header(raw: Any, path: str, label: str) -> list[str] | None:
    """The header row of a CSV opened in binary; checks the label is in it (InputError for an empty first line)."""
    first = raw.readline().decode("utf-8")
    if not first.strip():
        raise InputError(f"{path} has no header row (the first line is empty)")
    header = next(csv.reader([first]), None)
    if header is not None and label not in header:
        raise InputError(f"label column {label!r} is not in {path}; columns: {', '.join(header)}")
    return header


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

    def read(self, raw: Any, limit: int | None = None) -> Iterator[tuple[EncodedBatch, np.ndarray, np.ndarray]]:
        """The rows of ``raw`` from its position to its end, or to ``limit`` bytes further (a line end).

        Bytes are read in blocks of whole lines; from the first quote or carriage return on, the
        csv module reads the rest (not allowed with ``limit``: a quoted cell may hold a newline,
        so :func:`csv_ranges` never splits such a file).
        """
        pending = b""
        left = limit
        while True:
            want = _CHUNK_BYTES if left is None else min(_CHUNK_BYTES, left)
            data = raw.read(want) if want > 0 else b""
            if left is not None:
                left -= len(data)
            block = pending + data
            end = len(block) if not data else block.rfind(b"\n") + 1
            if not data and block and not block.endswith(b"\n"):
                block += b"\n"
                end = len(block)
            if b'"' in block or b"\r" in block:
                if limit is not None:
                    raise ValueError("a byte range of a CSV with quotes or carriage returns")
                text = io.TextIOWrapper(io.BufferedReader(_Prefixed(block, raw)), encoding="utf-8", newline="")
                yield from self.rows_of(csv.reader(text))
                return
            yield from self.lines_of(block[:end])
            pending = block[end:]
            if not data:
                break

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
        hashed: list[tuple[np.ndarray, Callable[[int], Any]]] = []
        names: list[str] = []
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


def _jsonl_batches(path: str, batch_rows: int, window_ms: int, skipped: Counter[str],
                   meter: ReadMeter | None) -> Iterator[Batch]:
    join = JoinBuffer(window_ms=window_ms, lateness_ms=window_ms, max_pending=10_000_000,
                      max_future_ms=365 * 86_400_000)
    limits = Limits()

    def emit(examples: list[Any]) -> Iterator[Batch]:
        for lo in range(0, len(examples), batch_rows):
            part = examples[lo : lo + batch_rows]
            yield Batch([e.features for e in part], np.fromiter((e.label for e in part), np.int8, len(part)),
                        np.fromiter((e.ts for e in part), np.int64, len(part)))

    with _open(path) as handle:
        if meter is not None:
            meter.attach(handle)
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


# ------------------------------------------------------------------ scoring a file
_MIN_RANGE_BYTES = 1 << 22  # a CSV is split into at most one range per this many bytes


def default_workers() -> int:
    """Processes :func:`score_file` uses by default: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def csv_ranges(path: str, parts: int) -> list[tuple[int, int]] | None:
    """Up to ``parts`` byte ranges ``[start, end)`` of a CSV's data rows, cut at line ends.

    None when the file cannot be cut like this: compressed, or with a quote or carriage
    return past the header (a quoted cell may hold a newline). Ranges are about equal in
    size and at least ``_MIN_RANGE_BYTES`` each (fewer ranges for a small file); an empty
    list for a file without data rows.
    """
    if path.endswith(".gz"):
        return None
    with open(path, "rb") as fh:
        data_start = len(fh.readline())
        size = os.fstat(fh.fileno()).st_size
        if size <= data_start:
            return []
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm.find(b'"', data_start) >= 0 or mm.find(b"\r", data_start) >= 0:
                return None
            parts = max(1, min(parts, (size - data_start) // _MIN_RANGE_BYTES))
            cuts = [data_start]
            for i in range(1, parts):
                nl = mm.find(b"\n", data_start + (size - data_start) * i // parts)
                cut = size if nl < 0 else nl + 1
                if cut > cuts[-1] and cut < size:
                    cuts.append(cut)
            cuts.append(size)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _admit(interner: Interner, names: Sequence[str]) -> None:
    """Give every name a column now (sorted, as the interner does), by placing zero rows."""
    interner.encode_hashed(names, [(np.empty(0, np.uint64), _no_value)] * len(names), 0)


def _no_value(i: int) -> Any:
    raise IndexError(i)


@dataclass
class _RangeTask:
    """One worker's share of a CSV: the rows in bytes ``[start, end)``; ``slot``: its progress counters."""

    path: str
    label: str
    header: list[str]
    start: int
    end: int
    config: MIConfig
    pairs: tuple[tuple[str, str], ...]
    batch_rows: int
    max_fields: int
    slot: int = 0


@dataclass
class _Counted:
    state: MIState
    rows: int
    positives: int
    skipped: Counter[str]


class _Tally:
    """Bytes read and rows counted by every process of one pass, in shared memory.

    Slot ``i`` holds ``[bytes, rows]`` of range ``i``: each process writes its own slot only,
    the parent sums them for the progress bar (so it counts every worker, not only itself).
    """

    def __init__(self, slots: int, ctx: Any = None) -> None:
        self.values = (ctx or multiprocessing).Array("q", 2 * slots, lock=False)

    def set(self, slot: int, done_bytes: int, rows: int) -> None:
        self.values[2 * slot] = done_bytes
        self.values[2 * slot + 1] = rows

    def totals(self) -> tuple[int, int]:
        v = self.values[:]
        return sum(v[0::2]), sum(v[1::2])


_WORKER_TALLY: _Tally | None = None  # a worker process's view of the parent's tally (set by _init_worker)


def _init_worker(tally: _Tally) -> None:
    global _WORKER_TALLY
    _WORKER_TALLY = tally


def _count_range(task: _RangeTask, tally: _Tally | None = None) -> _Counted:
    """Count the rows of one byte range into a fresh MIState (run in a worker process, or in this one).

    Every column of the header has a field from the first row on (an empty cell is a missing
    value), so the counts of each range, merged, are exactly those of one pass over the file.
    The rows' timestamps do not matter: a file is scored as one evidence block (ts 0).
    """
    tally = tally if tally is not None else _WORKER_TALLY
    interner = Interner(task.max_fields, names_per_column=0)  # value names are not reported
    _admit(interner, [n for n in task.header if n != task.label])
    state = MIState(task.config)
    if task.pairs:
        state.set_pairs(task.pairs, limit=len(task.pairs))
    skipped: Counter[str] = Counter()
    reader = _CsvBytes(task.header, task.header.index(task.label), interner, task.batch_rows, skipped)
    meter = ReadMeter()
    with open(task.path, "rb") as raw:
        raw.seek(task.start)
        meter.attach(raw, task.start)
        report = None if tally is None else (lambda rows: tally.set(task.slot, meter.done(), rows))
        return _count(reader.read(raw, task.end - task.start), state, skipped, report)


def _count(batches: Iterator[tuple[EncodedBatch, np.ndarray, np.ndarray]], state: MIState,
           skipped: Counter[str], report: Callable[[int], None] | None = None) -> _Counted:
    rows = positives = 0
    for encoded, labels, _ in batches:
        state.update(encoded, labels, np.zeros(len(labels), np.int64))
        rows += len(labels)
        positives += int(labels.sum())
        if report is not None:
            report(rows)
    return _Counted(state, rows, positives, skipped)


def _start_method() -> str:
    """'fork' where it is safe and cheap (Linux, no other thread alive), else 'spawn'."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


class _Bar:
    """The progress bar of one pass: bytes of the file (total: its size), rate and ETA, rows as a postfix.

    Written to stderr only when ``enabled`` (the caller decides: a TTY, or ``--progress``),
    so a JSON result on stdout stays clean.
    """

    def __init__(self, path: str, desc: str, enabled: bool) -> None:
        self.bar = progress.bar(os.path.getsize(path), desc, "B", enabled) if enabled else None

    def show(self, done_bytes: int, rows: int) -> None:
        if self.bar is not None:
            self.bar.n = min(done_bytes, self.bar.total)
            self.bar.set_postfix_str(f"{rows:,} rows", refresh=False)
            self.bar.refresh()

    def close(self, done_bytes: int, rows: int) -> None:
        if self.bar is not None:
            self.show(max(done_bytes, self.bar.total), rows)
            self.bar.close()


def _count_file(path: str, fmt: str, label: str | None, config: MIConfig, pairs: tuple[tuple[str, str], ...],
                workers: int, batch_rows: int, max_fields: int, window_ms: int, bar: _Bar,
                ) -> tuple[_Counted, int, int]:
    """One pass over the file: (counts, untracked field names, processes used).

    A CSV whose columns fit in ``max_fields`` gets a field per column from the first row on;
    with ``workers > 1`` (and a file that :func:`csv_ranges` can cut) its ranges are counted
    in that many processes and the states merged, which is exact (models/mi.py). Anything
    else is read in this process, in file order. ``bar`` shows the bytes and rows of all of them.
    """
    header: list[str] | None = None
    if fmt == "csv":
        if not label:
            raise InputError(f"{path} is a CSV file: give the name of its 0/1 label column (--label COLUMN)")
        with _open_bytes(path) as raw:
            header = _read_header(raw, path, label)
    features = [n for n in header if n != label] if header else []
    state = MIState(config)
    if pairs:
        state.set_pairs(pairs, limit=len(pairs))
    skipped: Counter[str] = Counter()
    meter = ReadMeter()

    def report(rows: int) -> None:
        bar.show(meter.done(), rows)

    if header is None or len(features) > max_fields:  # JSONL, empty, or more columns than fields
        interner = Interner(max_fields, names_per_column=0)
        counted = _count(encoded_batches(path, label, interner, batch_rows, window_ms, skipped, fmt, meter),
                         state, skipped, report)
        bar.close(meter.done(), counted.rows)
        return counted, interner.untracked_fields, 1
    assert label is not None
    ranges = csv_ranges(path, workers) if workers > 1 else None
    if not ranges or len(ranges) == 1:
        interner = Interner(max_fields, names_per_column=0)
        _admit(interner, features)
        counted = _count(encoded_batches(path, label, interner, batch_rows, window_ms, skipped, fmt, meter),
                         state, skipped, report)
        bar.close(meter.done(), counted.rows)
        return counted, 0, 1
    tasks = [_RangeTask(path, label, header, a, b, config, pairs, batch_rows, max_fields, slot=i)
             for i, (a, b) in enumerate(ranges)]
    ctx = multiprocessing.get_context(_start_method())
    tally = _Tally(len(tasks), ctx)

    def show_all(_rows: int = 0) -> None:
        bar.show(*tally.totals())

    with ProcessPoolExecutor(max_workers=len(tasks) - 1, mp_context=ctx, initializer=_init_worker,
                             initargs=(tally,)) as pool:
        futures = [pool.submit(_count_range, t) for t in tasks[1:]]
        first = _count_range(tasks[0], tally)  # this process counts the first range meanwhile
        while not wait(futures, timeout=0.5).done.issuperset(futures):
            show_all()
        parts = [first] + [f.result() for f in futures]
    bar.close(*tally.totals())
    total = parts[0]
    for part in parts[1:]:
        total.state.merge(part.state)
        total.rows += part.rows
        total.positives += part.positives
        total.skipped.update(part.skipped)
    return total, 0, len(tasks)


def _check_input(path: str, fmt: str, label: str | None, counted: _Counted) -> None:
    """Fail loudly on input that would otherwise give an empty or a meaningless ranking."""
    bad_label = counted.skipped.get("bad_label", 0)
    seen = counted.rows + bad_label
    if fmt == "csv" and bad_label and bad_label > MAX_BAD_LABEL_SHARE * seen:
        raise InputError(f"label column {label!r} of {path} is not a 0/1 column: {bad_label:,} of {seen:,} rows "
                         "have another value (allowed: 0 1 true false)")
    if fmt == "jsonl" and counted.rows == 0 and counted.skipped.total():
        reasons = ", ".join(f"{n:,} {r}" for r, n in counted.skipped.most_common(3))
        raise InputError(f"no line of {path} is a featsieve event ({reasons}): if it is a CSV, "
                         "give --input-format csv --label COLUMN")


def _valued(counts: FieldCounts | None) -> bool:
    """The field had at least one value (not only empty cells)."""
    return counts is not None and (counts.keys is None or bool(np.any(counts.keys != np.uint64(MISSING))))


def score_file(path: str, label: str | None = None, pairs: bool = False, config: MIConfig | None = None,
               window_ms: int = 1_800_000, progress: bool = False, batch_rows: int = 8192,
               max_fields: int = 256, workers: int = 1, fmt: str | None = None) -> dict[str, Any]:
    """Score every field of a file (and, with ``pairs``, every pair up to ``pair_budget``) with the daemon's MI core.

    Pairs need the field ranking first, so they take a second pass over the file with the
    chosen pairs only (field counts are taken from the first pass, never counted twice).
    ``workers`` > 1 counts a plain CSV in that many processes (see :func:`_count_file`);
    the result is the same as with one, except ``seconds``, ``rows_per_s`` and ``workers``.
    A CSV column with no value at all is not reported. ``fmt`` (csv|jsonl) overrides the
    format's detection (:func:`input_format`). Raises :class:`InputError` for input that
    cannot be scored (see :func:`_check_input`); ``progress`` draws a bar on stderr.
    """
    if not Path(path).is_file():
        raise InputError(f"{path} is not a file" if Path(path).exists() else f"no such input file: {path}")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    fmt = input_format(path, fmt)
    cfg = replace(config or MIConfig(), block_ms=0)
    t0 = time.perf_counter()
    counted, untracked, used = _count_file(path, fmt, label, replace(cfg, pairs_top_n=0), (), workers,
                                           batch_rows, max_fields, window_ms, _Bar(path, "score", progress))
    _check_input(path, fmt, label, counted)
    state = counted.state
    valued = {name for name in state.field_names() if _valued(state.field_counts(name))}
    scores = [s for s in state.scores(with_pairs=False) if s.name in valued]
    result: dict[str, Any] = {"input": path, "format": fmt, "rows": counted.rows, "positives": counted.positives}
    pair_list: list[dict[str, Any]] = []
    if pairs and cfg.pairs_top_n >= 2:
        # every pair while they fit in pair_budget (64 fields: 2016 pairs), else all pairs among
        # as many of the top fields as fit: a pair weak alone on both sides (XOR) is still scored
        chosen = MIState(cfg)
        chosen.set_pairs(ranked_pairs([s.name for s in scores]), limit=cfg.pair_budget)
        pair_state = _count_file(path, fmt, label, cfg, chosen.pairs, workers, batch_rows, max_fields,
                                 window_ms, _Bar(path, "score pairs", progress))[0].state
        field_scores = {s.name: s for s in scores}
        pair_scores = pair_state.pair_scores(field_scores)
        redundant: dict[str, str] = {}
        for p in pair_scores:
            if p.nmi >= cfg.redundancy_threshold:
                a, b = (field_scores[f] for f in p.fields)
                strong, weak = (a, b) if (-a.score, a.name) <= (-b.score, b.name) else (b, a)
                redundant.setdefault(weak.name, strong.name)
        scores = [replace(s, redundant_with=redundant.get(s.name)) for s in scores]
        pair_list = [{"fields": list(p.fields), "score": p.score, "mi": p.mi, "z": p.z, "gain": p.gain,
                      "gain_z": p.gain_z, "sd": p.sd, "nmi": p.nmi} for p in pair_scores]
    seconds = time.perf_counter() - t0
    rows = counted.rows
    result.update({
        "skipped_rows": dict(counted.skipped),
        "seconds": seconds,
        "rows_per_s": rows / seconds if seconds > 0 else None,
        "workers": used,
        "fields": [{"rank": i + 1, **asdict(s)} for i, s in enumerate(scores)],
        "config": asdict(cfg),
        "untracked_fields": untracked,
    })
    if pairs:
        result["pairs"] = pair_list
    return result
