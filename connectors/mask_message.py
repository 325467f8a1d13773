"""The mask message (schema 1): dataclasses, JSON codec, ordering, and applying a mask.

Serving code imports this module on its own: it depends on the standard
library and orjson only (never torch, kafka, numpy or prometheus_client).

Wire format (JSON object, keys sorted, UTF-8)::

    {"schema": 1, "model_id": "ctr", "version": 42, "epoch": 3,
     "created_at": 1718000000000,          # wall clock of the writer, epoch ms (UTC)
     "watermark": 1717999000000,           # event time the evidence reaches, epoch ms
     "writer": "host-1:4242",              # optional: instance that wrote it
     "policy": {"mode": "both", ...},      # optional: summary of the policy settings
     "fields": {"site": {"keep": true, "score": 0.0031, "gate_open": 0.97,
                         "reason": "score_above_enter", "z": 12.5, "examples": 100000,
                         "positives": 2100, "closed_values": ["x", "y"]}}}

``created_at`` and ``watermark`` are integers (epoch milliseconds) rather than
ISO strings so that they compare and subtract without parsing;
:func:`render_table` shows them as ISO-8601. Unknown keys are ignored on
decode, so a newer writer may add keys without breaking older subscribers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

SCHEMA = 1
__all__ = [
    "SCHEMA",
    "FieldEntry",
    "MaskFormatError",
    "MaskMessage",
    "apply",
    "decode",
    "diff",
    "encode",
    "field_to_dict",
    "is_newer",
    "render_table",
    "to_dict",
    "from_dict",
]


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


@dataclass(frozen=True)
class FieldEntry:
    """The mask's verdict on one field.

    ``closed_values`` lists (as strings) the values whose gates are closed; a
    serving model treats them as missing. None when not applicable. Values are
    spelled as the writer names them: strings as themselves, booleans as
    ``true``/``false``, numbers as Python writes them (``1``, ``2.5``).
    """

    keep: bool
    score: float
    gate_open: float | None = None
    reason: str = ""
    z: float | None = None
    examples: int | None = None
    positives: int | None = None
    closed_values: Sequence[str] | None = None  # stored as a tuple
    _closed: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

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
                raise MaskFormatError(f"closed_values must be a list of strings, got {cv!r}")
            if not all(isinstance(v, str) for v in cv):
                raise MaskFormatError(f"closed_values must be a list of strings, got {cv!r}")
            object.__setattr__(self, "closed_values", tuple(cv))
            object.__setattr__(self, "_closed", frozenset(cv))

    def is_closed(self, value: object) -> bool:
        """True when ``value`` (compared by its spelling, see the class docstring) has a closed gate."""
        return bool(self._closed) and value is not None and _spelling(value) in self._closed


def _spelling(value: object) -> str:
    # The writer (models.interning.display) names booleans in JSON spelling; str(True)
    # would be "True" and never match a closed boolean value.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, kw_only=True)
class MaskMessage:
    """One published mask of one model; ``(epoch, version)`` orders masks (see :func:`is_newer`).

    ``created_at`` and ``watermark`` are epoch milliseconds (UTC). ``fields``
    is stored in name order. Construction validates and raises MaskFormatError.
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

    def kept(self) -> list[str]:
        """Names of the kept fields, in name order."""
        return [n for n, f in self.fields.items() if f.keep]


def _check_schema(v: object) -> None:
    # An exact int: 1.0 == 1 in Python but would be re-encoded as "schema": 1.0.
    if type(v) is not int or v != SCHEMA:
        raise MaskFormatError(f"unsupported schema {v!r}; this reader knows {SCHEMA}")


# ------------------------------------------------------------------ codec
def field_to_dict(entry: FieldEntry) -> dict[str, Any]:
    """The JSON object of one field entry."""
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
    """The JSON object of a message (optional keys omitted when None)."""
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
    """Build a message from its JSON object; raises MaskFormatError saying what is wrong."""
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
    )


def decode(raw: bytes | bytearray | memoryview | str) -> MaskMessage:
    """Parse and validate one mask message; raises MaskFormatError for anything invalid."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MaskFormatError(f"not valid JSON: {exc}") from None
    except TypeError as exc:
        raise MaskFormatError(f"not bytes or text: {exc}") from None
    return from_dict(doc)


# ---------------------------------------------------------------- ordering
def is_newer(candidate: MaskMessage, current: MaskMessage | None) -> bool:
    """True when ``candidate`` should replace ``current``: (epoch, version) strictly greater.

    The epoch comes first: a new writer (higher epoch) wins even with a lower
    version, and a fenced old writer's late messages are rejected.
    """
    if current is None:
        return True
    return (candidate.epoch, candidate.version) > (current.epoch, current.version)


# ---------------------------------------------------------------- applying
def apply(
    mask: MaskMessage | None,
    features: Mapping[str, object],
    *,
    mode: Literal["remove", "null"] = "remove",
) -> dict[str, object]:
    """A new feature dict with ``mask`` applied; ``features`` is not modified.

    Dropped fields are removed (``mode="remove"``) or set to None
    (``mode="null"``); values whose gates are closed become None (missing).
    Fields the mask does not mention pass through unchanged: a new field
    reaches serving before the daemon has evidence about it, and the policy's
    initial decision for such a field is to keep it. With ``mask`` None (none
    received yet) every feature passes through.
    """
    if mode not in ("remove", "null"):
        raise ValueError(f"apply mode must be 'remove' or 'null', got {mode!r}")
    if mask is None:
        return dict(features)
    out: dict[str, object] = {}
    fields = mask.fields
    for name, value in features.items():
        entry = fields.get(name)
        if entry is None:
            out[name] = value
        elif not entry.keep:
            if mode == "null":
                out[name] = None
        else:
            out[name] = None if entry.is_closed(value) else value
    return out


# ------------------------------------------------------------- for humans
def _state(f: FieldEntry) -> str:
    return "kept" if f.keep else "dropped"


def _shown(text: str) -> str:
    # Names and closed values come from the input events: escape line breaks and
    # control characters so they can neither break the table nor drive the terminal.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def diff(old: MaskMessage | None, new: MaskMessage) -> list[str]:
    """Human-readable lines of what changed from ``old`` to ``new`` (decisions, closed values).

    Scores moving without a decision changing are not listed. Empty when
    nothing changed. Names, reasons and values are escaped as in :func:`render_table`.
    """
    before = old.fields if old is not None else {}
    lines: list[str] = []
    for key in sorted(set(before) | set(new.fields)):
        a, b, name = before.get(key), new.fields.get(key), _shown(key)
        if b is None:
            if a is not None:
                lines.append(f"{name}: no longer in the mask (was {_state(a)})")
            continue
        detail = f"({_shown(b.reason)}, score {b.score:.6g})"
        if a is None:
            lines.append(f"{name}: new, {_state(b)} {detail}")
        elif a.keep != b.keep:
            lines.append(f"{name}: {_state(a)} -> {_state(b)} {detail}")
        old_closed = set(a.closed_values or ()) if a else set()
        new_closed = set(b.closed_values or ())
        if old_closed != new_closed:
            parts = [f"+{_shown(v)}" for v in sorted(new_closed - old_closed)]
            parts += [f"-{_shown(v)}" for v in sorted(old_closed - new_closed)]
            lines.append(f"{name}: closed values {' '.join(parts)}")
    return lines


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):  # valid (an int >= 0) but past year 9999
        return f"{ms} ms"


def render_table(msg: MaskMessage, *, max_closed: int = 5) -> str:
    """A fixed-width table of the message for terminals (fields in name order).

    One line per field; non-printable characters in names, reasons and values
    are shown escaped (``\\n``, ``\\x1b``).
    """
    kept = len(msg.kept())
    head = [
        f"model {_shown(msg.model_id)}  epoch {msg.epoch}  version {msg.version}"
        + (f"  writer {_shown(msg.writer)}" if msg.writer else ""),
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
            shown = ", ".join(_shown(v) for v in f.closed_values[:max_closed])
            more = len(f.closed_values) - max_closed
            row += f"  [{shown}{f', +{more} more' if more > 0 else ''}]"
        rows.append(row)
    return "\n".join(head + rows)
