"""The mask message, for the daemon's code and existing imports: it is featsieve_client's.

The one definition lives in the featsieve-client distribution
(:mod:`featsieve_client.mask`, with :func:`featsieve_client.apply.apply`); this module
re-exports it so that ``from connectors.mask_message import ...`` keeps working.
docs/mask-format.md describes the format.
"""

from __future__ import annotations

from featsieve_client.apply import apply
from featsieve_client.mask import (
    SCHEMA,
    ClosedValue,
    FieldChange,
    FieldEntry,
    MaskDiff,
    MaskFormatError,
    MaskMessage,
    changes,
    closed_value,
    closed_value_key,
    closed_value_matches,
    decode,
    diff,
    encode,
    field_to_dict,
    from_dict,
    is_newer,
    render_table,
    to_dict,
)

__all__ = [
    "SCHEMA",
    "ClosedValue",
    "FieldChange",
    "FieldEntry",
    "MaskDiff",
    "MaskFormatError",
    "MaskMessage",
    "apply",
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
