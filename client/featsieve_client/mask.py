"""The mask message (schema 1): model, JSON codec, validation, ordering and diff.

This is the one definition of the message: the featsieve daemon writes it with
this module and serving code reads it with this module. It depends on the
standard library and orjson only. docs/mask-format.md in the featsieve
repository describes every field for readers in other languages, and
schemas/mask.schema.json is its JSON Schema.

Wire format (JSON object, keys sorted, UTF-8)::

    {"schema": 1, "model_id": "ctr", "version": 42, "epoch": 3,
     "incarnation": "5f0c...",             # optional: id of the writer's state lineage
     "sample_rate": 0.1,                   # optional: share of keys the evidence was sampled at
     "created_at": 1718000000000,          # wall clock of the writer, epoch ms (UTC)
     "watermark": 1717999000000,           # event time the evidence reaches, epoch ms
     "writer": "host-1:4242",              # optional: instance that wrote it
     "policy": {"mode": "both", ...},      # optional: summary of the policy settings
     "fields": {"site": {"keep": true, "score": 0.0031, "gate_open": 0.97,
                         "reason": "score_above_enter", "z": 12.5, "examples": 100000,
                         "positives": 2100, "closed_values": ["x", 3, true]}}}

``created_at`` and ``watermark`` are integers (epoch milliseconds) so that they
compare and subtract without parsing; :func:`render_table` shows them as
ISO-8601. Unknown keys are ignored on decode, so a newer writer may add keys
without breaking older subscribers.

Closed values are JSON-typed (see :func:`closed_value_matches` for the rule
every language implements): strings, integers, booleans, and non-integral
numbers. Masks written before typed values carried only strings; they parse,
and are matched by the same rule (their strings match string values only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

SCHEMA = 1
"""The schema number this module reads and writes."""

ClosedValue = str | int | float | bool
"""The type of one closed value: a JSON string, integer, boolean or (non-integral) number."""

__all__ = [
    "SCHEMA",
    "ClosedValue",
    "FieldChange",
    "FieldEntry",
    "MaskDiff",
    "MaskFormatError",
    "MaskMessage",
    "changes",
    "closed_value",
    "closed_value_key",
    "closed_value_matches",
    "decode",
    "diff",
    "encode",
    "field_to_dict",
    "from_dict",
    "is_newer",
    "render_table",
    "to_dict",
]

_INT_MIN, _INT_END = -(1 << 63), 1 << 64  # what JSON readers of other languages hold as an integer


class MaskFormatError(ValueError):
    """A mask message is not valid schema-1 content; the message says what is wrong."""


def _check_float(where: str, v: object, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int | float):
        kind = "a number or null" if optional else "a number"
        raise MaskFormatError(f"{where} must be {kind}, got {v!r}")
    if not math.isfinite(v):
        raise MaskFormatError(f"{where} must be finite (JSON has no NaN/inf), got {v!r}")


def _check_int(where: str, v: object, *, optional: bool = False, minimum: int = 0) -> None:
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        kind = "an integer or null" if optional else "an integer"
        raise MaskFormatError(f"{where} must be {kind}, got {v!r}")
    if v < minimum:
        raise MaskFormatError(f"{where} must be >= {minimum}, got {v}")


# ------------------------------------------------------------ closed values
def closed_value(value: object) -> ClosedValue | None:
    """``value`` as a mask carries it in ``closed_values``, or None when it cannot be carried.

    Strings and booleans are themselves; an integer is itself when a 64-bit JSON reader holds
    it (``-2**63 <= v < 2**64``); a finite float that is integral becomes that integer (``3.0``
    → ``3``), a non-integral one stays a number. Anything else (None, NaN, infinities, lists,
    objects, larger integers) is not carried: it could never match by :func:`closed_value_matches`
    in every language alike.
    """
    cls = value.__class__
    if cls is str or cls is bool:
        return value  # type: ignore[return-value]
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value < _INT_END else None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            as_int = int(value)
            return as_int if _INT_MIN <= as_int < _INT_END else float(value)
        return float(value)
    if isinstance(value, str):
        return str(value)
    return None


def closed_value_key(value: ClosedValue) -> tuple[int, Any]:
    """Sort and identity key of a closed value: booleans, then numbers by value, then strings.

    Two closed values are the same value exactly when their keys are equal (``3`` and ``3.0``
    are; ``1`` and ``True`` are not; ``"3"`` and ``3`` are not).
    """
    if isinstance(value, bool):
        return (0, value)
    if isinstance(value, int | float):
        return (1, value)
    return (2, value)


def closed_value_matches(value: object, closed: ClosedValue) -> bool:
    """The matching rule, the same in every language: does feature ``value`` equal ``closed``?

    * both strings and equal;
    * both booleans and equal;
    * both numbers (booleans are not numbers) and numerically equal: ``3`` matches ``3.0``,
      compared exactly (no rounding: ``2**53 + 1`` does not match ``2.0**53``);
    * never across types: ``"3"`` does not match ``3``, ``true`` does not match ``1``,
      and ``null`` (a missing value) matches nothing.
    """
    if value is None:
        return False
    if isinstance(value, bool) or isinstance(closed, bool):
        return isinstance(value, bool) and isinstance(closed, bool) and value == closed
    if isinstance(value, str) or isinstance(closed, str):
        return isinstance(value, str) and isinstance(closed, str) and value == closed
    if isinstance(value, int | float) and isinstance(closed, int | float):
        return value == closed  # Python compares int and float exactly
    return False


def _value_text(v: ClosedValue) -> str:
    """A closed value for humans: strings as themselves, others in JSON spelling."""
    if isinstance(v, str):
        return v
    return orjson.dumps(v).decode()


@dataclass(frozen=True)
class FieldEntry:
    """The mask's verdict on one field.

    ``keep`` False: serving drops the field. ``closed_values`` lists values whose gates are
    closed (serving treats them as missing), or None when not applicable; items are JSON
    strings, integers, booleans or numbers, normalised by :func:`closed_value` (``3.0`` is
    stored as ``3``) and matched by :func:`closed_value_matches`. Construction validates and
    raises :class:`MaskFormatError`.
    """

    keep: bool
    score: float
    gate_open: float | None = None
    reason: str = ""
    z: float | None = None
    examples: int | None = None
    positives: int | None = None
    closed_values: Sequence[ClosedValue] | None = None  # stored as a tuple
    _closed: frozenset[tuple[int, Any]] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keep, bool):
            raise MaskFormatError(f"keep must be true or false, got {self.keep!r}")
        _check_float("score", self.score)
        _check_float("gate_open", self.gate_open, optional=True)
        if self.gate_open is not None and not 0.0 <= self.gate_open <= 1.0:
            raise MaskFormatError(f"gate_open must be in [0, 1], got {self.gate_open!r}")
        if not isinstance(self.reason, str):
            raise MaskFormatError(f"reason must be a string, got {self.reason!r}")
        _check_float("z", self.z, optional=True)
        _check_int("examples", self.examples, optional=True)
        _check_int("positives", self.positives, optional=True)
        if self.closed_values is not None:
            cv = self.closed_values
            if isinstance(cv, str | bytes) or not isinstance(cv, Sequence):
                raise MaskFormatError(f"closed_values must be a list, got {cv!r}")
            values: list[ClosedValue] = []
            for v in cv:
                carried = closed_value(v)
                if carried is None:
                    raise MaskFormatError(
                        "closed_values items must be strings, booleans, integers (64-bit) or finite "
                        f"numbers, got {v!r}"
                    )
                values.append(carried)
            object.__setattr__(self, "closed_values", tuple(values))
            object.__setattr__(self, "_closed", frozenset(closed_value_key(v) for v in values))

    def is_closed(self, value: object) -> bool:
        """True when feature ``value`` matches one of the closed values (:func:`closed_value_matches`)."""
        if not self._closed or not isinstance(value, str | int | float):  # bool is an int
            return False
        # keys compare numbers exactly across int and float (3 == 3.0, equal hashes), keep
        # booleans, numbers and strings apart, and NaN equals nothing
        return closed_value_key(value) in self._closed

    def closed_keys(self) -> frozenset[tuple[int, Any]]:
        """The :func:`closed_value_key` of every closed value (empty when there are none)."""
        return self._closed


@dataclass(frozen=True, kw_only=True)
class MaskMessage:
    """One published mask of one model; ``(epoch, version)`` orders masks (see :func:`is_newer`).

    ``created_at`` and ``watermark`` are epoch milliseconds (UTC). ``fields`` is stored in
    name order. ``incarnation`` identifies the writer's state lineage (None in masks of
    writers older than it). ``sample_rate`` is the key-hash sampling rate in (0, 1] the
    evidence was gathered at (None in masks of writers before sampling: read as 1).
    Construction validates and raises :class:`MaskFormatError`.
    """

    schema: int = SCHEMA
    model_id: str
    version: int
    epoch: int
    created_at: int
    watermark: int
    fields: Mapping[str, FieldEntry]
    writer: str | None = None
    policy: Mapping[str, Any] | None = None
    incarnation: str | None = None
    sample_rate: float | None = None

    def __post_init__(self) -> None:
        _check_schema(self.schema)
        if not isinstance(self.model_id, str) or not self.model_id:
            raise MaskFormatError(f"model_id must be a non-empty string, got {self.model_id!r}")
        for name in ("version", "epoch", "created_at", "watermark"):
            _check_int(name, getattr(self, name))
        if not isinstance(self.fields, Mapping):
            raise MaskFormatError(f"fields must be an object, got {type(self.fields).__name__}")
        for name, entry in self.fields.items():
            if not isinstance(name, str) or not name:
                raise MaskFormatError(f"field names must be non-empty strings, got {name!r}")
            if not isinstance(entry, FieldEntry):
                raise MaskFormatError(f"fields[{name!r}] must be a FieldEntry")
        object.__setattr__(self, "fields", dict(sorted(self.fields.items())))
        if self.writer is not None and not isinstance(self.writer, str):
            raise MaskFormatError(f"writer must be a string or null, got {self.writer!r}")
        if self.policy is not None and not isinstance(self.policy, Mapping):
            raise MaskFormatError(f"policy must be an object or null, got {self.policy!r}")
        if self.incarnation is not None and (not isinstance(self.incarnation, str) or not self.incarnation):
            raise MaskFormatError(f"incarnation must be a non-empty string or null, got {self.incarnation!r}")
        rate = self.sample_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1):
            raise MaskFormatError(f"sample_rate must be a number in (0, 1] or null, got {rate!r}")

    def kept(self) -> list[str]:
        """Names of the kept fields, in name order."""
        return [n for n, f in self.fields.items() if f.keep]


def _check_schema(v: object) -> None:
    # An exact int: 1.0 == 1 in Python but would be re-encoded as "schema": 1.0.
    if type(v) is not int or v != SCHEMA:
        raise MaskFormatError(f"unsupported schema {v!r}; this reader knows {SCHEMA}")


# ------------------------------------------------------------------ codec
def field_to_dict(entry: FieldEntry) -> dict[str, Any]:
    """The JSON object of one field entry (every key present; absent values are null)."""
    return {
        "keep": entry.keep,
        "score": entry.score,
        "gate_open": entry.gate_open,
        "reason": entry.reason,
        "z": entry.z,
        "examples": entry.examples,
        "positives": entry.positives,
        "closed_values": list(entry.closed_values) if entry.closed_values is not None else None,
    }


def to_dict(msg: MaskMessage) -> dict[str, Any]:
    """The JSON object of a message (optional top-level keys omitted when None)."""
    doc: dict[str, Any] = {
        "schema": msg.schema,
        "model_id": msg.model_id,
        "version": msg.version,
        "epoch": msg.epoch,
        "created_at": msg.created_at,
        "watermark": msg.watermark,
        "fields": {n: field_to_dict(f) for n, f in msg.fields.items()},
    }
    if msg.writer is not None:
        doc["writer"] = msg.writer
    if msg.policy is not None:
        doc["policy"] = dict(msg.policy)
    if msg.incarnation is not None:
        doc["incarnation"] = msg.incarnation
    if msg.sample_rate is not None:
        doc["sample_rate"] = msg.sample_rate
    return doc


def encode(msg: MaskMessage) -> bytes:
    """Deterministic JSON bytes (sorted keys): equal messages give equal bytes."""
    try:
        return orjson.dumps(to_dict(msg), option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # e.g. a non-JSON value inside the policy summary
        raise MaskFormatError(f"mask message cannot be encoded: {exc}") from exc


_FIELD_KEYS = ("keep", "score", "reason")
_OPTIONAL_FIELD_KEYS = ("gate_open", "z", "examples", "positives", "closed_values")


def from_dict(doc: object) -> MaskMessage:
    """Build a message from its JSON object; raises :class:`MaskFormatError` saying what is wrong."""
    if not isinstance(doc, dict):
        raise MaskFormatError(f"a mask message must be a JSON object, got {type(doc).__name__}")
    if "schema" not in doc:
        raise MaskFormatError("missing key 'schema'")
    _check_schema(doc["schema"])
    for key in ("model_id", "version", "epoch", "created_at", "watermark", "fields"):
        if key not in doc:
            raise MaskFormatError(f"missing key {key!r}")
    raw_fields = doc["fields"]
    if not isinstance(raw_fields, dict):
        raise MaskFormatError(f"'fields' must be an object, got {type(raw_fields).__name__}")
    fields: dict[str, FieldEntry] = {}
    for name, raw in raw_fields.items():
        if not isinstance(raw, dict):
            raise MaskFormatError(f"fields[{name!r}] must be an object, got {type(raw).__name__}")
        missing = [k for k in _FIELD_KEYS if k not in raw]
        if missing:
            raise MaskFormatError(f"fields[{name!r}] is missing {', '.join(map(repr, missing))}")
        kwargs = {k: raw[k] for k in _FIELD_KEYS}
        kwargs.update({k: raw.get(k) for k in _OPTIONAL_FIELD_KEYS})
        try:
            fields[name] = FieldEntry(**kwargs)
        except MaskFormatError as exc:
            raise MaskFormatError(f"fields[{name!r}]: {exc}") from None
    return MaskMessage(
        schema=doc["schema"],
        model_id=doc["model_id"],
        version=doc["version"],
        epoch=doc["epoch"],
        created_at=doc["created_at"],
        watermark=doc["watermark"],
        fields=fields,
        writer=doc.get("writer"),
        policy=doc.get("policy"),
        incarnation=doc.get("incarnation"),
        sample_rate=doc.get("sample_rate"),
    )


def decode(raw: bytes | bytearray | memoryview | str) -> MaskMessage:
    """Parse and validate one mask message; raises :class:`MaskFormatError` for anything invalid."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MaskFormatError(f"not valid JSON: {exc}") from None
    except TypeError as exc:
        raise MaskFormatError(f"not bytes or text: {exc}") from None
    return from_dict(doc)


# ---------------------------------------------------------------- ordering
def is_newer(candidate: MaskMessage, current: MaskMessage | None) -> bool:
    """True when a subscriber holding ``current`` should replace it with ``candidate``.

    * Nothing held: yes.
    * Both carry an ``incarnation`` and they differ: yes. A new incarnation means the writer
      started from nothing (no state, or a new or emptied mask topic), so its ``(epoch,
      version)`` may restart below the held one; refusing it would stall the subscriber on
      a mask nobody writes any more. (Zombie writers cannot get through this way: the
      writer's transactional producer is fenced by the broker, and subscribers read
      committed records only.)
    * Otherwise (same incarnation, or either message from a writer without incarnations):
      ``(epoch, version)`` strictly greater. The epoch comes first: a new writer (higher
      epoch) wins even with a lower version, and a fenced old writer's late messages lose.
    """
    if current is None:
        return True
    if candidate.incarnation is not None and current.incarnation is not None \
            and candidate.incarnation != current.incarnation:
        return True
    return (candidate.epoch, candidate.version) > (current.epoch, current.version)


# -------------------------------------------------------------------- diff
def _state(f: FieldEntry) -> str:
    return "kept" if f.keep else "dropped"


def _shown(text: str) -> str:
    # Names and closed values come from the input events: escape line breaks and
    # control characters so they can neither break the table nor drive the terminal.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _sorted_values(values: Iterable[ClosedValue]) -> list[ClosedValue]:
    return sorted(values, key=closed_value_key)


@dataclass(frozen=True)
class FieldChange:
    """How one field's decision changed between two masks.

    ``before``/``after`` are the entries (None: not in that mask). ``closed_added`` and
    ``closed_removed`` are the closed values that appeared and disappeared, in
    :func:`closed_value_key` order.
    """

    name: str
    before: FieldEntry | None
    after: FieldEntry | None
    closed_added: tuple[ClosedValue, ...] = ()
    closed_removed: tuple[ClosedValue, ...] = ()

    @property
    def keep_changed(self) -> bool:
        """True when the field appeared, disappeared, or switched between kept and dropped."""
        if self.before is None or self.after is None:
            return self.before is not self.after
        return self.before.keep != self.after.keep

    def lines(self) -> list[str]:
        """This change for humans (names and values escaped as in :func:`render_table`)."""
        a, b, name = self.before, self.after, _shown(self.name)
        out: list[str] = []
        if b is None:
            if a is not None:
                out.append(f"{name}: no longer in the mask (was {_state(a)})")
            return out
        detail = f"({_shown(b.reason)}, score {b.score:.6g})"
        if a is None:
            out.append(f"{name}: new, {_state(b)} {detail}")
        elif a.keep != b.keep:
            out.append(f"{name}: {_state(a)} -> {_state(b)} {detail}")
        if self.closed_added or self.closed_removed:
            parts = [f"+{_shown(_value_text(v))}" for v in self.closed_added]
            parts += [f"-{_shown(_value_text(v))}" for v in self.closed_removed]
            out.append(f"{name}: closed values {' '.join(parts)}")
        return out


@dataclass(frozen=True)
class MaskDiff:
    """The decision changes from one mask to another (see :func:`changes`); false when empty."""

    fields: tuple[FieldChange, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def lines(self) -> list[str]:
        """Every change for humans, one line per decision or closed-value change, fields in name order."""
        return [line for change in self.fields for line in change.lines()]


def changes(old: MaskMessage | None, new: MaskMessage) -> MaskDiff:
    """The decision changes from ``old`` (None: nothing held) to ``new``.

    A decision is whether a field is in the mask, whether it is kept, and which values are
    closed. Scores, z, examples, gate shares, versions and timestamps moving are not
    changes: a heartbeat re-publication gives an empty diff.
    """
    before = old.fields if old is not None else {}
    out: list[FieldChange] = []
    for key in sorted(set(before) | set(new.fields)):
        a, b = before.get(key), new.fields.get(key)
        old_closed = {closed_value_key(v): v for v in (a.closed_values or ())} if a else {}
        new_closed = {closed_value_key(v): v for v in (b.closed_values or ())} if b else {}
        added = tuple(new_closed[k] for k in sorted(new_closed.keys() - old_closed.keys()))
        removed = tuple(old_closed[k] for k in sorted(old_closed.keys() - new_closed.keys()))
        change = FieldChange(key, a, b, added, removed)
        if change.keep_changed or added or removed:
            out.append(change)
    return MaskDiff(tuple(out))


def diff(old: MaskMessage | None, new: MaskMessage) -> list[str]:
    """Human-readable lines of what changed from ``old`` to ``new`` (``changes(old, new).lines()``).

    Scores moving without a decision changing are not listed. Empty when nothing changed.
    """
    return changes(old, new).lines()


# ------------------------------------------------------------- for humans
def _iso(ms: int) -> str:
    from datetime import UTC, datetime  # only tables need it: keeps `import featsieve_client` light

    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):  # valid (an int >= 0) but past year 9999
        return f"{ms} ms"


def render_table(msg: MaskMessage, *, max_closed: int = 5) -> str:
    """A fixed-width table of the message for terminals (fields in name order).

    One line per field; non-printable characters in names, reasons and values are shown
    escaped (``\\n``, ``\\x1b``). Closed values are shown as strings or in JSON spelling.
    """
    kept = len(msg.kept())
    head = [
        f"model {_shown(msg.model_id)}  epoch {msg.epoch}  version {msg.version}"
        + (f"  writer {_shown(msg.writer)}" if msg.writer else "")
        + (f"  incarnation {_shown(msg.incarnation)}" if msg.incarnation else ""),
        f"created {_iso(msg.created_at)}  watermark {_iso(msg.watermark)}",
        f"kept {kept} of {len(msg.fields)} fields",
        "",
    ]
    width = max([5, *(len(_shown(n)) for n in msg.fields)])
    cols = f"{'field':<{width}} {'keep':>4} {'score':>11} {'z':>8} {'gate':>6} {'examples':>9}"
    rows = [f"{cols} {'positives':>9}  reason  [closed values]"]
    for name, f in msg.fields.items():
        z = "-" if f.z is None else f"{f.z:.1f}"
        gate = "-" if f.gate_open is None else f"{f.gate_open:.3f}"
        ex = "-" if f.examples is None else str(f.examples)
        pos = "-" if f.positives is None else str(f.positives)
        row = (
            f"{_shown(name):<{width}} {('yes' if f.keep else 'no'):>4} {f.score:>11.6f} {z:>8}"
            f" {gate:>6} {ex:>9} {pos:>9}  {_shown(f.reason)}"
        )
        if f.closed_values:
            shown = ", ".join(_shown(_value_text(v)) for v in f.closed_values[:max_closed])
            more = len(f.closed_values) - max_closed
            row += f"  [{shown}{f', +{more} more' if more > 0 else ''}]"
        rows.append(row)
    return "\n".join(head + rows)
