"""The parser of a faster reader of fetched record batches for kafka-python's consumer.

kafka-python 3.0 (3.0.12 checked) turns a fetched v2 record batch into ``ConsumerRecord`` s
one record at a time through four layers (``MemoryRecords`` → ``DefaultRecordBatch`` →
``DefaultRecord`` → ``ConsumerRecord``), with a Python function call per varint, per property
and per deserializer. On the daemon's poll loop that was ~7.5 µs of the ~13 µs each event cost
(py-spy, docs/internals.md), nearly the whole budget of a plain consumer.
:class:`connectors.kafka_compat.FastPartitionRecords` reads the same batches in one loop per
batch instead, with :func:`parse_records`: the same records, offsets, timestamps, keys, values
and headers come out, with the same CRC checks, skipping of control batches and
of aborted transactions under ``read_committed``, and the same positions for the next fetch.
Batches it does not know (message format v0/v1) go through the library's own reader.

This module holds the wire-format parsing (:func:`parse_records`), which touches nothing of the
library; the reader class, which is a kafka-python internal, and its installer live in
connectors/kafka_compat.py with the library's other internals. The library's types are kept,
so nothing downstream changes. tests/test_record_reader.py compares both readers record by record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from kafka.errors import CorruptRecordError

from models.sampling import threshold


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (or varlong) at ``pos``: its value and the position after it."""
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    value = b & 0x7F
    shift = 7
    while True:
        pos += 1
        b = buf[pos]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return (value >> 1) ^ -(value & 1), pos + 1
        shift += 7
        if shift > 63:
            raise CorruptRecordError("varint longer than 10 bytes")


def parse_records(buf: bytes, pos: int, count: int, base_offset: int, first_timestamp: int,
                  append_time: int | None, make: Callable[[tuple[Any, ...]], Any], prefix: tuple[Any, ...],
                  timestamp_type: int, from_offset: int = 0, below: bytes | None = None,
                  ) -> tuple[list[Any], int, int]:
    """The records of an uncompressed v2 batch body of ``count`` records from ``pos``.

    Each record with an offset from ``from_offset`` on becomes ``make((topic, partition,
    leader epoch, offset, timestamp, timestamp_type, key, value, headers, None, key size, value
    size, header size))``, the fields of kafka-python's ConsumerRecord (``prefix`` holds the
    first three). ``append_time`` is the batch's max timestamp
    when the broker stamped it (LogAppendTime), else None. Returns the records and the sum of
    all ``count`` records' lengths (what kafka-python counts as bytes read) and how many
    records the sample left out. With ``below`` (:func:`models.sampling.threshold`), a keyed
    record whose key's sampling digest is not under it is left out before anything but its
    framing is read. Each run of records left out becomes one marker record (:func:`is_marker`)
    where the run ends: the offset of its last record, and its length as the marker's
    ``serialized_value_size``. So the reader's position moves past a run that ends a batch,
    and whoever applies the records counts exactly the runs of what it applies. Raises
    CorruptRecordError when a record's fields do not add up to its length or bytes are left
    over.

    The varints are read inline where they take one or two bytes (all but large deltas): a
    call per varint was most of the cost.
    """
    varint = _varint
    blake2b = hashlib.blake2b
    topic, partition, epoch = prefix
    end = len(buf)
    out: list[Any] = []
    append = out.append
    size = 0
    skipped = 0
    run = 0  # records left out since the last one kept (or the batch's start)
    run_end = (0, 0)  # offset and timestamp of the last of them
    for _ in range(count):
        at = pos
        b = buf[pos]
        if b < 0x80:
            length = (b >> 1) ^ -(b & 1)
            pos += 1
        elif buf[pos + 1] < 0x80:
            v = (b & 0x7F) | (buf[pos + 1] << 7)
            length = (v >> 1) ^ -(v & 1)
            pos += 2
        else:
            length, pos = varint(buf, pos)
        stop = pos + length
        size += length
        if length < 0 or stop > end:
            raise CorruptRecordError(f"record length {length} at byte {at} runs past the batch")
        pos += 1  # attributes: an int8, unused by v2
        ts_delta, pos = varint(buf, pos)
        b = buf[pos]
        if b < 0x80:
            offset_delta = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            offset_delta, pos = varint(buf, pos)
        b = buf[pos]
        if b == 1:  # key length -1: no key, the common case
            key: bytes | None = None
            key_size = -1
            pos += 1
        else:
            key_size, pos = varint(buf, pos)
            if key_size >= 0:
                key = buf[pos:pos + key_size]
                pos += key_size
            else:
                key = None
        if below is not None and key is not None and blake2b(key, digest_size=8).digest() >= below:
            # out of the sample: step over the value and headers unread (the length says where it ends)
            pos = stop
            offset = base_offset + offset_delta
            if offset >= from_offset:
                skipped += 1
                run += 1
                run_end = (offset, first_timestamp + ts_delta if append_time is None else append_time)
            continue
        b = buf[pos]
        if b < 0x80:
            value_size = (b >> 1) ^ -(b & 1)
            pos += 1
        elif buf[pos + 1] < 0x80:
            v = (b & 0x7F) | (buf[pos + 1] << 7)
            value_size = (v >> 1) ^ -(v & 1)
            pos += 2
        else:
            value_size, pos = varint(buf, pos)
        if value_size >= 0:
            value: bytes | None = buf[pos:pos + value_size]
            pos += value_size
        else:
            value = None
        if buf[pos] == 0:  # no headers, the common case
            headers: list[Any] = []
            header_size = -1
            pos += 1
        else:
            headers, pos = _headers(buf, pos)
            header_size = serialized_header_size(headers)
        if pos != stop:
            raise CorruptRecordError(f"record at byte {at}: fields took {pos - at} bytes, its length says {length}")
        offset = base_offset + offset_delta
        if offset >= from_offset:
            if run:
                append(make((topic, partition, epoch, run_end[0], run_end[1], timestamp_type, None, SKIPPED, [],
                             None, -1, run, -1)))
                run = 0
            append(make((topic, partition, epoch, offset,
                         first_timestamp + ts_delta if append_time is None else append_time,
                         timestamp_type, key, value, headers, None, key_size, value_size, header_size)))
    if pos != end:
        raise CorruptRecordError(f"{end - pos} unconsumed bytes after all records consumed")
    if run:
        append(make((topic, partition, epoch, run_end[0], run_end[1], timestamp_type, None, SKIPPED, [], None, -1,
                     run, -1)))
    return out, size, skipped


class _Skipped(bytes):
    """The type of :data:`SKIPPED`: a value no record has (compared by identity)."""


# the value of a marker record: it stands for a run of records the sample left out (their number is
# its serialized_value_size); the daemon drops markers before decoding, counting what they stand for
SKIPPED = _Skipped(b"")


def is_marker(record: Any) -> bool:
    """Whether ``record`` is a sampling marker, not a record of the topic."""
    return record.value is SKIPPED


class KeySample:
    """The sample the reader keeps: records whose key's digest is under ``rate``'s threshold
    (docs/events.md, "Sampling"). Shared by the loop (which may change the rate) and the reader."""

    def __init__(self, rate: float = 1.0) -> None:
        self.below: bytes | None = None
        self.rate = 1.0
        self.skipped = 0  # records the reader left out so far (a batch read twice counts twice)
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        """Sample at ``rate`` in (0, 1] from the next batch read on."""
        self.below = None if rate >= 1 else threshold(rate)
        self.rate = min(rate, 1.0)


def _headers(buf: bytes, pos: int) -> tuple[list[Any], int]:
    count, pos = _varint(buf, pos)
    if count < 0:
        raise CorruptRecordError(f"invalid number of record headers {count}")
    headers: list[Any] = []
    for _ in range(count):
        key_len, pos = _varint(buf, pos)
        if key_len < 0:
            raise CorruptRecordError(f"invalid negative header key size {key_len}")
        key = buf[pos:pos + key_len].decode("utf-8")
        pos += key_len
        value_len, pos = _varint(buf, pos)
        if value_len >= 0:
            value: bytes | None = bytes(buf[pos:pos + value_len])
            pos += value_len
        else:
            value = None
        headers.append((key, value))
    return headers, pos


def serialized_header_size(headers: list[Any]) -> int:
    """What kafka-python reports as a record's serialized header size."""
    return sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers)


