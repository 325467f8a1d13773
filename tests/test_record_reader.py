"""connectors/kafka_compat.py's FastPartitionRecords (with connectors/record_reader.py's parser)
reads fetched batches as kafka-python's own reader does.

Each case builds record batches with the library's builders (and, for what only brokers
write, by editing their bytes), reads them with the library's ``PartitionRecords`` and with
``FastPartitionRecords`` the same way, and compares every record and every position the
fetcher would go on from. The last test reads a real broker's transactional topic.
"""

from __future__ import annotations

import struct
import uuid
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from connectors.kafka_compat import FastPartitionRecords, read_batches_fast
from connectors.record_reader import parse_records

TP = TopicPartition("events", 3)
GZIP = 1
Aborted = namedtuple("Aborted", ["producer_id", "first_offset"])  # as the fetch response carries them

Row = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]  # timestamp, key, value, headers


def _batch(rows: Sequence[Row], offset: int, compression: int = 0, magic: int = 2,
           producer_id: int = -1, transactional: bool = False) -> bytes:
    builder = MemoryRecordsBuilder(magic, compression, batch_size=1 << 24, offset=offset)
    if producer_id >= 0:
        builder.set_producer_state(producer_id, 0, offset, transactional)
    for ts, key, value, headers in rows:
        assert builder.append(ts, key, value, headers if magic == 2 else None) is not None
    builder.close()
    return bytes(builder.buffer())


def _restamp(batch: bytes, attributes_or: int = 0, last_offset_delta: int | None = None) -> bytes:
    """The batch with attribute bits set or its last offset delta changed, CRC made right again
    (what a broker writes: control batches, batches whose last records compaction removed)."""
    data = bytearray(batch)
    (attrs,) = struct.unpack_from(">h", data, 21)
    struct.pack_into(">h", data, 21, attrs | attributes_or)
    if last_offset_delta is not None:
        struct.pack_into(">i", data, 23, last_offset_delta)
    struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    return bytes(data)


def _marker(offset: int, producer_id: int, abort: bool) -> bytes:
    """A transaction's end marker: a control batch of one record, key (version, type)."""
    key = struct.pack(">hh", 0, 0 if abort else 1)
    return _restamp(_batch([(1_700_000_000_000, key, struct.pack(">hi", 0, 0), [])], offset,
                           producer_id=producer_id, transactional=True), attributes_or=0x20)


def _rows(n: int, start_ts: int = 1_700_000_000_000, size: int = 40) -> list[Row]:
    return [(start_ts + (i * 7919) % 1000 - 500, None, b"v%05d" % i + b"x" * size, []) for i in range(n)]


def _read(cls: Any, data: bytes, fetch_offset: int = 0, takes: Sequence[int | None] = (None,),
          **kwargs: Any) -> tuple[list[tuple[list[Any], int]], Any]:
    """Take from a reader of ``data`` as the fetcher would: what each take returned and the next
    fetch offset after it, until it drains or raises (the error is the last entry)."""
    records = cls(fetch_offset, TP, MemoryRecords(data), None, None, **kwargs)
    seen: list[tuple[list[Any], int]] = []
    for n in list(takes) + [None] * 100:
        if not records:
            return seen, records
        try:
            got = records.take(n)
        except CorruptRecordError as exc:
            seen.append((["raised", str(exc)], records.next_fetch_offset))
            return seen, records
        seen.append((got, records.next_fetch_offset))
    raise AssertionError("the reader never drained")


def _same(data: bytes, **kwargs: Any) -> list[tuple[list[Any], int]]:
    ours, ours_state = _read(FastPartitionRecords, data, **kwargs)
    theirs, theirs_state = _read(Fetcher.PartitionRecords, data, **kwargs)
    assert ours == theirs
    assert bool(ours_state) == bool(theirs_state)
    assert ours_state.leader_epoch == theirs_state.leader_epoch
    return ours


def _records(seen: list[tuple[list[Any], int]]) -> list[Any]:
    return [r for got, _ in seen for r in got if not isinstance(r, str)]


def test_plain_batches_give_the_same_records_offsets_and_counts() -> None:
    data = b"".join(_batch(_rows(50), offset=i * 50) for i in range(4))
    seen = _same(data)
    records = _records(seen)
    assert [r.offset for r in records] == list(range(200))
    assert records[0].value.startswith(b"v00000") and records[0].key is None and records[0].headers == []
    ours, _ = _read(FastPartitionRecords, data)
    fast = FastPartitionRecords(0, TP, MemoryRecords(data), None, None)
    slow = Fetcher.PartitionRecords(0, TP, MemoryRecords(data), None, None)
    fast.take(), slow.take()
    # kafka-python counts a record's bytes without its length prefix: every batch loses its
    # 61-byte header and each record one length byte (these records are under 64 bytes)
    assert max(len(value) for _, _, value, _ in _rows(50)) < 50  # so a record's size fits one varint byte
    assert (fast.records_read, fast.bytes_read) == (slow.records_read, slow.bytes_read) == (200, len(data) - 4 * 61 - 200)


def test_keys_null_values_headers_and_long_fields() -> None:
    """Varints of one, two and three bytes (lengths past 127 and 16383), negative timestamp
    deltas, empty and missing keys and values, headers with and without values."""
    rows: list[Row] = [
        (1_700_000_000_000, b"k1", b"short", []),
        (1_699_999_999_000, None, None, []),
        (1_700_000_000_500, b"", b"", [("trace", b"abc"), ("empty", None), ("ünï", b"")]),
        (1_700_000_100_000, b"k" * 200, b"x" * 20_000, [("h", b"y" * 300)]),
        (1_700_000_000_001, None, b"z" * 130, []),
    ]
    data = _batch(rows, offset=1000) + _batch(rows[::-1], offset=1005)
    records = _records(_same(data))
    assert [(r.timestamp, r.key, r.value, r.headers) for r in records[:5]] == [tuple(row) for row in rows]
    assert [(r.serialized_key_size, r.serialized_value_size) for r in records[:2]] == [(2, 5), (-1, -1)]
    assert records[2].serialized_header_size == len(b"trace") + 3 + len(b"empty") + len("ünï".encode())


def test_gzip_batches_are_read_after_decompression() -> None:
    data = b"".join(_batch(_rows(300, size=200), offset=i * 300, compression=GZIP) for i in range(3))
    assert len(data) < 300 * 3 * 200  # they really are compressed
    assert [r.offset for r in _records(_same(data))] == list(range(900))


@pytest.mark.parametrize("compression", [0, GZIP])
def test_a_fetch_from_mid_batch_starts_at_its_offset(compression: int) -> None:
    data = b"".join(_batch(_rows(20), offset=100 + i * 20, compression=compression) for i in range(3))
    assert [r.offset for r in _records(_same(data, fetch_offset=113))] == list(range(113, 160))


def test_takes_of_n_are_sliced_across_batches_with_the_same_next_offsets() -> None:
    data = b"".join(_batch(_rows(10), offset=i * 10) for i in range(5))
    seen = _same(data, takes=[7, 7, 1, 20, 3])
    assert [len(got) for got, _ in seen[:5]] == [7, 7, 1, 20, 3]
    assert [nxt for _, nxt in seen[:5]] == [7, 14, 15, 35, 38]


def test_after_a_batch_whose_last_records_were_compacted_away_the_fetch_goes_on_past_it() -> None:
    """v2 keeps a batch's last offset: a fetch must go on from there, not from the last record
    that is left, or it would fetch the same batch for ever."""
    builder = MemoryRecordsBuilder(2, 0, batch_size=1 << 20, offset=0)
    for i, row in enumerate(_rows(6)):
        if i in (2, 3):
            builder.skip(1)  # offsets 2 and 4 compacted away
        builder.append(row[0], row[1], row[2], row[3])
    builder.close()
    data = _restamp(bytes(builder.buffer()), last_offset_delta=12)  # and offsets 8-12 from the end
    seen = _same(data)
    assert [r.offset for r in _records(seen)] == [0, 1, 3, 5, 6, 7]
    assert seen[-1][1] == 13


def test_a_corrupt_batch_raises_after_the_good_ones_are_returned() -> None:
    good = _batch(_rows(10), offset=0)
    bad = bytearray(_batch(_rows(10), offset=10))
    bad[-3] ^= 0xFF
    seen = _same(good + bytes(bad) + _batch(_rows(10), offset=20))
    assert [r.offset for r in seen[0][0]] == list(range(10))
    assert seen[1][0][0] == "raised" and "crc" in seen[1][0][1]
    assert seen[1][1] == 10  # the consumer stays at the bad batch


def test_a_corrupt_batch_is_raised_again_on_every_take_never_skipped() -> None:
    """Ours keeps raising (the library's reader returns nothing more): the records after the bad
    batch are never handed out with the bad batch's silently left behind."""
    bad = bytearray(_batch(_rows(10), offset=10))
    bad[-3] ^= 0xFF
    records = FastPartitionRecords(0, TP, MemoryRecords(_batch(_rows(10), offset=0) + bytes(bad)
                                                        + _batch(_rows(10), offset=20)), None, None)
    assert [r.offset for r in records.take()] == list(range(10))
    for _ in range(3):
        with pytest.raises(CorruptRecordError, match="crc"):
            records.take()
        assert records.next_fetch_offset == 10 and records


def test_without_crc_checks_a_record_that_does_not_add_up_is_still_caught() -> None:
    """A record whose fields disagree with its length (CRC made right, checks off): ours says so
    rather than reading the next record from the middle of this one."""
    data = bytearray(_batch(_rows(3), offset=0))
    assert data[61] == 2 * (len(data[61:]) // 3 - 1)  # the first record's length: one byte, zigzag
    data[61] += 2  # one byte longer than it is
    struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    with pytest.raises(CorruptRecordError):
        FastPartitionRecords(0, TP, MemoryRecords(bytes(data)), None, None, check_crcs=False).take()
    with pytest.raises(CorruptRecordError, match="runs past"):
        parse_records(b"\x7e" + b"\x00" * 10, 0, 1, 0, 0, None, tuple, ("t", 0, 0), 0)


def _transactions() -> tuple[bytes, list[Aborted]]:
    """Producer 7's transaction at 10-14 is aborted (marker at 20), producer 8's at 15-19 is
    committed (marker at 21); plain records before and after."""
    parts = [
        _batch(_rows(10), offset=0),
        _batch(_rows(5), offset=10, producer_id=7, transactional=True),
        _batch(_rows(5), offset=15, producer_id=8, transactional=True),
        _marker(20, producer_id=7, abort=True),
        _marker(21, producer_id=8, abort=False),
        _batch(_rows(5), offset=22, producer_id=7, transactional=True),  # 7's next one, committed
        _marker(27, producer_id=7, abort=False),
        _batch(_rows(3), offset=28),
    ]
    return b"".join(parts), [Aborted(producer_id=7, first_offset=10)]


def test_read_committed_skips_aborted_transactions_and_markers() -> None:
    data, aborted = _transactions()
    seen = _same(data, isolation_level=IsolationLevel.READ_COMMITTED, aborted_transactions=aborted)
    assert [r.offset for r in _records(seen)] == [*range(10), *range(15, 20), *range(22, 27), 28, 29, 30]
    assert seen[-1][1] == 31


def test_read_uncommitted_returns_aborted_records_but_never_markers() -> None:
    data, aborted = _transactions()
    seen = _same(data, aborted_transactions=aborted)
    assert [r.offset for r in _records(seen)] == [*range(20), *range(22, 27), 28, 29, 30]


def test_takes_that_end_at_a_marker_go_on_past_it() -> None:
    data, aborted = _transactions()
    _same(data, isolation_level=IsolationLevel.READ_COMMITTED, aborted_transactions=aborted,
          takes=[10, 5, 5, 1, 1, 1, 2])


def test_old_message_formats_go_through_the_library() -> None:
    for magic in (0, 1):
        data = _batch(_rows(5), offset=0, magic=magic) + _batch(_rows(5), offset=5, magic=magic, compression=GZIP)
        assert [r.offset for r in _records(_same(data))] == list(range(10))


def test_with_deserializers_the_library_reads() -> None:
    class Upper:
        def deserialize(self, topic: str, headers: Any, data: bytes | None) -> bytes | None:
            return None if data is None else data.upper()

    data = _batch(_rows(5), offset=0)
    ours = FastPartitionRecords(0, TP, MemoryRecords(data), None, Upper()).take()
    theirs = Fetcher.PartitionRecords(0, TP, MemoryRecords(data), None, Upper()).take()
    assert ours == theirs and ours[0].value.startswith(b"V00000")


@pytest.mark.broker
def test_a_consumer_reading_fast_sees_what_the_library_does_of_real_transactions(bootstrap: str) -> None:
    """A real broker writes the markers and the aborted-transaction index: a read_committed
    consumer with the fast reader gets the committed records only, as the library's does."""
    topic = "t" + uuid.uuid4().hex[:10]
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=topic, linger_ms=5)
    producer.init_transactions()
    expected = []
    for txn in range(6):
        producer.begin_transaction()
        values = [b"%d-%03d" % (txn, i) for i in range(200)]
        for value in values:
            producer.send(topic, value=value, partition=0)
        producer.flush()
        if txn % 3 == 1:
            producer.abort_transaction()
        else:
            producer.commit_transaction()
            expected.extend(values)
    producer.close()

    def consume(fast: bool, isolation: str) -> list[tuple[int, bytes]]:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                 enable_auto_commit=False, isolation_level=isolation, max_poll_records=37)
        try:
            if fast:
                assert read_batches_fast(consumer)
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            out: list[tuple[int, bytes]] = []
            for _ in range(200):
                for records in consumer.poll(timeout_ms=500).values():
                    out.extend((r.offset, r.value) for r in records)
                if consumer.position(tp) >= end:
                    return out
            raise AssertionError(f"position {consumer.position(tp)} never reached {end}")
        finally:
            consumer.close()

    committed = consume(True, "read_committed")
    assert [value for _, value in committed] == expected
    assert committed == consume(False, "read_committed")
    uncommitted = consume(True, "read_uncommitted")
    assert len(uncommitted) == 1200 and uncommitted == consume(False, "read_uncommitted")


def test_a_consumer_without_the_fetcher_is_left_alone() -> None:
    assert not read_batches_fast(object())
