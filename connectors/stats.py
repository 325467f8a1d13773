"""The stats topic: shard states and gate evidence shared between instances, through Kafka.

When several instances share the input partitions (``coordination = group``),
each publishes, at every checkpoint, the full state of every shard it owns
(join buffer, MI counts, input offsets) to a compacted topic, keyed
``<model>/shard/<p>``; its gate evidence goes under ``<model>/gates/<instance>``
and the mask writer's policy state under ``<model>/policy``. Compaction keeps
the newest record per key, so the topic is at once

* the **global state**: the exact merge of the newest shard states is the
  state one process reading everything would have (MI merge is exact);
* the **handoff channel**: an instance that is assigned a partition resumes
  its shard from the newest record, at the offsets that record reflects.

Values are JSON (orjson) with NumPy arrays as typed base64 blobs, zlib
compressed — never pickle: a topic is not a trusted source of code.
"""

from __future__ import annotations

import base64
import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from kafka import TopicPartition
from kafka.errors import KafkaError

from connectors.kafka_io import KafkaEndpoint, make_consumer, make_producer

log = logging.getLogger(__name__)

FORMAT = 1
MAX_RECORD_BYTES = 64 << 20
TOPIC_CONFIG = {"cleanup.policy": "compact", "max.message.bytes": str(MAX_RECORD_BYTES)}
_ARRAY = "__ndarray__"
_BYTES = "__bytes__"  # rows of value hashes in a shard's join buffer


class StatsFormatError(ValueError):
    pass


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj)
        return {_ARRAY: data.dtype.str, "shape": list(data.shape), "b64": base64.b64encode(data.tobytes()).decode()}
    if isinstance(obj, bytes):
        return {_BYTES: base64.b64encode(obj).decode()}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in a stats record")


_ALLOWED_DTYPES = {"<u8", "<i8", "<f8", "<f4", "<i4", "|i1", "|u1", "|b1"}


def _revive(obj: Any) -> Any:
    if isinstance(obj, dict):
        if _ARRAY in obj:
            dtype = obj[_ARRAY]
            if dtype not in _ALLOWED_DTYPES:
                raise StatsFormatError(f"array dtype {dtype!r} is not allowed")
            raw = base64.b64decode(obj["b64"])
            return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(obj["shape"]).copy()
        if _BYTES in obj:
            return base64.b64decode(obj[_BYTES])
        return {k: _revive(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_revive(v) for v in obj]
    return obj


def encode(payload: dict[str, Any]) -> bytes:
    body = orjson.dumps({"format": FORMAT, **payload}, default=_default, option=orjson.OPT_NON_STR_KEYS)
    return zlib.compress(body, 3)


def decode(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(zlib.decompress(raw))
    except (zlib.error, orjson.JSONDecodeError) as exc:
        raise StatsFormatError(f"not a stats record: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise StatsFormatError("stats record of an unknown format")
    return dict(_revive(body))


def shard_key(model_id: str, shard: int) -> str:
    return f"{model_id}/shard/{shard}"


def gates_key(model_id: str, instance: str) -> str:
    return f"{model_id}/gates/{instance}"


def policy_key(model_id: str) -> str:
    return f"{model_id}/policy"


class StatsPublisher:
    """Produces stats records; :meth:`flush` confirms them (the checkpoint waits for it)."""

    def __init__(self, endpoint: KafkaEndpoint, topic: str) -> None:
        self.topic = topic
        self.bytes_sent = 0
        self._producer = make_producer(endpoint, max_request_size=MAX_RECORD_BYTES, linger_ms=5)
        self._pending: list[Any] = []

    def send(self, key: str, payload: dict[str, Any] | None) -> int:
        """Queue a record (``None``: a tombstone); returns its size in bytes."""
        value = None if payload is None else encode(payload)
        self._pending.append(self._producer.send(self.topic, key=key.encode(), value=value))
        size = len(value or b"")
        self.bytes_sent += size
        return size

    def flush(self, timeout: float = 60.0) -> None:
        self._producer.flush(timeout=timeout)
        pending, self._pending = self._pending, []
        for future in pending:
            future.get(timeout=timeout)  # raises if a record was not acknowledged

    def close(self) -> None:
        try:
            self._producer.close(timeout=5)
        except KafkaError as exc:
            log.warning("stats producer close: %s", exc)


@dataclass
class StatsRecord:
    key: str
    payload: dict[str, Any]
    offset: int


class StatsView:
    """The newest record of every key of one model in the stats topic, kept up to date by :meth:`poll`."""

    def __init__(self, endpoint: KafkaEndpoint, topic: str, model_id: str) -> None:
        self.topic = topic
        self.prefix = f"{model_id}/"
        self.latest: dict[str, StatsRecord] = {}
        self._consumer = make_consumer(endpoint, group_id=None, max_partition_fetch_bytes=MAX_RECORD_BYTES,
                                       fetch_max_bytes=MAX_RECORD_BYTES)
        self._tps: list[TopicPartition] = []

    def _assign(self) -> bool:
        if self._tps:
            return True
        parts = self._consumer.partitions_for_topic(self.topic)
        if not parts:
            return False
        self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)
        return True

    def poll(self, timeout_ms: int = 0) -> int:
        """Apply the records available now; returns how many were read."""
        if not self._assign():
            return 0
        n = 0
        for records in self._consumer.poll(timeout_ms=timeout_ms).values():
            for rec in records:
                n += 1
                self._apply(rec)
        return n

    def _apply(self, rec: Any) -> None:
        key = rec.key.decode("utf-8", "replace") if rec.key else ""
        if not key.startswith(self.prefix):
            return
        if rec.value is None:
            self.latest.pop(key, None)
            return
        try:
            payload = decode(rec.value)
        except StatsFormatError as exc:
            log.warning("skipping stats record %s at offset %d: %s", key, rec.offset, exc)
            return
        self.latest[key] = StatsRecord(key, payload, rec.offset)

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Read until the end offsets as of now (what others flushed before this call is seen)."""
        deadline = time.monotonic() + timeout_s
        while not self._assign():
            if time.monotonic() > deadline:
                return  # the topic does not exist yet: nothing was published
            time.sleep(0.2)
        end = self._consumer.end_offsets(self._tps)
        while any(self._consumer.position(tp) < end[tp] for tp in self._tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.topic} to its end within {timeout_s:.0f} s")
            self.poll(timeout_ms=200)

    def with_prefix(self, kind: str) -> Iterable[StatsRecord]:
        start = self.prefix + kind + "/"
        return [r for k, r in sorted(self.latest.items()) if k.startswith(start)]

    def get(self, key: str) -> StatsRecord | None:
        return self.latest.get(key)

    def close(self) -> None:
        try:
            self._consumer.close()
        except KafkaError as exc:
            log.warning("stats consumer close: %s", exc)
