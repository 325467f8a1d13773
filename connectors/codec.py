"""Event codec, schema v1 (docs/events.md, schemas/event.schema.json): bytes ⇄ ``Impression`` / ``Click`` / ``Labeled``.

Decoding is the first thing done to every input record (~80k/s), so the good
path is ``orjson.loads`` plus a handful of C-level checks; the slow,
diagnostic work (telling NaN from plain bad JSON, naming the offending
field) only runs for records that are already known to be bad.

Every failure is an :class:`EventError` whose ``reason`` is one of the fixed
strings in :data:`REASONS` (safe as a metric label) and whose ``detail`` names
the offending *field* but never a value or an id (safe for logs and
dead-letter headers).

Choices worth knowing:

* ``ts`` and ``label`` must be JSON integers; ``true``/``false`` are rejected
  (Python's ``bool`` is an ``int``, JSON's is not). ``label`` must be 0 or 1.
* ``ts`` must lie in ``[0, 2**53)`` epoch ms; whether it is plausible *now*
  is the join's business (it knows the watermark).
* Feature values are ``str``, ``int``, ``float``, ``bool`` or ``null``.
  Nested objects or arrays are ``bad_feature_value``. orjson refuses
  non-finite numbers (``NaN``, ``Infinity``, ``1e999``), reported as
  ``non_finite``; so every float that gets through is finite.
* Unknown top-level keys are ignored (forward compatibility).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson

Value = str | int | float | bool | None
Features = dict[str, Value]

REASONS: frozenset[str] = frozenset(
    {
        "too_large", "not_utf8", "not_json", "non_finite", "not_object", "unknown_type",
        "missing_field", "wrong_type", "bad_feature_value", "too_many_fields",
        "field_name_too_long", "value_too_long", "empty",
    }
)

TS_MAX = 2**53  # exclusive; beyond this epoch ms stop being exact in a double
_SCALARS = frozenset({str, int, float, bool, type(None)})
_NAME_SHOWN = 40  # how much of an over-long field name a detail may quote


class EventError(ValueError):
    """A record that is not a valid schema-v1 event.

    ``reason`` is one of :data:`REASONS` (bounded: usable as a metric label);
    ``detail`` is for humans and names at most a field, never a value or id.
    """

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Impression:
    """An ad shown: ``id`` (impression id), ``ts`` (event time, epoch ms), ``features``."""

    id: str
    ts: int
    features: Features


@dataclass(slots=True)
class Click:
    """A click on impression ``id`` at event time ``ts``; optional ``features`` are not joined."""

    id: str
    ts: int
    features: Features | None = None


@dataclass(slots=True)
class Labeled:
    """An already-joined example: ``label`` is 0 or 1."""

    ts: int
    features: Features
    label: int


Event = Impression | Click | Labeled


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what one record may hold; anything beyond is an :class:`EventError`."""

    max_message_bytes: int = 64 * 1024
    max_fields: int = 512
    max_field_name_len: int = 128
    max_value_len: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_fields", "max_field_name_len", "max_value_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")


DEFAULT_LIMITS = Limits()


class _NonFinite(Exception):
    pass


def _reject_constant(_: str) -> Any:
    raise _NonFinite


def _parse_failure(raw: bytes, exc: orjson.JSONDecodeError) -> EventError:
    """Classify bytes that orjson refused. Runs only for bad records, so it may be slow."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return EventError("not_utf8", "record is not valid UTF-8")
    if "infinity" in str(exc).lower():  # orjson: "number is infinity when parsed as double"
        return EventError("non_finite", "a number overflows to infinity")
    try:
        json.loads(text, parse_constant=_reject_constant)
    except _NonFinite:
        return EventError("non_finite", "NaN or Infinity literal")
    except (ValueError, RecursionError):
        pass
    return EventError("not_json", f"invalid JSON at char {exc.pos}")


def _short(name: str) -> str:
    return name if len(name) <= _NAME_SHOWN else name[:_NAME_SHOWN] + "…"


def _check_ts(obj: dict[str, Any]) -> int:
    ts = obj.get("ts")
    if type(ts) is not int:  # noqa: E721 - bool is an int subclass and must be refused
        if ts is None:
            raise EventError("missing_field", "ts")
        raise EventError("wrong_type", "ts must be an integer (epoch ms)")
    if not 0 <= ts < TS_MAX:
        raise EventError("wrong_type", "ts outside the epoch-ms range [0, 2**53)")
    return ts


def _check_id(obj: dict[str, Any], limits: Limits) -> str:
    ident = obj.get("id")
    if type(ident) is not str:  # noqa: E721
        if ident is None:
            raise EventError("missing_field", "id")
        raise EventError("wrong_type", "id must be a string")
    if not ident:
        raise EventError("missing_field", "id is empty")
    if len(ident) > limits.max_value_len:
        raise EventError("value_too_long", "id")
    return ident


def _check_features(feats: Any, raw_len: int, limits: Limits) -> Features:
    if type(feats) is not dict:  # noqa: E721
        raise EventError("wrong_type", "features must be an object")
    if len(feats) > limits.max_fields:
        raise EventError("too_many_fields", f"{len(feats)} fields, limit {limits.max_fields}")
    # A name or value cannot be longer than the whole record, so short records skip these scans.
    cap = limits.max_field_name_len
    if raw_len > cap and feats and max(map(len, feats)) > cap:
        name = next(k for k in feats if len(k) > cap)
        raise EventError("field_name_too_long", _short(name))
    types = set(map(type, feats.values()))
    if not types <= _SCALARS:
        name = next(k for k, v in feats.items() if type(v) not in _SCALARS)
        raise EventError("bad_feature_value", f"{_short(name)}: objects and arrays are not allowed")
    if raw_len > limits.max_value_len and str in types:
        cap = limits.max_value_len
        for k, v in feats.items():
            if type(v) is str and len(v) > cap:  # noqa: E721
                raise EventError("value_too_long", _short(k))
    # No finiteness scan: orjson refuses NaN, Infinity and overflowing numbers, so every float
    # that got this far is finite (test_codec proves the three spellings are non_finite).
    return feats


def decode(raw: bytes | None, limits: Limits = DEFAULT_LIMITS) -> Event:
    """Decode one record into an event, or raise :class:`EventError` (and nothing else)."""
    return _decode(raw, limits, deep=True)


def _check_features_shallow(feats: Any, limits: Limits) -> Features:
    """The per-event part of :func:`_check_features`; :func:`decode_many` checks the rest per batch."""
    if type(feats) is not dict:  # noqa: E721
        raise EventError("wrong_type", "features must be an object")
    if len(feats) > limits.max_fields:
        raise EventError("too_many_fields", f"{len(feats)} fields, limit {limits.max_fields}")
    return feats


def _decode(raw: bytes | None, limits: Limits, deep: bool) -> Event:
    """:func:`decode`; with ``deep=False`` the scans of feature names and values of impressions
    and clicks are left to the caller (:func:`decode_many` runs them once per batch). A labelled
    event's features are always scanned here: its label is checked after them, so the error a
    record gets does not depend on ``deep``."""
    if not raw:
        raise EventError("empty", "record has no value (tombstone or empty)")
    n = len(raw)
    if n > limits.max_message_bytes:
        raise EventError("too_large", f"{n} bytes, limit {limits.max_message_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _parse_failure(bytes(raw), exc) from None
    if type(obj) is not dict:  # noqa: E721
        raise EventError("not_object", "top level must be a JSON object")

    def features(value: Any) -> Features:
        return _check_features(value, n, limits) if deep else _check_features_shallow(value, limits)

    kind = obj.get("type")
    if kind == "impression":
        ident = _check_id(obj, limits)
        ts = _check_ts(obj)
        if "features" not in obj:
            raise EventError("missing_field", "features")
        return Impression(ident, ts, features(obj["features"]))
    if kind == "click":
        ident = _check_id(obj, limits)
        ts = _check_ts(obj)
        feats = obj.get("features")
        return Click(ident, ts, None if feats is None else features(feats))
    if kind == "labeled":
        ts = _check_ts(obj)
        if "features" not in obj:
            raise EventError("missing_field", "features")
        labeled_feats = _check_features(obj["features"], n, limits)
        label = obj.get("label")
        if type(label) is not int:  # noqa: E721
            if label is None:
                raise EventError("missing_field", "label")
            raise EventError("wrong_type", "label must be the integer 0 or 1")
        if label != 0 and label != 1:
            raise EventError("wrong_type", "label must be the integer 0 or 1")
        return Labeled(ts, labeled_feats, label)
    if kind is None:
        raise EventError("missing_field", "type")
    raise EventError("unknown_type", "type must be impression, click or labeled")


def decode_many(
    raws: Sequence[bytes | None], limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Event], list[tuple[int, EventError]]]:
    """Decode a batch: the good events in input order, and ``(index, error)`` for each bad record.

    Bad records never stop the batch, so the caller can dead-letter them and
    keep the good ones around them (the i-th good event is the i-th index not
    listed among the errors). Every record gets exactly the event or error that
    :func:`decode` gives it: the scans of feature names and values run once over
    the whole batch, and only a batch where they find something is checked again
    record by record.

    The loop inlines the checks of a well-formed impression or click (one ``orjson.loads``,
    a few type tests); a record that fails any of them is decoded again by :func:`_decode`,
    which finds and names its error, so the fast path only decides *when* that runs.
    """
    good: list[Event] = []
    where: list[int] = []
    bad: list[tuple[int, EventError]] = []
    append, mark = good.append, where.append
    loads, bad_json = orjson.loads, orjson.JSONDecodeError
    max_bytes, max_id, max_fields = limits.max_message_bytes, limits.max_value_len, limits.max_fields
    for i, raw in enumerate(raws):
        if raw and len(raw) <= max_bytes:
            try:
                obj = loads(raw)
            except bad_json:
                obj = None
            if obj.__class__ is dict:
                ident, ts = obj.get("id"), obj.get("ts")
                if (ident.__class__ is str and ts.__class__ is int
                        and 0 < len(ident) <= max_id and 0 <= ts < TS_MAX):
                    kind, feats = obj.get("type"), obj.get("features")
                    if feats.__class__ is dict and len(feats) <= max_fields:
                        if kind == "impression":
                            append(Impression(ident, ts, feats))
                            mark(i)
                            continue
                        if kind == "click":
                            append(Click(ident, ts, feats))
                            mark(i)
                            continue
                    elif feats is None and kind == "click":
                        append(Click(ident, ts))
                        mark(i)
                        continue
        try:
            append(_decode(raw, limits, deep=False))
            mark(i)
        except EventError as err:
            bad.append((i, err))
    if not good:
        return good, bad
    kept_raws = raws if not bad else [raws[i] for i in where]
    long_records = max(map(len, kept_raws)) > limits.max_value_len  # type: ignore[arg-type]
    if long_records or not _features_fine(good, kept_raws, limits):  # type: ignore[arg-type]
        kept: list[Event] = []
        for i, ev in zip(where, good, strict=True):
            try:
                if ev.features is not None:
                    _check_features(ev.features, len(raws[i]), limits)  # type: ignore[arg-type]
                kept.append(ev)
            except EventError as err:
                bad.append((i, err))
        bad.sort(key=lambda item: item[0])
        good = kept
    return good, bad


def _features_fine(events: list[Event], raws: Sequence[bytes], limits: Limits) -> bool:
    """True when no feature name is too long and every value is a scalar, over a whole batch.

    A non-scalar value is an object or an array, so it needs a ``{`` or ``[`` beyond the one
    ``{`` of each record and of each features object: when the batch's bytes hold no more than
    those, every value is a scalar without looking at one (a brace inside a string or an unknown
    nested key only sends the batch to the exact scan).
    """
    feats = [ev.features for ev in events if ev.features is not None]
    first = tuple(feats[0]) if feats else ()
    # the usual batch: every record has the same names in the same order; check them once
    same = all(map(first.__eq__, map(tuple, feats)))
    names = first if same else chain.from_iterable(feats)
    if max(map(len, names), default=0) > limits.max_field_name_len:
        return False
    blob = b"".join(raws)
    if blob.count(b"[") == 0 and blob.count(b"{") == len(events) + len(feats):
        return True
    return set(map(type, chain.from_iterable(map(dict.values, feats)))) <= _SCALARS


def encode(event: Event) -> bytes:
    """Serialise an event to its schema-v1 JSON bytes (the inverse of :func:`decode`)."""
    if type(event) is Impression:
        obj: dict[str, Any] = {"type": "impression", "id": event.id, "ts": event.ts}
        obj["features"] = event.features
    elif type(event) is Click:
        obj = {"type": "click", "id": event.id, "ts": event.ts}
        if event.features is not None:
            obj["features"] = event.features
    elif type(event) is Labeled:
        obj = {"type": "labeled", "ts": event.ts, "features": event.features, "label": event.label}
    else:
        raise TypeError(f"not an event: {type(event).__name__}")
    return orjson.dumps(obj)
