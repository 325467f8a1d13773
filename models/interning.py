"""Value interning: feature values → 64-bit value hashes, one column per field, hashed a column at a time.

The hash (``fs64``, version :data:`HASH_VERSION`) is a fixed function of the
value, with no per-process salt, so the same value gets the same hash in every
process, shard and restart (this is what makes MI states of different
instances mergeable and gate rows stable). It is computed with whole-column
NumPy operations (:func:`hash_columns`, :func:`hash_column`, :func:`hash_utf8_cells`);
:func:`value_hash` is the same function written per value in plain Python and
is its specification (tests/test_mi.py checks that the two agree on mixed
columns). With ``fmix(x)`` the splitmix64 finaliser on 64 bits and every sum
and product taken mod 2**64:

* ``None`` (and an absent field) → :data:`MISSING` ``= fmix(T_MISSING)``.
* ``bool`` → ``fmix(int(v) ^ T_BOOL)``.
* ``int`` in ``[-2**63, 2**63)`` → ``fmix((v mod 2**64) ^ T_INT)`` (a bijection:
  two such ints never collide); larger ints are hashed as the string ``str(v)``
  with tag ``T_BIGINT``.
* ``float`` → ``fmix(bits(v) ^ T_FLOAT)``, ``bits`` the IEEE-754 double (so
  ``0.0`` and ``-0.0`` differ; NaN never gets here, the codec refuses it).
* ``str`` with UTF-8 bytes ``b[0..L)`` (lone surrogates passed through) →
  ``fmix(sum_j b[j] * K[j]  ^  fmix(L ^ T_STR))``, ``K[j] = fmix(SEED + (j+1) * GOLDEN) | 1``:
  a multilinear hash of the bytes (zero padding adds nothing, which is what
  lets a padded byte matrix be hashed column by column) with the length mixed
  in, so ``"a"`` and ``"a\\x00"`` differ.
* anything else → the string ``repr(v)`` with tag ``T_REPR``.

So ``"1"``, ``1``, ``1.0`` and ``True`` are four different values. The string
hash is a fast mixing hash, not a cryptographic one: collisions between
ordinary values are as rare as for any 64-bit hash, but someone who knows the
constants could construct colliding strings (the effect would be two values
sharing counts, never an error).

Columns are assigned to field names in order of first appearance (sorted
within a batch) and never change; with ``admit_new=False`` (the daemon) only
:meth:`Interner.admit` assigns them, and encoding reports the values of names
without a column (``unadmitted``) for the caller to count (models/admission.py). At most ``max_fields`` names get a column;
further names are counted in :attr:`Interner.untracked_fields` and ignored.
For display (``values_for``, naming closed gate values) each column remembers
``hash → value`` for at most ``names_per_column`` distinct values; a column
with more distinct values stops being remembered (gates only close values of
low-cardinality fields). Memory is bounded whatever the producers send.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from typing import Any

import numpy as np

HASH_VERSION = "fs64-1"
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_SEED = 0x5FEA7515E7EB5EED
T_MISSING = 0x6D697373696E6721
T_BOOL = 0x626F6F6C65616E21
T_INT = 0x696E746567657221
T_FLOAT = 0x666C6F6174363421
T_STR = 0x737472696E675F21
T_BIGINT = 0x626967696E745F21
T_REPR = 0x7265707276616C21
_INT_MIN, _INT_END = -(1 << 63), 1 << 63
_UNTRACKED_NAMES_CAP = 10_000
# The name a reclaimed column holds until it is given again (a field of this name is never tracked).
HOLE = "\x00reclaimed\x00"
_SHORT = 10  # longest value hashed by the gather path of _hash_strs


# ------------------------------------------------------------------ the hash, per value (the specification)
def _fmix(x: int) -> int:
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _key(j: int) -> int:
    return _fmix(_SEED + (j + 1) * _GOLDEN) | 1


def _bytes_hash(data: bytes, tag: int) -> int:
    acc = 0
    for j, b in enumerate(data):
        acc += b * _key(j)
    return _fmix((acc & _M64) ^ _fmix(len(data) ^ tag))


MISSING = _fmix(T_MISSING)


def value_hash(value: Any) -> int:
    """The 64-bit hash of one feature value (``None`` is :data:`MISSING`); see the module docstring."""
    kind = value.__class__
    if value is None:
        return MISSING
    if kind is str:
        return _bytes_hash(value.encode("utf-8", "surrogatepass"), T_STR)
    if kind is bool:
        return _fmix(int(value) ^ T_BOOL)
    if kind is int:
        if _INT_MIN <= value < _INT_END:
            return _fmix((value & _M64) ^ T_INT)
        return _bytes_hash(str(value).encode(), T_BIGINT)
    if kind is float:
        return _fmix(struct.unpack("<Q", struct.pack("<d", value))[0] ^ T_FLOAT)
    return _bytes_hash(repr(value).encode("utf-8", "surrogatepass"), T_REPR)


# ------------------------------------------------------------------ the hash, per column (NumPy)
def _vfmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _keys(width: int) -> np.ndarray:
    j = np.arange(1, width + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _vfmix(np.uint64(_SEED) + j * np.uint64(_GOLDEN)) | np.uint64(1)


def hash_byte_matrix(matrix: np.ndarray, lengths: np.ndarray, tag: int = T_STR) -> np.ndarray:
    """Hashes of byte strings given as rows of ``matrix`` (n, w), zero past each row's ``lengths``."""
    n = matrix.shape[0]
    if matrix.shape[1] == 0:
        acc = np.zeros(n, dtype=np.uint64)
    else:
        acc = matrix.astype(np.uint64) @ _keys(matrix.shape[1])  # wraps mod 2**64
    return _vfmix(acc ^ _vfmix(lengths.astype(np.uint64) ^ np.uint64(tag)))


def hash_utf8_cells(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, tag: int = T_STR) -> np.ndarray:
    """Hashes of the byte ranges ``buf[starts[i] : starts[i] + lengths[i]]`` (uint8 ``buf``), as strings.

    For UTF-8 text this equals :func:`value_hash` of the decoded ``str``.
    """
    n = len(starts)
    width = int(lengths.max()) if n else 0
    if width == 0:
        return hash_byte_matrix(np.zeros((n, 0), np.uint8), lengths, tag)
    offs = np.arange(width, dtype=np.int64)
    idx = starts.astype(np.int64)[:, None] + offs
    if int(starts.max()) + width > len(buf):
        np.minimum(idx, len(buf) - 1, out=idx)  # past the end: masked to zero below
    cells = buf[idx]
    cells[offs >= lengths[:, None]] = 0
    return hash_byte_matrix(cells, lengths, tag)


def _hash_strs(values: Sequence[str], tag: int = T_STR) -> np.ndarray:
    n = len(values)
    if n == 0:
        return np.empty(0, np.uint64)
    lengths = np.fromiter(map(len, values), np.int64, n)
    width = int(lengths.max())
    if width <= _SHORT:
        # Short values: one concatenation and a gather beat numpy's per-object str conversion.
        raw = "".join(values).encode("utf-8", "surrogatepass")
        if len(raw) == int(lengths.sum()):  # ASCII: characters are bytes
            return hash_utf8_cells(np.frombuffer(raw, np.uint8), np.cumsum(lengths) - lengths, lengths, tag)
    else:
        text = np.array(values, dtype=np.str_)
        points = text.view(np.uint32).reshape(n, text.dtype.itemsize // 4)
        if int(points.max()) < 128:  # ASCII: the code points are the UTF-8 bytes
            return hash_byte_matrix(points, lengths, tag)
    data = [v.encode("utf-8", "surrogatepass") for v in values]
    raw_cells = np.array(data, dtype=np.bytes_)
    return hash_byte_matrix(raw_cells.view(np.uint8).reshape(n, raw_cells.dtype.itemsize),
                            np.fromiter(map(len, data), np.int64, n), tag)


def _hash_same_kind(kind: type, values: Sequence[Any]) -> np.ndarray:
    if kind is str:
        return _hash_strs(values)
    if kind is bool:
        return _vfmix(np.array(values, dtype=np.uint64) ^ np.uint64(T_BOOL))
    if kind is float:
        return _vfmix(np.array(values, dtype=np.float64).view(np.uint64) ^ np.uint64(T_FLOAT))
    if kind is int:
        try:
            ints = np.array(values, dtype=np.int64)
        except OverflowError:
            return np.fromiter(map(value_hash, values), np.uint64, len(values))
        return _vfmix(ints.view(np.uint64) ^ np.uint64(T_INT))
    return np.fromiter(map(value_hash, values), np.uint64, len(values))


def _hash_str_column(values: Sequence[Any]) -> np.ndarray | None:
    """:func:`value_hash` of a column that holds only strings, or None if it holds anything else.

    One ``"\\0".join`` both checks the type (it refuses a non-str) and lays the values out as
    UTF-8 bytes; the NULs then give every value's start and length in one vectorised scan, with
    no per-value ``len`` or ``type``. A value that contains a NUL itself is left to the general path.
    """
    try:
        text = "\0".join(values)
    except TypeError:
        return None
    raw = text.encode("utf-8", "surrogatepass")
    buf = np.frombuffer(raw, np.uint8)
    seps = np.flatnonzero(buf == 0)
    n = len(values)
    if len(seps) != n - 1:
        return None
    starts = np.empty(n, np.int64)
    starts[0] = 0
    starts[1:] = seps + 1
    ends = np.empty(n, np.int64)
    ends[:-1] = seps
    ends[-1] = len(buf)
    return hash_utf8_cells(buf, starts, ends - starts)


def hash_column(values: Sequence[Any]) -> np.ndarray:
    """:func:`value_hash` of every value, computed a whole type at a time (uint64, one per value)."""
    n = len(values)
    if n == 0:
        return np.empty(0, np.uint64)
    if values[0].__class__ is str:  # the usual dense column
        hashed = _hash_str_column(values)
        if hashed is not None:
            return hashed
    rest, where = _present(values)
    k = len(rest)
    if k == 0:
        return np.full(n, MISSING, dtype=np.uint64)
    out = np.full(n, MISSING, dtype=np.uint64) if where is not None else None
    kinds = set(map(type, rest))
    if len(kinds) == 1:  # the usual sparse column: one type and missing values
        kind = kinds.pop()
        hashed = _hash_str_column(rest) if kind is str else None
        if hashed is None:
            hashed = _hash_same_kind(kind, rest)
        if out is None:
            return hashed
        out[where] = hashed
        return out
    rows = np.flatnonzero(where) if where is not None else np.arange(n)
    if out is None:
        out = np.empty(n, dtype=np.uint64)
    classes = [v.__class__ for v in rest]
    for kind in kinds:
        sel = np.fromiter((c is kind for c in classes), bool, k)
        out[rows[sel]] = _hash_same_kind(kind, list(compress(rest, sel.tolist())))
    return out


def hash_joined_strs(text: str, count: int, tag: int = T_STR) -> np.ndarray | None:
    """:func:`value_hash` of the ``count`` strings that ``"\\0".join`` made ``text`` of, or None
    when ``text`` holds another number of NULs (a value contained one).

    One pass over the UTF-8 bytes of all of them, however their lengths differ: every byte's
    product with the key of its place in its value, summed per value by ``np.add.reduceat``
    (a separator is a zero byte and adds nothing, so each value's sum can run over the separator
    that ends it). This is what lets every string column of a batch be hashed at once.
    """
    buf = np.frombuffer((text + "\0").encode("utf-8", "surrogatepass"), np.uint8)
    ends = np.flatnonzero(buf == 0)
    if len(ends) != count:
        return None
    starts = np.empty(count, np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    place = np.arange(len(buf), dtype=np.int64) - np.repeat(starts, lengths + 1)
    acc = np.add.reduceat(buf * _keys(int(lengths.max()) + 1)[place], starts)  # wraps mod 2**64
    return _vfmix(acc ^ _vfmix(lengths.astype(np.uint64) ^ np.uint64(tag)))


_BATCHED_KINDS = (int, float, bool)


def _present(col: Sequence[Any]) -> tuple[Sequence[Any], np.ndarray | None]:
    """The values of ``col`` that are not None, and where they are (None: all of them are).

    Fields are seldom missing in more than a few rows, so in a list or tuple the gaps are found
    by ``index`` (a scan in C) and the values copied around them in slices: ~20 ns a value
    against ~33 for a flag per value. A column with more than one gap in eight takes the flag
    per value.
    """
    n = len(col)
    if col.__class__ is tuple or col.__class__ is list:
        gaps: list[int] = []
        at = 0
        try:
            while len(gaps) <= n // 8:
                at = col.index(None, at)
                gaps.append(at)
                at += 1
        except ValueError:  # no more gaps: few enough to copy around
            if not gaps:
                return col, None
            values: list[Any] = []
            start = 0
            for gap in gaps:
                values += col[start:gap]
                start = gap + 1
            values += col[start:]
            where = np.ones(n, bool)
            where[gaps] = False
            return values, where
    present = [v is not None for v in col]
    kept = list(compress(col, present))
    return kept, np.fromiter(present, bool, n) if len(kept) < n else None


def _nul_joined(values: Sequence[Any]) -> str | None:
    """``"\\0".join(values)``, or None if a value is not a string (the join checks every type)."""
    try:
        return "\0".join(values)
    except TypeError:
        return None


def hash_columns(columns: Sequence[Sequence[Any]]) -> list[np.ndarray]:
    """:func:`hash_column` of each column, a type at a time across the columns.

    A batch of ~40 fields is ~40 short columns, and one column's NumPy calls cost more than its
    values do; here the strings of every column are hashed in one :func:`hash_joined_strs`, and
    the ints, floats and bools of every column in one call per type. Only the Python-level
    passes (a ``join`` that checks the type, a scan for missing values) stay per column; a
    column of mixed types takes :func:`hash_column`.
    """
    out: list[np.ndarray | None] = [None] * len(columns)
    texts: list[str] = []
    placed: dict[type, list[tuple[int, Sequence[Any], np.ndarray | None]]] = {str: [], int: [], float: [], bool: []}
    strs = placed[str]
    for j, col in enumerate(columns):
        n = len(col)
        if n == 0:
            out[j] = np.empty(0, np.uint64)
            continue
        if col[0].__class__ is str and (text := _nul_joined(col)) is not None:
            texts.append(text)
            strs.append((j, col, None))
            continue
        values, where = _present(col)
        if not values:
            out[j] = np.full(n, MISSING, dtype=np.uint64)
            continue
        if values[0].__class__ is str and (text := _nul_joined(values)) is not None:
            texts.append(text)
            strs.append((j, values, where))
            continue
        kinds = set(map(type, values))
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind in _BATCHED_KINDS:
            placed[kind].append((j, values, where))  # type: ignore[index]
        else:
            out[j] = hash_column(col)
    for kind, group in placed.items():
        if not group:
            continue
        total = sum(len(values) for _, values, _ in group)
        if kind is str:
            hashed = hash_joined_strs("\0".join(texts), total)
            if hashed is None:  # a value with a NUL in it: column by column
                hashed = np.concatenate([_hash_strs(values) for _, values, _ in group])
        else:
            hashed = _hash_same_kind(kind, list(chain.from_iterable(values for _, values, _ in group)))
        at = 0
        for j, values, where in group:
            part = hashed[at : at + len(values)]
            at += len(values)
            if where is None:
                out[j] = part
            else:
                full = np.full(len(where), MISSING, dtype=np.uint64)
                full[where] = part
                out[j] = full
    return out  # type: ignore[return-value]


def display(value: Any) -> str:
    """How a value is named in a mask message (JSON spelling for non-strings)."""
    if value.__class__ is str:
        return str(value)
    if value.__class__ is bool:
        return "true" if value else "false"
    return repr(value)


@dataclass(frozen=True)
class EncodedBatch:
    """``hashes[i, j]`` is the hash of field ``fields[j]`` in example ``i`` (MISSING when absent)."""

    fields: list[str]
    hashes: np.ndarray  # (n, len(fields)) uint64

    def __post_init__(self) -> None:
        if self.hashes.ndim != 2 or self.hashes.shape[1] != len(self.fields):
            raise ValueError(f"hashes of shape {self.hashes.shape} do not match {len(self.fields)} fields")


class HashVersionError(ValueError):
    """A snapshot was written with another value hash; its counts cannot be continued with this one."""


class _ValueNames:
    """``hash → value`` of one column's first ``cap`` distinct values; forgets all of them past that.

    A direct-mapped table of known hashes makes the usual batch (no new value) one gather; MISSING
    is never counted or named.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.names: dict[int, Any] | None = {}
        self.slots = np.zeros(max(16, 1 << (4 * cap - 1).bit_length()), dtype=np.uint64)
        self.slots[MISSING % len(self.slots)] = MISSING  # missing is not a value to name

    def learn(self, hashes: np.ndarray, value_of: Callable[[int], Any],
              journal: list[tuple[Any, ...]] | None = None, col: int = 0) -> None:
        """Remember the values of hashes not seen before; with a ``journal``, also append
        ``("name", col, hash, value)`` for each, so that a replica can :meth:`remember` them."""
        if self.names is None:
            return
        mask = np.uint64(len(self.slots) - 1)
        miss = np.flatnonzero(self.slots[hashes & mask] != hashes)
        if len(miss) == 0:
            return
        new, first = np.unique(hashes[miss], return_index=True)
        for h, i in zip(new.tolist(), miss[first].tolist(), strict=True):
            if h == MISSING:
                continue
            value = value_of(i) if h not in self.names else None
            if journal is not None and value is not None:
                journal.append(("name", col, h, value))
            self.remember(h, value)
            if self.names is None:
                return

    def remember(self, h: int, value: Any) -> None:
        """Name hash ``h`` (``value`` None: already named); past ``cap`` names, forget them all."""
        names = self.names
        if names is None:
            return
        if h not in names:
            if len(names) >= self.cap:
                self.names = None
                self.slots = np.zeros(0, np.uint64)
                return
            names[h] = value
        slot = h & (len(self.slots) - 1)
        if self.slots[slot] == 0:
            self.slots[slot] = h


class Interner:
    """Field names → columns, values → hashes; deterministic, bounded."""

    def __init__(self, max_fields: int = 256, names_per_column: int = 1024, admit_new: bool = True) -> None:
        if max_fields < 1:
            raise ValueError("interner max_fields must be >= 1")
        if names_per_column < 0:
            raise ValueError("interner names_per_column must be >= 0")
        self.max_fields = max_fields
        self.names_per_column = names_per_column
        self.fields: list[str] = []
        self._columns: dict[str, int] = {}
        self._names: list[_ValueNames] = []
        self._untracked: set[str] = set()
        self.untracked_overflow = 0  # names not remembered once the untracked set is full
        # False: names without a column are not given one by encoding (the daemon admits them when
        # they have earned it, see models/admission.py); their present values are appended to
        # ``unadmitted`` as (name, rows, hashes) when that is a list
        self.admit_new = admit_new
        self.unadmitted: list[tuple[str, np.ndarray, np.ndarray]] | None = None
        # When a list: every change to columns and remembered names is appended to it, for a
        # replica elsewhere to :meth:`replay` (the decode worker keeps the daemon's copy exact).
        self.journal: list[tuple[Any, ...]] | None = None

    @property
    def untracked_fields(self) -> int:
        """Distinct field names refused a column because ``max_fields`` were taken."""
        return len(self._untracked) + self.untracked_overflow

    def column(self, name: str) -> int | None:
        return self._columns.get(name)

    def _admit(self, names: Sequence[str] | set[str]) -> None:
        if self.journal is not None:
            self.journal.append(("admit", sorted(set(names) - self._columns.keys())))
        for name in sorted(set(names) - self._columns.keys()):
            if name == HOLE:
                continue
            holes = self.holes()
            if holes:  # a reclaimed column, lowest first
                col = holes[0]
                self._columns[name] = col
                self.fields[col] = name
                self._names[col] = _ValueNames(self.names_per_column)
                self._untracked.discard(name)
            elif len(self.fields) < self.max_fields:
                self._columns[name] = len(self.fields)
                self.fields.append(name)
                self._names.append(_ValueNames(self.names_per_column))
                self._untracked.discard(name)
            elif name not in self._untracked:
                if len(self._untracked) < _UNTRACKED_NAMES_CAP:
                    self._untracked.add(name)
                else:
                    self.untracked_overflow += 1

    def encode(self, features: list[dict[str, Any]]) -> EncodedBatch:
        """Hash a batch of feature dicts; new names get columns first (sorted, for determinism)."""
        n = len(features)
        if n == 0:
            return EncodedBatch(list(self.fields), np.zeros((0, len(self.fields)), np.uint64))
        first = tuple(features[0])
        if all(map(first.__eq__, map(tuple, features))):
            # The usual batch: every dict has the same keys in the same order; transpose in C.
            return self.encode_columns(first, list(zip(*map(dict.values, features), strict=True)), n)
        names: set[str] = set().union(*features)
        return self.encode_columns(sorted(names), [[f.get(name) for f in features] for name in sorted(names)], n)

    def encode_columns(self, names: Sequence[str], columns: Sequence[Sequence[Any]], n: int) -> EncodedBatch:
        """Hash ``n`` examples given column-wise: ``columns[k]`` holds field ``names[k]``'s values."""
        hashed = hash_columns(columns)
        return self.encode_hashed(names, [(h, col.__getitem__) for h, col in zip(hashed, columns, strict=True)], n)

    def encode_hashed(self, names: Sequence[str], hashed: Sequence[tuple[np.ndarray, Callable[[int], Any]]],
                      n: int) -> EncodedBatch:
        """Place pre-hashed columns: ``hashed[k]`` is field ``names[k]``'s hashes (from this module's
        functions) and a function giving the value of row ``i`` (called only to remember names)."""
        if self.admit_new and not set(names) <= self._columns.keys():
            self._admit(names)
        out = np.full((n, len(self.fields)), MISSING, dtype=np.uint64)
        for name, (hashes, value_of) in zip(names, hashed, strict=True):
            col = self._columns.get(name)
            if col is None:
                if self.unadmitted is not None:
                    rows = np.flatnonzero(hashes != MISSING)
                    if len(rows):
                        self.unadmitted.append((name, rows, hashes[rows]))
                continue
            out[:, col] = hashes
            self._names[col].learn(hashes, value_of, self.journal, col)
        return EncodedBatch(list(self.fields), out)

    def admit(self, names: Sequence[str]) -> None:
        """Give columns to ``names`` now (sorted, as a batch would; reclaimed columns first, lowest
        first); known names are ignored."""
        self._admit(names)

    def release(self, col: int) -> str:
        """Reclaim column ``col``: its name loses it (and its remembered values); the column holds
        :data:`HOLE` until :meth:`admit` gives it to a name. Returns the name it had."""
        name = self.fields[col]
        if name == HOLE:
            raise ValueError(f"column {col} is not in use")
        del self._columns[name]
        self.fields[col] = HOLE
        self._names[col] = _ValueNames(0)
        return name

    def holes(self) -> list[int]:
        """Reclaimed columns not given again, in order."""
        if len(self._columns) == len(self.fields):
            return []
        return [c for c, name in enumerate(self.fields) if name == HOLE]

    def take_journal(self) -> list[tuple[Any, ...]]:
        """The changes journalled since the last call (journalling stays on)."""
        taken, self.journal = self.journal or [], []
        return taken

    def replay(self, journal: Sequence[tuple[Any, ...]]) -> None:
        """Apply another interner's :meth:`take_journal` entries: the same columns, untracked
        names and remembered values, in the same order, as if this one had encoded its batches."""
        for entry in journal:
            if entry[0] == "admit":
                self._admit(entry[1])
            else:
                _, col, h, value = entry
                self._names[col].remember(h, value)

    def values_for(self, col: int, hashes: list[int]) -> list[str]:
        """Names of the values with these hashes that the column remembers (see the module docstring)."""
        return [display(v) for v in self.values_of(col, hashes)]

    def values_of(self, col: int, hashes: list[int]) -> list[Any]:
        """The values themselves (as the events carried them: str, int, float or bool) with these
        hashes that the column remembers, in the order of ``hashes`` without repeats. The mask
        carries closed values with their JSON type, so the type must survive to it."""
        names = self._names[col].names or {}
        return [names[h] for h in dict.fromkeys(map(int, hashes)) if h in names]

    def snapshot(self) -> dict[str, Any]:
        return {
            "hash": HASH_VERSION,
            "max_fields": self.max_fields,
            "names_per_column": self.names_per_column,
            "fields": list(self.fields),
            "untracked": sorted(self._untracked),
            "untracked_overflow": self.untracked_overflow,
            "admit_new": self.admit_new,
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Interner:
        """Rebuild from :meth:`snapshot`; remembered value names start empty and refill as values arrive.

        Raises :class:`HashVersionError` for a snapshot of another hash version (its MI counts are
        keyed by other hashes): start from an empty state directory and replay the input.
        """
        version = snap.get("hash", "blake2b-8")
        if version != HASH_VERSION:
            raise HashVersionError(
                f"the state was written with value hash {version!r}, this version uses {HASH_VERSION!r}; "
                "start from an empty state directory (and replay the input) to rebuild it")
        interner = cls(int(snap["max_fields"]), int(snap.get("names_per_column", 1024)),
                       admit_new=bool(snap.get("admit_new", True)))
        interner._admit_in_order(snap["fields"])
        interner._untracked = set(snap.get("untracked", ()))
        interner.untracked_overflow = int(snap.get("untracked_overflow", 0))
        return interner

    def _admit_in_order(self, names: Sequence[str]) -> None:
        for name in names:
            if name != HOLE:
                self._columns[name] = len(self.fields)
            self.fields.append(name)
            self._names.append(_ValueNames(self.names_per_column if name != HOLE else 0))
