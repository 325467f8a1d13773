"""Group mode: many instances, one exact global state, one elected mask writer — all through Kafka.

* **Shards** move between instances with the input partitions (the consumer
  group decides). At every checkpoint an instance publishes the full state of
  the shards it owns to the stats topic (connectors/stats.py); the instance
  that is assigned a shard next resumes it from the newest record, at the
  offsets that record reflects, so nothing is counted twice or lost.
* **The writer** is the member of the consumer group ``<group>.writer`` that
  is assigned partition 0 of the single-partition control topic: Kafka's own
  group protocol elects it and fails it over (after the session timeout).
  The new writer reads the stats topic to its end, restores the policy state
  the previous writer published, and opens a :class:`MaskPublisher` — whose
  transactional id fences the old writer and whose epoch is higher than any
  mask on the topic, so subscribers reject a zombie's masks.
* **The global MI state** on the writer is the exact merge of its own shards
  (in memory) and every other shard's newest record.
* **Gate evidence** is trained per instance on its own shards' examples; each
  instance publishes its report by field name, and the writer combines them:
  per field the gate_open decision weighted by the examples each instance
  trained on, closed values by weighted majority, online AUC/log loss as the
  weighted mean. docs/scaling.md discusses what that costs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable
from typing import Any

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from kafka.errors import KafkaError

from connectors.kafka_compat import adopt_consumer
from connectors.kafka_io import KafkaEndpoint, make_consumer, subscribe
from connectors.mask_message import closed_value_key
from connectors.stats import StatsPublisher, StatsView, gates_key, policy_key, shard_key
from daemon.config import Settings
from daemon.masking import typed_closed_values
from daemon.shards import ShardState
from models.mi import MIState

log = logging.getLogger("featsieve")


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class _Elect(ConsumerRebalanceListener):
    def __init__(self, owner: Coordinator) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if any(tp.partition == 0 for tp in revoked):
            self.owner.elected = False

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.owner.settled = True  # an election round completed (whether or not we won it)
        if any(tp.partition == 0 for tp in assigned):
            self.owner.generation += 1
            self.owner.elected = True


class Coordinator:
    """The Kafka side of group mode for one instance."""

    def __init__(self, settings: Settings, endpoint: KafkaEndpoint) -> None:
        self.s = settings
        self.instance = settings.instance_id or default_instance_id()
        self.model = settings.model_id
        self.elected = False
        self.generation = 0  # counts the assignments of the writer partition to this instance
        self.settled = False  # True once the election group has assigned this instance at least once
        self._mi_cache: dict[str, tuple[int, MIState]] = {}
        self.view = StatsView(endpoint, settings.stats_topic, settings.model_id)
        self.stats = StatsPublisher(endpoint, settings.stats_topic)
        self._endpoint = endpoint
        self._stop = threading.Event()
        # The election runs on its own thread: a group join needs a consumer that polls with a
        # timeout (poll(0) never completes one), and the poll loop must not wait for it.
        self._elector_thread = threading.Thread(target=self._elect, name="featsieve-writer-election", daemon=True)
        self._elector_thread.start()

    def _elect(self) -> None:
        s = self.s
        elector = make_consumer(
            self._endpoint,
            group_id=f"{s.group_id}.writer",
            session_timeout_ms=int(s.writer_session_timeout_s * 1000),
            heartbeat_interval_ms=max(500, int(s.writer_session_timeout_s * 1000) // 4),
            # sticky: a member joining or leaving does not move the writer partition off a live writer
            partition_assignment_strategy=[StickyPartitionAssignor],
        )
        adopt_consumer(elector)  # keep metadata rejoins (connectors/kafka_compat.py)
        try:
            subscribe(elector, [s.control_topic], listener=_Elect(self))
            while not self._stop.is_set():
                try:
                    elector.poll(timeout_ms=500)
                except Exception as exc:  # keep electing through broker trouble; we are simply not elected
                    self.elected = False
                    log.warning("writer election: %s", exc)
                    self._stop.wait(1.0)
        finally:
            self.elected = False
            elector.close()

    def poll(self) -> None:
        """Keep the view of the stats topic current (never blocks)."""
        self.view.poll(timeout_ms=0)

    # ------------------------------------------------------------- shards
    def publish_shards(self, shards: Iterable[ShardState], fields: list[str]) -> int:
        """Publish the shards' states; ``fields`` (our interner's columns) say what the join's
        rows of value hashes hold, so that another instance can map them to its own columns."""
        size = 0
        for shard in shards:
            try:
                size += self.stats.send(shard_key(self.model, shard.shard), {"instance": self.instance,
                                                                               "shard": shard.snapshot(),
                                                                               "fields": fields})
            except KafkaError as exc:  # e.g. a record above the topic's max.message.bytes
                log.error("shard %d state not published to %s: %s; the next owner of the shard will resume from "
                          "an older state. Lower mi_blocks, mi_max_values or max_pending_impressions to shrink it",
                          shard.shard, self.s.stats_topic, exc)
        return size

    def shard_from_topic(self, shard: int) -> tuple[ShardState, list[str]] | None:
        """The newest published state of a shard and the columns of its rows (read the topic to
        its end first)."""
        self.view.catch_up()
        rec = self.view.get(shard_key(self.model, shard))
        if rec is None:
            return None
        return ShardState.restore(rec.payload["shard"]), list(rec.payload.get("fields", []))

    def other_shards_mi(self, owned: Iterable[int]) -> list[MIState]:
        """MI states of the shards other instances own, as last published (decoded once per record)."""
        mine = set(owned)
        out = []
        for rec in self.view.with_prefix("shard"):
            shard = int(rec.key.rsplit("/", 1)[1])
            if shard in mine:
                continue
            cached = self._mi_cache.get(rec.key)
            if cached is None or cached[0] != rec.offset:
                cached = (rec.offset, MIState.restore(rec.payload["shard"]["mi"]))
                self._mi_cache[rec.key] = cached
            out.append(cached[1])
        return out

    # -------------------------------------------------------------- gates
    def publish_gates(self, report: dict[str, Any] | None) -> None:
        if report is not None:
            self.stats.send(gates_key(self.model, self.instance), {"instance": self.instance, "report": report})

    def combined_gates(self, own: dict[str, Any] | None) -> dict[str, Any] | None:
        reports = [r.payload["report"] for r in self.view.with_prefix("gates")
                   if r.payload.get("instance") != self.instance]
        if own is not None:
            reports.append(own)
        return combine_gate_reports(reports)

    # ------------------------------------------------------------- policy
    def publish_policy(self, policy: dict[str, Any], epoch: int, version: int,
                       incarnation: str | None = None) -> None:
        self.stats.send(policy_key(self.model), {"policy": policy, "epoch": epoch, "version": version,
                                                 "incarnation": incarnation, "instance": self.instance})

    def policy_from_topic(self) -> dict[str, Any] | None:
        self.view.catch_up()
        rec = self.view.get(policy_key(self.model))
        return rec.payload if rec is not None else None

    def flush(self) -> None:
        self.stats.flush()

    def close(self) -> None:
        self._stop.set()
        self._elector_thread.join(10)
        for closer in (self.view, self.stats):
            try:
                closer.close()
            except Exception as exc:  # closing must not hide the reason we are closing
                log.warning("coordinator close: %s", exc)


def combine_gate_reports(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Weighted combination of name-keyed gate reports (weights: examples each instance trained on)."""
    reports = [r for r in reports if r and r.get("field_gates")]
    if not reports:
        return None
    if len(reports) == 1:
        return reports[0]
    weights = [max(float(r.get("examples") or 0), 1.0) for r in reports]
    total = sum(weights)
    fields: dict[str, tuple[float, float]] = {}
    for r, w in zip(reports, weights, strict=True):
        for name, share in r["field_gates"].items():
            acc, wsum = fields.get(name, (0.0, 0.0))
            fields[name] = (acc + w * float(share), wsum + w)
    # votes per closed value, by its key: True and 1 (equal in Python) are different values
    closed_votes: dict[str, dict[tuple[int, Any], float]] = {}
    closed_named: dict[tuple[int, Any], Any] = {}
    for r, w in zip(reports, weights, strict=True):
        for name, values in (r.get("closed_values") or {}).items():
            votes = closed_votes.setdefault(name, {})
            for v in typed_closed_values(values):
                vkey = closed_value_key(v)
                closed_named.setdefault(vkey, v)
                votes[vkey] = votes.get(vkey, 0.0) + w
    metrics: dict[str, float | None] = {}
    for key in ("auc_gated", "auc_ungated", "logloss_gated", "logloss_ungated"):
        pairs = [(w, r["metrics"][key]) for r, w in zip(reports, weights, strict=True)
                 if r.get("metrics", {}).get(key) is not None]
        metrics[key] = sum(w * v for w, v in pairs) / sum(w for w, _ in pairs) if pairs else None
    # the combined model has earned a vote only as far as its least trained instance has
    metrics["windows"] = float(min(float((r.get("metrics") or {}).get("windows") or 0) for r in reports))
    return {
        "field_gates": {n: acc / wsum for n, (acc, wsum) in sorted(fields.items())},
        "closed_values": {
            n: [closed_named[k] for k in sorted(k for k, w in votes.items() if w > total / 2)]
            for n, votes in sorted(closed_votes.items())
        },
        "metrics": metrics,
        "examples": int(sum(float(r.get("examples") or 0) for r in reports)),
        "instances": len(reports),
    }


def global_state_from_topic(endpoint: KafkaEndpoint, topic: str, model_id: str) -> list[ShardState]:
    """Every shard's newest published state (the global state is their merge)."""
    view = StatsView(endpoint, topic, model_id)
    try:
        view.catch_up()
        return [ShardState.restore(r.payload["shard"]) for r in view.with_prefix("shard")]
    finally:
        view.close()
