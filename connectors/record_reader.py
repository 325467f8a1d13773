"""A faster reader of fetched record batches for kafka-python's consumer.

kafka-python 3.0 (3.0.12 checked) turns a fetched v2 record batch into ``ConsumerRecord`` s
one record at a time through four layers (``MemoryRecords`` → ``DefaultRecordBatch`` →
``DefaultRecord`` → ``ConsumerRecord``), with a Python function call per varint, per property
and per deserializer. On the daemon's poll loop that was ~7.5 µs of the ~13 µs each event cost
(py-spy, docs/internals.md), nearly the whole budget of a plain consumer. :class:`FastPartitionRecords`
reads the same batches in one loop per batch instead: the same records, offsets, timestamps,
keys, values and headers come out, with the same CRC checks, skipping of control batches and
of aborted transactions under ``read_committed``, and the same positions for the next fetch.
Batches it does not know (message format v0/v1) go through the library's own reader.

:func:`read_batches_fast` installs it on one consumer; the library's types are kept, so nothing
downstream changes. tests/test_record_reader.py compares both readers record by record.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel
from kafka.record.default_records import DefaultRecordBatch

from models.sampling import threshold

log = logging.getLogger(__name__)

_HEADER_SIZE = DefaultRecordBatch.HEADER_STRUCT.size  # 61 bytes before the first record
# what _batch_body and _read_batch use of a batch beyond its public properties
_BATCH_INTERNALS = all(hasattr(DefaultRecordBatch, name) for name in ("_buffer", "_pos", "_num_records", "_maybe_uncompress"))


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
            header_size = _header_size(headers)
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


def _header_size(headers: list[Any]) -> int:
    """What kafka-python reports as a record's serialized header size."""
    return sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers)


def _batch_body(batch: DefaultRecordBatch) -> tuple[bytes, int]:
    """The batch's records as bytes (decompressed if need be) and where the first one starts."""
    if batch.compression_type == batch.CODEC_NONE:
        return bytes(batch._buffer), _HEADER_SIZE
    batch._maybe_uncompress()  # the library's codecs, into the batch's own buffer
    return bytes(batch._buffer), batch._pos


class FastPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's partition records, with v2 batches read by :func:`parse_records` a whole
    batch at a time and handed out by ``take`` in slices.

    A batch is read whole when the first of its records is taken: if one of its records is
    corrupt, none of that batch is returned (the library would return those before it). The
    consumer stops at that batch either way, and here stays stopped: every later take raises
    the error again, as Java's client does until the caller seeks past the batch (the library's
    reader returns nothing more, so the fetcher's position stays there too, without a word).
    """

    sample: KeySample | None = None  # set on the subclass read_batches_fast makes for one consumer

    def __init__(self, fetch_offset: int, tp: Any, records: Any, key_deserializer: Any = None,
                 value_deserializer: Any = None, **kwargs: Any) -> None:
        super().__init__(fetch_offset, tp, records, key_deserializer, value_deserializer, **kwargs)
        self._fast = key_deserializer is None and value_deserializer is None
        self._records = records
        self._prefix = (tp.topic, tp.partition)
        self._ready: list[Any] = []
        self._taken = 0
        self._last_batch: Any = None
        self._failed: Exception | None = None  # a corrupt batch: raised by every take from then on

    def take(self, n: int | None = None) -> list[Any]:
        if not self._fast:
            return super().take(n)  # type: ignore[no-any-return]
        self._maybe_raise_next_inline_exception()
        if self._failed is not None:
            raise self._failed.with_traceback(None)
        want = sys.maxsize if n is None else n
        out: list[Any] = []
        try:
            while len(out) < want and self.record_iterator is not None:
                if self._taken >= len(self._ready):
                    self._read_batch()
                    continue
                part = self._ready[self._taken:self._taken + want - len(out)]
                self._taken += len(part)
                out.extend(part)
                self.next_fetch_offset = part[-1].offset + 1
        except Exception as exc:  # noqa: BLE001 - what the library does: raised on the next take
            self._failed = exc
            if not out:
                raise
            self._next_inline_exception = exc
        return out

    def _read_batch(self) -> None:
        """Read the next batch into ``_ready``; drain when there is none left."""
        self._ready, self._taken = [], 0
        batch = self._records.next_batch()
        if batch is None:
            # v2 keeps a batch's last offset even when compaction removed its last record: fetch
            # on from after the batch, or the same batch would be fetched again and again
            if self._last_batch is not None and self._last_batch.magic == 2:
                self.next_fetch_offset = self._last_batch.next_offset
            self.drain()
            return
        self._last_batch = batch
        if self.check_crcs and not batch.validate_crc():
            raise CorruptRecordError(
                f"Record batch for partition {self.topic_partition} at offset {batch.base_offset} failed crc check")
        if batch.magic != 2:  # a v0/v1 message set (brokers convert only for old clients): the library reads it
            self._ready = self._legacy(batch)
            return
        self.leader_epoch = batch.leader_epoch
        if self._skip(batch):
            self.next_fetch_offset = batch.next_offset
            return
        buf, pos = _batch_body(batch)
        append_time = batch.max_timestamp if batch.timestamp_type == batch.LOG_APPEND_TIME else None
        sample = self.sample
        self._ready, size, skipped = parse_records(
            buf, pos, batch._num_records, batch.base_offset, batch.first_timestamp, append_time,
            ConsumerRecord._make, self._prefix + (batch.leader_epoch,), batch.timestamp_type, self.fetch_offset,
            None if sample is None else sample.below)
        if skipped:
            assert sample is not None
            sample.skipped += skipped
        self.records_read += batch._num_records  # the library counts those before fetch_offset too
        self.bytes_read += size

    def _skip(self, batch: DefaultRecordBatch) -> bool:
        """Whether a v2 batch holds nothing for the caller: a control batch (transaction
        marker), or under read_committed a batch of a transaction that was aborted."""
        if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
            # transactions that began before this batch ended: their producers' batches are out
            # until the abort marker for them comes by
            while self.aborted_transactions and self.aborted_transactions[0].first_offset <= batch.last_offset:
                self.aborted_producer_ids.add(self.aborted_transactions.popleft().producer_id)
            if batch.is_control_batch:
                marker = next(iter(batch), None)
                if marker is not None and marker.abort:
                    self.aborted_producer_ids.discard(batch.producer_id)
                return True
            if batch.is_transactional and batch.producer_id in self.aborted_producer_ids:
                log.debug("skipping aborted batch of %s, producer %d, offsets %d-%d", self.topic_partition,
                          batch.producer_id, batch.base_offset, batch.last_offset)
                return True
        return bool(batch.is_control_batch)

    def _legacy(self, batch: Any) -> list[Any]:
        out = []
        for record in batch:
            if self.check_crcs and not record.validate_crc():
                raise CorruptRecordError(
                    f"Record for partition {self.topic_partition} at offset {record.offset} failed crc check")
            if record.offset < self.fetch_offset:
                continue
            self.records_read += 1
            self.bytes_read += record.size_in_bytes
            key, value, headers = record.key, record.value, record.headers
            if self.sample is not None and self.sample.below is not None and key is not None \
                    and hashlib.blake2b(key, digest_size=8).digest() >= self.sample.below:
                self.sample.skipped += 1
                out.append(ConsumerRecord(*self._prefix, self.leader_epoch, record.offset, record.timestamp,
                                          record.timestamp_type, None, SKIPPED, [], None, -1, 1, -1))
                continue
            out.append(ConsumerRecord(
                *self._prefix, self.leader_epoch, record.offset, record.timestamp, record.timestamp_type,
                key, value, headers, record.checksum, -1 if key is None else len(key),
                -1 if value is None else len(value), _header_size(headers) if headers else -1))
        return out


def read_batches_fast(consumer: Any, sample: KeySample | None = None) -> bool:
    """Have this consumer read fetched batches with :class:`FastPartitionRecords`, keeping only
    the records in ``sample`` (all when None) and ending a batch whose last records it left out
    with a marker (:func:`is_marker`).

    Returns False (and leaves the consumer as it is) when its internals are not the ones this
    was written against.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "PartitionRecords") or not _BATCH_INTERNALS:
        return False
    fetcher.PartitionRecords = type("SampledPartitionRecords", (FastPartitionRecords,), {"sample": sample})
    return True
