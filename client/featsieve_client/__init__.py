"""featsieve-client: read featsieve's feature masks from Kafka and apply them in serving code.

Depends on kafka-python and orjson only, and changes nothing in kafka-python.

* :mod:`featsieve_client.mask`: the mask message (parse, validate, order, diff).
* :class:`MaskSubscriber`: keeps the newest mask of one model, from the mask topic.
* :func:`apply`: a request's features with a mask applied.
"""

from featsieve_client.apply import apply
from featsieve_client.mask import (
    SCHEMA,
    FieldChange,
    FieldEntry,
    MaskDiff,
    MaskFormatError,
    MaskMessage,
    changes,
    closed_value_matches,
    decode,
    diff,
    encode,
    is_newer,
)
from featsieve_client.subscriber import MaskSubscriber, Readiness

__version__ = "0.1.0"
"""The version of this distribution."""

__all__ = [
    "SCHEMA",
    "FieldChange",
    "FieldEntry",
    "MaskDiff",
    "MaskFormatError",
    "MaskMessage",
    "MaskSubscriber",
    "Readiness",
    "apply",
    "changes",
    "closed_value_matches",
    "decode",
    "diff",
    "encode",
    "is_newer",
]
