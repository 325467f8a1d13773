"""Every touch of kafka-python's internals, in one place, installed explicitly and version-gated.

featsieve reaches past kafka-python's public API in five places. Each one is here, named and
documented (what it changes, why, and what the library does without it):

=========================  ================================================================
touch                      installed by
=========================  ================================================================
large socket reads         :func:`install_socket_reader` (process-wide: the transport classes)
metadata rejoins kept      :func:`adopt_consumer` (one group consumer's coordinator)
fast batch reader          :func:`adopt_consumer` with ``fast_reader=True`` (one fetcher)
broker connection table    :func:`broker_connected` (reads one client's connections)
transaction manager error  :func:`transaction_error` (reads one producer's fatal error)
=========================  ================================================================

Nothing is patched when this module (or any other) is imported: the daemon's clients call
the installers when they build their consumers and producers. Every installer first checks
the installed kafka-python against :data:`SUPPORTED` (:func:`check_version`). Outside that
range it logs one warning naming the version and the range, installs nothing, and the
library's own code paths are used: 4 KB socket reads, the library's rejoin check and record
reader, a client that counts as connected, and fencing recognised by the exception type
alone. The daemon works either way; it is slower, and a leader may miss a metadata rejoin.

Serving code (featsieve_client, connectors.subscriber, connectors.mask_message) never imports
this module (an import-linter contract in pyproject.toml), so a process that only reads masks
runs on the library as shipped.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import ssl
import sys
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError, KafkaConnectionError
from kafka.protocol.consumer import IsolationLevel
from kafka.record.default_records import DefaultRecordBatch

from connectors.record_reader import SKIPPED, KeySample, parse_records, serialized_header_size

log = logging.getLogger(__name__)

# The kafka-python versions whose internals the touches below were written and tested against:
# from SUPPORTED[0] (inclusive) up to SUPPORTED[1] (exclusive). pyproject.toml pins the same range.
SUPPORTED = ("3.0.12", "3.1")
DISTRIBUTION = "kafka-python"

_checked: bool | None = None  # the cached answer of check_version (one warning per process)


def installed_version() -> str:
    """The installed kafka-python's version string, from its package metadata."""
    return importlib.metadata.version(DISTRIBUTION)


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "3.0.12" -> (3, 0, 12), "3.1.0rc1" -> (3, 1, 0)."""
    parts: list[int] = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):  # "0rc1": a pre-release of this component, stop here
            break
    return tuple(parts)


def in_supported_range(version: str) -> bool:
    """Whether ``version`` lies in :data:`SUPPORTED` (lower bound inclusive, upper exclusive)."""
    release = _release(version)
    if not release:
        return False
    low, high = (_release(v) for v in SUPPORTED)
    return low <= release < high


def check_version() -> bool:
    """Whether the touches may be installed: the installed kafka-python is in :data:`SUPPORTED`.

    Asked once per process; outside the range (or when the version cannot be read) one warning
    names the version and the range, and every installer here leaves the library as it is.
    """
    global _checked
    if _checked is None:
        try:
            version = installed_version()
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        _checked = in_supported_range(version)
        if not _checked:
            log.warning("kafka-python %s is outside the range featsieve's kafka-python adaptations are verified "
                        "against (>=%s,<%s): using the library's own code paths (slower socket reads and record "
                        "reading; no kept metadata rejoins)", version, *SUPPORTED)
    return _checked


def reset_version_check() -> None:
    """Forget the cached :func:`check_version` answer (tests that fake the version)."""
    global _checked
    _checked = None


# ------------------------------------------------------------------ 1. large socket reads

RECV_BYTES = 256 * 1024  # what one socket read may return (kafka-python 3.0 asks for 4 KB)
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _transport_classes() -> list[Any]:
    try:
        from kafka.net import transport
    except ImportError:
        return []
    found = (getattr(transport, "KafkaTCPTransport", None), getattr(transport, "KafkaSSLTransport", None))
    return [cls for cls in found if cls is not None and "_sock_recv" in vars(cls)]


# the library's own readers, kept so that the install can be undone (tests)
_ORIGINAL_SOCK_RECV: dict[Any, Any] = {cls: vars(cls)["_sock_recv"] for cls in _transport_classes()}


def read_available(transport: Any) -> tuple[bytes, Exception | None]:
    """Everything the transport's socket has now, in reads of up to :data:`RECV_BYTES`; the
    error, if any, as kafka-python's own reader reports it (the connection is then closed)."""
    chunks: list[bytes] = []
    sock = transport._sock
    if sock is None:
        # the client closed the transport while this read was scheduled (closing a consumer or a
        # producer does): nothing to read, and the library's abort of a closed transport is a
        # no-op. Reading None.recv raised in kafka-python's task loop, which logged
        # 'ERROR kafka.net.selector: Unhandled exception in task' with a traceback.
        return b"", KafkaConnectionError("socket closed")
    recv = sock.recv
    while True:
        try:
            data = recv(RECV_BYTES)
        except _WOULD_BLOCK:
            return b"".join(chunks), None
        except Exception as exc:  # noqa: BLE001 - handed to the library, which closes the connection
            log.warning("kafka socket read failed: %s", exc)
            return b"".join(chunks), KafkaConnectionError(str(exc))
        if not data:
            return b"".join(chunks), KafkaConnectionError("socket disconnected")
        chunks.append(data)


def install_socket_reader() -> bool:
    """Have kafka-python's transports read up to :data:`RECV_BYTES` per call instead of 4 KB.

    Changes: ``KafkaTCPTransport._sock_recv`` and ``KafkaSSLTransport._sock_recv`` become
    :func:`read_available`, for every client of this process. Why: kafka-python 3.0 receives on
    its I/O thread with ``recv(4096)`` in a loop, and every read must take the GIL back from the
    poll loop, which holds it while it parses and joins: a 4 MB fetch was ~1000 such hand-offs,
    up to the interpreter's switch interval (5 ms) each, and the loop sat in ``poll()`` waiting
    for fetches it had long been sent (docs/internals.md). Verified: 3.0.12. Without it: the
    library's own 4 KB reader. Returns whether it is installed; doing it again changes nothing.
    """
    if not check_version():
        return False
    classes = _transport_classes()
    for cls in classes:
        cls._sock_recv = read_available
    return bool(classes)


def uninstall_socket_reader() -> None:
    """Give the transports their own readers back."""
    for cls, original in _ORIGINAL_SOCK_RECV.items():
        cls._sock_recv = original


# ------------------------------------------------------------------ 2. metadata rejoins kept

def keep_metadata_rejoins(consumer: Any) -> bool:
    """Make a rejoin that metadata asked for stay asked for until the join completes.

    Changes: this consumer's ``_coordinator.need_rejoin`` (an instance attribute wrapping the
    library's method). Why: kafka-python 3.0 decides a group leader must rejoin when the topics'
    metadata no longer matches what it assigned from (``_assignment_snapshot`` against
    ``_metadata_snapshot``), but keeps no record of that decision: the leader's new assignment
    copies the metadata, so from then on ``need_rejoin()`` says no. When that JoinGroup is
    answered while the caller is not inside ``poll()``, no later poll awaits the join: the
    member stays "rebalancing" with its heartbeat off, the broker expels it after the session
    timeout and the consumer never fetches again. New partitions on an input topic, or topics
    created just before the daemon starts, lead there. Java's client records the request
    (``requestRejoin``), and so do we. Verified: 3.0.12. Without it: the library's own check.
    Returns whether it is installed (False also for a client without these internals).
    """
    if not check_version():
        return False
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not all(
        hasattr(coordinator, name) for name in ("_assignment_snapshot", "_metadata_snapshot", "request_rejoin")
    ):
        return False
    need_rejoin = coordinator.need_rejoin

    def need_rejoin_recorded() -> bool:
        snapshot = coordinator._assignment_snapshot
        if snapshot is not None and snapshot != coordinator._metadata_snapshot:
            coordinator.request_rejoin()
        return bool(need_rejoin())

    coordinator.need_rejoin = need_rejoin_recorded
    return True


# ------------------------------------------------------------------ 3. fast batch reader

_HEADER_SIZE = DefaultRecordBatch.HEADER_STRUCT.size  # 61 bytes before the first record
# what _batch_body and _read_batch use of a batch beyond its public properties
_BATCH_INTERNALS = all(hasattr(DefaultRecordBatch, name) for name in ("_buffer", "_pos", "_num_records", "_maybe_uncompress"))


def _batch_body(batch: DefaultRecordBatch) -> tuple[bytes, int]:
    """The batch's records as bytes (decompressed if need be) and where the first one starts."""
    if batch.compression_type == batch.CODEC_NONE:
        return bytes(batch._buffer), _HEADER_SIZE
    batch._maybe_uncompress()  # the library's codecs, into the batch's own buffer
    return bytes(batch._buffer), batch._pos


class FastPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's partition records, with v2 batches read by
    :func:`connectors.record_reader.parse_records` a whole batch at a time and handed out by
    ``take`` in slices.

    A batch is read whole when the first of its records is taken: if one of its records is
    corrupt, none of that batch is returned (the library would return those before it). The
    consumer stops at that batch either way, and here stays stopped: every later take raises
    the error again, as Java's client does until the caller seeks past the batch (the library's
    reader returns nothing more, so the fetcher's position stays there too, without a word).

    With a ``sample`` (connectors.record_reader.KeySample) the records whose key is out of it
    are left out unread, each run of them handed out as one marker record.
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
                -1 if value is None else len(value), serialized_header_size(headers) if headers else -1))
        return out


def read_batches_fast(consumer: Any, sample: KeySample | None = None) -> bool:
    """Have this consumer read fetched batches with :class:`FastPartitionRecords`, keeping only
    the records in ``sample`` (all when None) and ending a run of records it left out with a
    marker (connectors.record_reader.is_marker).

    Changes: this consumer's ``_fetcher.PartitionRecords`` (an instance attribute shadowing the
    library's class). Why: kafka-python 3.0 turns a fetched v2 batch into records one record at
    a time through four layers, ~7.5 µs of the ~13 µs each event cost on the daemon's loop
    (docs/internals.md); this reads the same records a batch at a time. Verified: 3.0.12.
    Without it: the library's own ``PartitionRecords``. Returns False (and leaves the consumer
    as it is) when its internals are not the ones this was written against, or outside
    :data:`SUPPORTED`.
    """
    if not check_version():
        return False
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "PartitionRecords") or not _BATCH_INTERNALS:
        return False
    fetcher.PartitionRecords = type("SampledPartitionRecords", (FastPartitionRecords,), {"sample": sample})
    return True


def adopt_consumer(consumer: Any, *, fast_reader: bool = False, sample: KeySample | None = None) -> bool:
    """Install this module's per-consumer touches on one of the daemon's consumers: the kept
    metadata rejoins, and with ``fast_reader`` the fast batch reader (keeping ``sample``'s
    records only). Returns whether every touch asked for is installed (False outside
    :data:`SUPPORTED`: nothing is)."""
    ok = keep_metadata_rejoins(consumer)
    if fast_reader:
        ok = read_batches_fast(consumer, sample) and ok
    return ok


# ------------------------------------------------------------------ 4. broker connection table

def broker_connected(client: Any) -> bool:
    """Whether a consumer, producer or admin client holds at least one live broker connection.

    Reads: ``client._client._manager._conns`` and each connection's ``connected`` flag. Why:
    kafka-python's ``poll`` does not raise while the brokers are gone (it reconnects in the
    background), so readiness asks the client's connection manager. Safe to call from another
    thread: it only reads. Verified: 3.0.12. Without it (outside :data:`SUPPORTED`, or unknown
    internals): the library offers no such question, and the client counts as connected.
    """
    if not check_version():
        return True
    net = getattr(client, "_client", None)
    manager = getattr(net, "_manager", None)
    conns = getattr(manager, "_conns", None)
    if conns is None:
        return True
    try:
        return any(getattr(conn, "connected", False) for conn in list(conns.values()))
    except RuntimeError:  # the dict changed size while we read it: ask again next time
        return True


# ------------------------------------------------------------------ 5. transaction manager error

def transaction_error(producer: Any) -> BaseException | None:
    """The fatal error a transactional producer's transaction manager holds, if any.

    Reads: ``producer._transaction_manager.last_error``. Why: when a send's acknowledgement
    found out first that a newer writer fenced us, that send fails with another error and
    every transactional call after it with a plain ``KafkaError`` ("in an error state:
    ProducerFencedError"); only the manager keeps the cause. Verified: 3.0.12. Without it
    (outside :data:`SUPPORTED`): None, so fencing is recognised by the exception type alone.
    """
    if not check_version():
        return None
    manager = getattr(producer, "_transaction_manager", None)
    error = getattr(manager, "last_error", None)
    return error if isinstance(error, BaseException) else None

