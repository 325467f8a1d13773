"""Applying a mask to one request's features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from featsieve_client.mask import MaskMessage

__all__ = ["apply"]


def apply(
    mask: MaskMessage | None,
    features: Mapping[str, object],
    *,
    mode: Literal["remove", "null"] = "remove",
) -> dict[str, object]:
    """A new feature dict with ``mask`` applied; ``features`` is not modified.

    * A field the mask drops (``keep`` false) is removed (``mode="remove"``) or set to None
      (``mode="null"``).
    * A kept field whose value matches one of its ``closed_values`` (the rule of
      :func:`featsieve_client.mask.closed_value_matches`: strings, booleans and numbers
      compared within their own type, numbers by value) becomes None (missing).
    * A field the mask does not mention passes through unchanged: a new field reaches serving
      before the daemon has evidence about it, and the policy's initial decision for such a
      field is to keep it. Fields only in the mask are not added.
    * With ``mask`` None (none received yet) every feature passes through.
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
