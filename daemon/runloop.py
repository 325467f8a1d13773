"""The daemon: poll → decode → join → count → (train) → decide → publish → checkpoint.

One thread polls Kafka and owns all state except the gate model (which lives
on its own worker, see :mod:`daemon.gate_worker`). Signal handlers only set a
flag; the loop finishes the batch in hand, publishes, checkpoints and exits 0.
A repeated signal within ``SIGNAL_GRACE_S`` of the first is part of the same
request (``timeout`` and process supervisors send SIGTERM more than once, a
user presses Ctrl+C twice); one later than that exits at once (code 130, no
final checkpoint).

The state lock is never held across a blocking network call: dead letters
are queued under it and delivered outside it (:mod:`connectors.dead_letters`),
masks are built under it and published outside it.

Checkpoint order: flush what was produced (dead letters) and
confirm delivery → write the snapshot atomically → commit offsets. At
start-up the snapshot's offsets win over the group's committed offsets, so a
crash at any point replays exactly the records the snapshot does not reflect.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import queue
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from connectors import failpoints
from connectors.codec import Limits
from connectors.dead_letters import DeadLetterQueue, DeadLettersUndelivered
from connectors.decode_worker import (
    KIND_CLICK,
    ROW_DTYPE,
    DecodeWorker,
    DecodeWorkerError,
    WireBatch,
    blank_column,
    column_value,
    decode_wire,
    from_wire,
    hash_rows,
    remap_rows,
    rows_matrix,
)
from connectors.join import JoinBuffer
from connectors.kafka_compat import (
    adopt_consumer,
    broker_connected,
    check_version,
    install_socket_reader,
    read_batches_fast,
)
from connectors.kafka_io import (
    ClientPropertyError,
    TopicConfigError,
    TopicSpec,
    connection_cause,
    ensure_topics,
    forget_connection_failures,
    make_admin,
    make_consumer,
    subscribe,
    wait_for_topics,
)
from connectors.mask_publisher import MaskPublisher, PublishedPosition, WriterFencedError
from connectors.record_reader import SKIPPED as _SKIPPED
from connectors.record_reader import KeySample
from connectors.state_store import SnapshotError, SnapshotStore, StateWriteError
from connectors.stats import TOPIC_CONFIG as STATS_TOPIC_CONFIG
from daemon.baked import GATE_SETTINGS, StateRefused, baked_settings, changed_settings, refusal
from daemon.config import ConfigError, Settings
from daemon.masking import MaskBuilder, named_gate_report
from daemon.metrics import DaemonMetrics, LiveGauges
from daemon.settings_map import endpoint_from, gate_config_from, limits_from, mi_config_from
from daemon.shards import ShardState, merged_mi
from models.admission import ColumnActivity, FieldAdmission
from models.interning import HOLE, MISSING, EncodedBatch, HashVersionError, Interner
from models.mi import MIState
from models.sampling import AutoRate, RateSchedule, kept, threshold

log = logging.getLogger("featsieve")

STATE_FORMAT = 1
CONNECT_TIMEOUT_MS = 10_000  # per connection attempt at start-up (then backoff)
COMMIT_TIMEOUT_MS = 5_000  # offsets are in the snapshot already; the group commit is advisory
TOPIC_WAIT_S = 5.0  # at start-up, how long to wait for the input topics' metadata before subscribing
INPUT_METADATA_MAX_AGE_MS = 30_000
SIGNAL_GRACE_S = 2.0  # a second signal within this of the first is the same stop request
SHUTDOWN_DLQ_WAIT_S = 30.0  # at shutdown, how long dead letters may still take to be delivered
STATE_RETRY_S = 5.0  # while snapshots cannot be written (disk full ...), how often the checkpoint is tried again
GATE_DRAIN_TIMEOUT_S = 600.0  # --exit-at-end: how long the gate model may take to train its queue
# allocations between young-generation collections, and the older generations' (CPython: 700, 10, 10)
GC_THRESHOLDS = (20_000, 20, 100)
AUTO_RATE_STEP_S = 5.0  # sample_rate = auto: seconds between looks at the consumer lag


class StopRequested(Exception):
    pass


class DurationElapsed(Exception):
    """``--duration`` ran out before the daemon could connect: it stops with exit code 2."""


class _Rebalance(ConsumerRebalanceListener):
    """Revoked partitions are checkpointed before they go; assigned ones are sought to our offsets.

    kafka-python calls these on its I/O thread, whenever a rebalance completes there, not only
    inside ``poll()``: they take the daemon's state lock, which the poll loop holds whenever it
    touches state (never while it waits on the consumer), so they never run in the middle of a batch.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        with self.daemon.state_lock:
            self.daemon.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        with self.daemon.state_lock:
            self.daemon.on_assigned(list(assigned))

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        # KIP-429: the member was evicted; the partitions may already have another owner
        with self.daemon.state_lock:
            self.daemon.on_lost(list(lost))


class Daemon:
    """One featsieve instance. ``run()`` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        *,
        exit_at_end: bool = False,
        max_events: int | None = None,
        duration_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        reset_state: bool = False,
    ) -> None:
        self.s = settings
        self.reset_state = reset_state
        self.metrics = DaemonMetrics(registry)
        self.exit_at_end = exit_at_end
        self.max_events = max_events
        self.duration_s = duration_s
        self.clock = clock
        self.endpoint = endpoint_from(settings)
        self.limits: Limits = limits_from(settings)
        self.mi_config = mi_config_from(settings)
        state_dir = settings.state_dir
        if settings.coordination == "group":
            # replicas may share a volume: each keeps its snapshots apart (the stats topic is shared)
            from daemon.cluster import default_instance_id

            state_dir = os.path.join(state_dir, settings.instance_id or default_instance_id())
        self.store = SnapshotStore(state_dir, keep=settings.keep_snapshots)
        # names get columns only once they have earned them (models/admission.py): never by encoding
        self.interner = Interner(settings.max_fields, admit_new=False)
        self.activity = ColumnActivity(settings.field_reclaim_events)
        self.shards: dict[int, ShardState] = {}
        self.assigned: set[TopicPartition] = set()
        self.end_targets: dict[TopicPartition, int] | None = None
        self._end_reached_at: float | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.events_seen = 0
        self.events_seen_total = 0  # with the events of earlier runs (from the snapshot)
        # perf_counter() at the start of the poll that first returned records, and after the
        # latest batch was processed: the steady-state window that `featsieve bench e2e` reports
        self.first_records_at: float | None = None
        self.last_batch_done_at: float | None = None
        self.trained_at_last_batch = 0  # gate examples trained when the last batch was applied (bench)
        self.events_since_checkpoint = 0
        self.last_checkpoint_wall: float | None = None
        self.last_checkpoint_mono = clock()
        self.last_mask_mono = -1e18
        self.last_record_ts: dict[tuple[str, int], float] = {}
        self.kafka_ok = False
        self._disconnected_since: float | None = None
        self._stop = False
        self._started = self.clock()  # reset by run()
        self._closing = False  # the final checkpoint is written; close() must not write another
        self._signals = 0
        self._first_signal_at: float | None = None
        # (lowest watermark, highest watermark, shard of the highest) over the owned shards, set by
        # the loop after each batch: /readyz and the event-time lag gauge read it from other threads
        self.event_time: tuple[int | None, int | None, int | None] = (None, None, None)
        self._paused_for: str | None = None  # why consumption is paused (dead letters, state), None if it is not
        self.state_write_error: str | None = None  # the last snapshot write's error, None once one succeeds
        self._state_retry_mono = 0.0
        self.restored_position: PublishedPosition | None = None
        self.trainer: Any = None
        self.decoder: DecodeWorker | None = None
        self.state_lock = threading.RLock()  # the poll loop's state against the rebalance callbacks
        self._rebalance_count = 0  # callbacks run so far: a batch polled before one is stale
        # batches handed to the decoder and not yet applied, oldest first (their offsets are not
        # in any shard yet: a checkpoint taken meanwhile resumes before them)
        self._in_flight: deque[tuple[TopicPartition, list[ConsumerRecord]]] = deque()
        # columns reclaimed by this process, in order, and for each batch in flight how many had been
        # when it was submitted: its rows still hold the old fields' values in the later ones
        self._releases: list[tuple[int, str]] = []
        self._in_flight_releases: deque[int] = deque()
        # key-hash sampling (docs/events.md, "Sampling"): the reader leaves out what is not in it
        rate = settings.sample_rate
        self.auto_rate = AutoRate(lowest=settings.sample_rate_min, high_lag=max(settings.ready_max_lag, 1),
                                  low_lag=settings.ready_max_lag // 100) if rate == "auto" else None
        self.sample = KeySample(rate if isinstance(rate, float) else 1.0)  # auto starts at 1
        # auto: the impression rate and the (higher, for a while) rate clicks are read at
        self.schedule = RateSchedule(1.0, int((settings.attribution_window_s + settings.lateness_s) * 1000))
        self._impression_below: bytes | None = None  # the joins leave out impressions over it (auto)
        self._sampled_out_joined = 0
        self.sample_in_reader = False  # set by _connect: the fast reader samples, else _take does
        self.sampled_out = 0  # records this process left out of the sample (reader and joins)
        self._auto_rate_at = -1e18
        self.metrics.sample_rate.set(self.sample.rate)
        self.masks = MaskBuilder(settings)
        self.masks.sample_rate = self.sample.rate
        self.publisher: MaskPublisher | None = None
        self.consumer: Any = None
        self.dlq: DeadLetterQueue | None = None
        self.group_mode = settings.coordination == "group"
        self.coordinator: Any = None  # daemon.cluster.Coordinator in group mode
        self._fenced_in = 0  # the election generation in which we were last fenced
        self.last_mask_publish_wall: float | None = None  # this instance's last publish, writer or not now
        self.metrics.set_instance(model=settings.model_id, group=settings.group_id, coordination=settings.coordination)
        self.metrics.attach(
            LiveGauges(self._lag, self._join_size, lambda: self.last_checkpoint_wall, self._mask_time,
                       group=settings.group_id, mask_publish_timestamp=lambda: self.last_mask_publish_wall,
                       watermark=lambda: self.event_time[0],
                       dead_letters_waiting=lambda: self.dlq.pending if self.dlq is not None else 0)
        )

    # ------------------------------------------------------------------ state
    def _new_shard(self, shard: int) -> ShardState:
        s = self.s
        join = JoinBuffer(
            window_ms=int(s.attribution_window_s * 1000),
            lateness_ms=int(s.lateness_s * 1000),
            max_pending=s.max_pending_impressions,
            max_future_ms=int(s.max_future_s * 1000),
            quorum=s.watermark_quorum,
            max_clock_skew_ms=int(s.max_clock_skew_s * 1000),
            max_pending_bytes=s.max_pending_bytes,
            # every input topic's partition of this shard holds the watermark: otherwise a shard that
            # has read only impressions so far would expire them before their clicks are read
            sources=[(t, shard) for t in s.input_topics],
        )
        join.impression_below = self._impression_below
        return ShardState(shard=shard, join=join, mi=MIState(self.mi_config),
                          admission=FieldAdmission(s.field_admit_min_events))

    def _restore(self) -> int:
        """Restore the newest snapshot; 0 bytes on a first start (or with ``--reset-state``).

        Raises :class:`StateRefused` rather than start from empty state when snapshots exist but
        none is readable, when they come from a newer build, or when a setting baked into them
        changed in a way that cannot be applied (daemon/baked.py).
        """
        if self.reset_state:
            aside = self.store.set_aside(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
            if aside is not None:
                log.warning("--reset-state: the snapshots were moved to %s; starting from empty state "
                            "(the input is read again from the beginning)", aside)
            return 0
        try:
            loaded = self.store.load_latest()
        except SnapshotError as exc:
            raise StateRefused(str(exc)) from exc
        if loaded is None:
            return 0
        state = loaded.state
        where = str(self.store.directory)
        fmt = state.get("format") if isinstance(state, dict) else None
        if not isinstance(fmt, int) or fmt != STATE_FORMAT:
            newer = isinstance(fmt, int) and fmt > STATE_FORMAT
            raise StateRefused(
                f"{loaded.path.name} in {where} holds state format {fmt!r}, this build reads {STATE_FORMAT}"
                + (" (written by a newer featsieve: run that build" if newer else " (")
                + ", or start with --reset-state to move the snapshots aside and start empty)")
        recorded = state.get("settings") or {}
        refused, applied = changed_settings(recorded, self.s)
        if "max_fields" in applied and len(state["interner"]["fields"]) > self.s.max_fields:
            refused.append("max_fields")
            applied.remove("max_fields")
        if refused:
            raise StateRefused(refusal(refused, recorded, self.s, where))
        try:
            self.interner = Interner.restore(state["interner"])
            self.interner.admit_new = False
            self.shards = {int(sh["shard"]): ShardState.restore(sh, self.s.field_admit_min_events)
                           for sh in state["shards"]}
            self._rows_from_dicts()
            for shard in self.shards.values():
                self._admission_of(shard)
            if state.get("activity") is not None:
                self.activity = ColumnActivity.restore(state["activity"], self.s.field_reclaim_events)
            for col in range(len(self.interner.fields)):
                self.activity.touch(col, 0)  # state from before columns were watched: seen at the start
            self.masks.restore(state["policy"])
        except (HashVersionError, KeyError, TypeError, ValueError) as exc:
            raise StateRefused(f"{loaded.path.name} in {where} cannot be restored by this build ({exc!r}); "
                               "start with --reset-state to move the snapshots aside and start empty") from exc
        self._apply_settings(applied, recorded)
        pub = state.get("publisher")
        if pub:
            self.restored_position = PublishedPosition(int(pub["epoch"]), int(pub["version"]),
                                                       pub.get("incarnation"))
        self._restored_gates = state.get("gates")
        if self._restored_gates is not None and GATE_SETTINGS & set(applied):
            self._restored_gates = None
        self.events_seen_total = int(state.get("events_seen", 0))
        return loaded.size_bytes

    def _bound_event_time(self, shard: ShardState) -> None:
        """A restored shard follows this run's event-time bounds (they are not the state's)."""
        shard.join.set_event_time_bounds(self.s.watermark_quorum, int(self.s.max_clock_skew_s * 1000))

    def _apply_settings(self, changed: list[str], recorded: dict[str, Any]) -> None:
        """Give restored state the current values of the settings it can take (daemon/baked.py
        says which; unchanged ones are no-ops); ``changed`` are logged."""
        s = self.s
        for shard in self.shards.values():
            shard.join.reconfigure(max_pending=s.max_pending_impressions, max_future_ms=int(s.max_future_s * 1000),
                                   max_pending_bytes=s.max_pending_bytes)
            self._bound_event_time(shard)
            now = self.mi_config
            shard.mi.config = dataclasses.replace(
                shard.mi.config, blocks=now.blocks, pairs_top_n=now.pairs_top_n, max_pairs=now.max_pairs,
                pair_budget=now.pair_budget, pair_keep_z=now.pair_keep_z)
        self.interner.max_fields = s.max_fields
        for name in changed:
            log.warning("setting %s changed since the snapshot (%r -> %r): applied to the restored state",
                        name, recorded[name], getattr(s, name))

    def _rows_from_dicts(self) -> None:
        """Impressions restored from a snapshot of an earlier version wait with feature dicts: hash
        them into rows, then start the interner afresh from its own snapshot, so that the decode
        worker's replica (started from that snapshot too) and this copy are the same."""
        def rows(features: list[Any]) -> list[Any]:
            dicts = [f for f in features if f.__class__ is dict]
            if not dicts:
                return features
            self.interner.admit(sorted(set().union(*dicts)))  # tracked, as that version did
            it = iter(hash_rows(self.interner.encode(dicts).hashes))
            return [next(it) if f.__class__ is dict else f for f in features]

        if sum(shard.join.map_features(rows) for shard in self.shards.values()):
            self.interner = Interner.restore(self.interner.snapshot())
            self.interner.admit_new = False

    def state_snapshot(self, gates: Any = None) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "interner": self.interner.snapshot(),
            "shards": [self.shards[k].snapshot() for k in sorted(self.shards)],
            "policy": self.masks.snapshot(),
            "publisher": self._position_snapshot(),
            "gates": gates,
            "events_seen": self.events_seen_total,
            "settings": baked_settings(self.s),
            "activity": self.activity.snapshot(),
        }

    def _position_snapshot(self) -> dict[str, Any] | None:
        pos = self.publisher.position() if self.publisher is not None else self.restored_position
        if pos is None:
            return None
        return {"epoch": pos.epoch, "version": pos.version, "incarnation": pos.incarnation}

    # ------------------------------------------------------------- rebalance
    # kafka-python runs these callbacks on its network thread: nothing here may block on a
    # consumer request (commit, end_offsets), so revocation commits asynchronously and the
    # end offsets for --exit-at-end are fetched by the main loop.
    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        self._rebalance_count += 1
        self.metrics.rebalances.labels("revoked").inc()
        self._settle_in_flight(drop=set(revoked))
        if revoked and (self.publisher is not None or self.coordinator is not None) and not self._closing:
            self.checkpoint(reason="revoke", sync_commit=False)
        self._give_up(revoked)
        log.info("partitions revoked: %s", _tp_list(revoked))
        self._note_event_time()

    def on_lost(self, lost: list[TopicPartition]) -> None:
        """Partitions taken from an evicted member (session expired, fenced): unlike a revocation
        nothing is checkpointed, committed or published for them, since another instance may own
        them already. In group mode their shards are dropped, and the next owner resumes from the
        last states on the stats topic, which are consistent with their offsets: nothing is lost
        or counted twice."""
        self._rebalance_count += 1
        self.metrics.rebalances.labels("lost").inc()
        self._settle_in_flight(drop=set(lost))
        self._give_up(lost)
        log.warning("partitions lost (this member was evicted from the group): %s", _tp_list(lost))
        self._note_event_time()

    def _give_up(self, partitions: list[TopicPartition]) -> None:
        """No longer ours. In group mode their shards go: the next owner resumes them from the
        last states on the stats topic, and holding them would count twice. A single instance
        keeps its shards: no other instance reads them, and their state is consistent with their
        own offsets, which the next assignment seeks to."""
        self.assigned -= set(partitions)
        if self.group_mode:
            kept = {tp.partition for tp in self.assigned}
            for tp in partitions:
                if tp.partition not in kept:
                    self.shards.pop(tp.partition, None)

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        self._rebalance_count += 1
        self.metrics.rebalances.labels("assigned").inc()
        self.assigned |= set(assigned)
        if self.coordinator is not None:
            for p in sorted({tp.partition for tp in assigned}):
                self._take_over_shard(p)
        for tp in assigned:
            self._seek_to_state(tp)
        log.info("partitions assigned: %s", _tp_list(assigned))
        self._note_event_time()

    def _seek_to_state(self, tp: TopicPartition) -> None:
        """Point the consumer at the next record our state has not counted."""
        shard = self.shards.get(tp.partition)
        offset = shard.offsets.get((tp.topic, tp.partition)) if shard else None
        if offset is None:
            self.consumer.seek_to_beginning(tp)
        else:
            self.consumer.seek(tp, offset)

    # ------------------------------------------------------------------- run
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """First signal: stop cleanly. Again within SIGNAL_GRACE_S: the same request (``timeout``
        sends SIGTERM twice within microseconds). Later than that: exit at once.

        Time only, not a count: the kernel merges signals that arrive before the handler runs,
        so "the third signal" would sometimes be the second."""
        name = signal.Signals(signum).name
        now = time.monotonic()
        self._signals += 1
        if self._first_signal_at is None:
            self._first_signal_at = now
            log.info("signal %s: finishing the batch in hand, then checkpointing", name)
            self._stop = True
            return
        if now - self._first_signal_at > SIGNAL_GRACE_S:
            log.warning("signal %s again while stopping: exiting at once, without a final checkpoint", name)
            os._exit(130)
        log.info("signal %s again within %.0f s: already stopping cleanly (a signal after %.0f s exits at once)",
                 name, SIGNAL_GRACE_S, SIGNAL_GRACE_S)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.events_seen_total = 0
        self._restored_gates = None
        self._started = self.clock()  # --duration counts from here: connecting and restoring included
        restored_bytes = self._restore()
        if self.s.decode_process:
            if len(os.sched_getaffinity(0)) < 2:
                log.warning("decode_process is on with one usable core: the worker competes with the poll "
                            "loop (set FEATSIEVE_DECODE_PROCESS=false to decode in the loop)")
            self.decoder = DecodeWorker(self.limits, self.interner, GC_THRESHOLDS)  # starts while we connect
        try:
            self._connect()
        except ConfigError:
            self._close()  # the decode worker and any client made so far
            raise
        except DurationElapsed as exc:
            log.error("%s", exc)
            self._close()
            return 2
        self._start_connection_watch()
        self._start_gates()
        # Every batch allocates thousands of feature dicts and the join holds tens of thousands:
        # with the default gen-0 threshold (700) the collector runs every few events and walks
        # the whole buffer at each gen-2 pass (measured: ~8% of the loop). Fewer, larger passes.
        gc.set_threshold(*GC_THRESHOLDS)
        log.info(
            "featsieve started: model=%s group=%s topics=%s restored_state_bytes=%d offsets=%s epoch=%d version=%d",
            self.s.model_id, self.s.group_id, ",".join(self.s.input_topics), restored_bytes,
            self._offsets_text(), self.publisher.epoch if self.publisher else 0,
            self.publisher.version if self.publisher else 0,
        )
        started = self._started
        reached_end = False
        try:
            while not self._stop:
                if self.coordinator is not None:
                    with self.state_lock:
                        self._coordinate()
                # dead letters first, outside the lock: while some wait, nothing more is consumed
                self._hold_consumption(self._hold_reason(self._deliver_dead_letters()))
                self._poll_once()
                now = self.clock()
                self._step_sample_rate(now)
                if now - self.last_mask_mono >= self.s.mask_interval_s:
                    self.update_mask()
                due = (now - self.last_checkpoint_mono >= self.s.checkpoint_interval_s
                       or self.events_since_checkpoint >= self.s.checkpoint_interval_events)
                if self.state_write_error is not None:  # disk full ...: try again every STATE_RETRY_S
                    due = now - self._state_retry_mono >= STATE_RETRY_S
                if due and self._deliver_dead_letters():
                    self._interval_checkpoint()
                if self.max_events is not None and self.events_seen >= self.max_events:
                    break
                if self.duration_s is not None and now - started >= self.duration_s:
                    break
                if self.exit_at_end and self._reached_end() and self._election_settled(now):
                    reached_end = True
                    break
            with self.state_lock:
                self._settle_in_flight()
            self._final_dead_letters()
            if reached_end:
                self._drain_gates()
        except WriterFencedError as exc:
            log.error("%s; stopping without publishing", exc)
            failpoints.hit("writer_fenced", until=lambda: self._stop)  # tests: stand still, fenced
            self._close()
            return 3
        except DeadLettersUndelivered as exc:
            # the batch in hand is half applied: no checkpoint; the last one is consistent and a
            # restart replays from it, so nothing is lost or counted twice
            log.error("%s; stopping without a final checkpoint (a restart resumes from the last one)", exc)
            self._closing = True
            self._close()
            return 1
        # with gates, the drain above brought their evidence up to the end: publish it
        self.update_mask(force=True, end_of_input=reached_end and self.trainer is not None)
        with self.state_lock:
            size = self.checkpoint(reason="shutdown")
        if self.state_write_error is not None:
            log.error("stopping without a final checkpoint: %s (a restart resumes from the last snapshot "
                      "written, so nothing is lost or counted twice)", self.state_write_error)
            self._close()
            return 1
        join = self._join_totals()
        log.info(
            "featsieve stopped: events=%d state_bytes=%d offsets=%s mask_version=%d sample_rate=%g sampled_out=%d "
            "positives=%d negatives=%d orphan_clicks=%d",
            self.events_seen, size, self._offsets_text(), self.publisher.version if self.publisher else 0,
            self.schedule.rate if self.auto_rate is not None else self.sample.rate,
            self.sampled_out,
            join["positives"], join["negatives"], join["orphan_clicks"],
        )
        self._close()
        return 0

    def _connect(self) -> None:
        """Create topics and clients, retrying with backoff while Kafka is unreachable or refuses us.

        Each failed attempt is one log line naming the cause (authentication, certificate,
        unreachable ...) and the wait before the next; the wait doubles up to 30 s, so a
        misconfigured daemon stays not-ready without spinning.
        """
        # kafka-python's transports read in large chunks for every client of this process from
        # here on (connectors/kafka_compat.py; nothing is installed outside its supported range)
        install_socket_reader()
        backoff = 1.0
        while not self._stop:
            left = self._time_left()
            if left is not None and left <= 0:
                raise DurationElapsed(f"cannot connect to Kafka at {','.join(self.s.bootstrap)} within "
                                      f"--duration {self.duration_s:g} s; stopping")
            attempt_ms = CONNECT_TIMEOUT_MS if left is None else max(100, min(CONNECT_TIMEOUT_MS, int(left * 1000)))
            try:
                admin = make_admin(self.endpoint, bootstrap_timeout_ms=attempt_ms)
                try:
                    self._ensure_topics(admin)
                finally:
                    admin.close()
                if self.group_mode:
                    from daemon.cluster import Coordinator

                    self.coordinator = Coordinator(self.s, self.endpoint)
                else:
                    self.publisher = MaskPublisher(
                        self.endpoint, self.s.mask_topic, self.s.model_id, restored=self.restored_position
                    )
                    self.metrics.mask_writer.set(1)
                self.dlq = DeadLetterQueue(self.endpoint, self.s.dlq_topic, max_letter_bytes=self.s.dlq_max_record_bytes)
                self.consumer = make_consumer(
                    self.endpoint,
                    group_id=self.s.group_id,
                    max_poll_records=self.s.max_poll_records,
                    fetch_max_bytes=self.s.fetch_max_bytes,
                    max_partition_fetch_bytes=self.s.max_partition_fetch_bytes,
                    partition_assignment_strategy=[RangePartitionAssignor],
                    # input topics or partitions created later are found within this, not 5 min
                    metadata_max_age_ms=INPUT_METADATA_MAX_AGE_MS,
                    session_timeout_ms=int(self.s.group_session_timeout_s * 1000),
                    heartbeat_interval_ms=min(3000, int(self.s.group_session_timeout_s * 1000) // 3),
                )
                adopt_consumer(self.consumer)  # the kept metadata rejoins
                self.sample_in_reader = read_batches_fast(self.consumer, self.sample)
                # outside kafka_compat's range it has said so once already: no second warning here
                if not self.sample_in_reader and check_version():
                    log.warning("this kafka-python's internals are not the ones connectors/kafka_compat.py "
                                "was written against: fetched batches are read by the library's own reader")
                try:
                    # join the group knowing the input partitions: a consumer that joins before
                    # their metadata is known (a broker just restarted, topics just created) is
                    # assigned nothing until its next metadata refresh
                    wait_for_topics(self.consumer, self.s.input_topics,
                                    timeout_s=TOPIC_WAIT_S if left is None else max(0.1, min(TOPIC_WAIT_S, left)))
                except TimeoutError as exc:
                    log.warning("%s; subscribing anyway (their partitions are assigned when they appear)", exc)
                subscribe(self.consumer, self.s.input_topics, listener=_Rebalance(self))
                if self.publisher is not None:
                    self.metrics.mask_epoch.set(self.publisher.epoch)
                self.kafka_ok = True
                self._disconnected_since = None
                forget_connection_failures()
                log.info("connected to Kafka at %s (%s)", ",".join(self.s.bootstrap), self.s.kafka_security_protocol)
                return
            except ClientPropertyError as exc:
                raise ConfigError(f"invalid setting kafka_client_properties: {exc}") from None
            except (KafkaError, TimeoutError) as exc:
                self.kafka_ok = False
                self._close_clients()
                self.metrics.kafka_errors.labels(type(exc).__name__).inc()
                log.error("cannot connect to Kafka at %s: %s; retrying in %.0f s",
                          ",".join(self.s.bootstrap), connection_cause(exc), backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        raise SystemExit(0)

    def _ensure_topics(self, admin: Any) -> None:
        """Create the internal topics (mask, dead letters; in group mode stats and control) as the
        topic_* settings say; an existing mask or stats topic must be compacted (the newest mask of
        a model, a shard's state, must outlive retention), the stats topic must take its records,
        and a topic featsieve writes needs at least its min.insync.replicas replicas. A topic
        problem is a configuration error: start-up stops (:class:`ConfigError`)."""
        s = self.s
        specs = [
            TopicSpec(s.mask_topic, 1, {"cleanup.policy": "compact"}, required=("cleanup.policy",)),
            TopicSpec(s.dlq_topic, 1, {}),
        ]
        if self.group_mode:
            specs += [TopicSpec(s.stats_topic, 1, STATS_TOPIC_CONFIG, required=tuple(STATS_TOPIC_CONFIG)),
                      # only joined (its owner is the writer), never written
                      TopicSpec(s.control_topic, 1, {}, written=False)]
        try:
            created = ensure_topics(admin, specs, replication_factor=s.topic_replication_factor,
                                    min_insync_replicas=s.topic_min_insync_replicas)
        except TopicConfigError as exc:
            if exc.config is None:
                raise ConfigError(f"invalid setting topic_replication_factor/topic_min_insync_replicas: {exc}") from None
            setting = {s.stats_topic: "stats_topic", s.dlq_topic: "dlq_topic"}.get(exc.topic, "mask_topic")
            raise ConfigError(f"invalid setting {setting}: {exc}") from None
        if created:
            log.info("created topics %s (replication factor %s)", ",".join(created),
                     "broker default" if s.topic_replication_factor < 0 else s.topic_replication_factor)

    def _time_left(self) -> float | None:
        """Seconds left of ``--duration`` (None without one)."""
        if self.duration_s is None:
            return None
        return self.duration_s - (self.clock() - self._started)

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when a stop is requested or ``--duration`` runs out."""
        left = self._time_left()
        deadline = time.monotonic() + (seconds if left is None else min(seconds, max(left, 0.0)))
        while not self._stop and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))

    def _deliver_dead_letters(self, force: bool = False) -> bool:
        """Deliver queued dead letters (never under the state lock). True when none wait."""
        if self.dlq is None:
            return True
        assert not self.state_lock._is_owned(), "dead letters are delivered without the state lock"  # type: ignore[attr-defined]
        before = self.dlq.failures
        done = self.dlq.deliver(force=force)
        if self.dlq.failures > before and self.dlq.last_error is not None:
            self.metrics.kafka_errors.labels(type(self.dlq.last_error).__name__).inc()
        return done

    def _hold_reason(self, delivered: bool) -> str | None:
        """Why consumption must wait (None: it need not): dead letters not delivered, or a state
        that cannot be written. What is consumed meanwhile could be neither dead-lettered nor
        checkpointed, so nothing more is read until the cause is gone."""
        if self.state_write_error is not None:
            return f"the state cannot be written ({self.state_write_error})"
        if not delivered:
            return f"{self.dlq.pending if self.dlq else 0} dead letters wait for {self.s.dlq_topic}"
        return None

    def _hold_consumption(self, why: str | None) -> None:
        """Pause every assigned partition while ``why`` holds (the loop goes on polling, so the
        group membership and the rebalance callbacks live on); resume once it is gone."""
        consumer = self.consumer
        try:
            if why is not None:
                assignment = consumer.assignment()
                if assignment:
                    consumer.pause(*assignment)
                if self._paused_for is None:
                    log.warning("consumption paused: %s", why)
                self._paused_for = why
            elif self._paused_for is not None:
                consumer.resume(*consumer.paused())
                self._paused_for = None
                log.info("consumption resumed")
        except (KafkaError, KeyError, ValueError) as exc:  # the assignment changed under us: next time
            log.debug("pause/resume: %s", exc)

    def _final_dead_letters(self) -> None:
        """At shutdown: give waiting dead letters a last chance; raise if they cannot go."""
        deadline = time.monotonic() + SHUTDOWN_DLQ_WAIT_S
        while not self._deliver_dead_letters(force=True):
            if time.monotonic() >= deadline:
                assert self.dlq is not None
                raise DeadLettersUndelivered(
                    f"{self.dlq.pending} dead letters not delivered to {self.s.dlq_topic}: {self.dlq.reason()}")
            time.sleep(0.5)

    def _close_clients(self) -> None:
        """Close whatever a failed connection attempt created, so a retry starts clean."""
        for name in ("consumer", "dlq", "publisher", "coordinator"):
            client = getattr(self, name)
            if client is None:
                continue
            setattr(self, name, None)
            try:
                client.close()
            except KafkaError as exc:
                log.warning("close after a failed connection attempt: %s", exc)

    def _start_connection_watch(self) -> None:
        """Sample the consumer's broker connections on a thread of their own, twice a second.

        The poll loop can be held while the brokers are gone (a mask publish waits for its
        transaction to end; kafka-python's abort has no timeout), so the lost/reconnected log
        lines must not depend on it; /readyz reads the connection state directly as well.
        """
        def watch() -> None:
            while not self._watch_stop.wait(0.5):
                try:
                    self._watch_connection()
                except Exception as exc:  # never let the watch die silently
                    log.warning("connection watch: %s", exc)

        self._watcher = threading.Thread(target=watch, name="featsieve-connection-watch", daemon=True)
        self._watcher.start()

    def _watch_connection(self) -> None:
        """Log once when the brokers are lost and once when they are back (readiness follows)."""
        connected = broker_connected(self.consumer)
        if connected == self.kafka_ok:
            return
        self.kafka_ok = connected
        now = time.monotonic()
        if not connected:
            self._disconnected_since = now
            self.metrics.kafka_errors.labels("Disconnected").inc()
            log.error("lost the connection to Kafka at %s: %s; not ready, reconnecting",
                      ",".join(self.s.bootstrap), connection_cause())
        else:
            gone = now - self._disconnected_since if self._disconnected_since is not None else 0.0
            self._disconnected_since = None
            forget_connection_failures()
            log.info("reconnected to Kafka at %s after %.1f s", ",".join(self.s.bootstrap), gone)

    # ------------------------------------------------------------ group mode
    def _coordinate(self) -> None:
        """Follow the writer election; become or stop being the mask writer."""
        try:
            self.coordinator.poll()
        except KafkaError as exc:
            self.metrics.kafka_errors.labels(type(exc).__name__).inc()
            log.warning("coordination poll failed: %s", exc)
            return
        # fenced while still holding the writer partition: we were a zombie; wait for a fresh election
        if self.coordinator.elected and self.publisher is None and self.coordinator.generation > self._fenced_in:
            self._become_writer()
        elif not self.coordinator.elected and self.publisher is not None:
            self._step_down("the writer partition was reassigned")

    def _become_writer(self) -> None:
        restored = self.restored_position
        published = self.coordinator.policy_from_topic()
        if published is not None:
            self.masks.restore(published["policy"])
            pos = PublishedPosition(int(published["epoch"]), int(published["version"]),
                                    published.get("incarnation"))
            if restored is None or (pos.epoch, pos.version) > (restored.epoch, restored.version):
                restored = pos
        # a new transactional producer fences the previous writer; the epoch outranks every mask seen
        self.publisher = MaskPublisher(self.endpoint, self.s.mask_topic, self.s.model_id, restored=restored)
        self.metrics.mask_epoch.set(self.publisher.epoch)
        self.metrics.mask_writer.set(1)
        self.last_mask_mono = -1e18  # publish soon: subscribers should not wait for the interval
        log.info("became the mask writer: instance=%s epoch=%d after version %d",
                 self.coordinator.instance, self.publisher.epoch, self.publisher.version)

    def _step_down(self, why: str) -> None:
        assert self.publisher is not None
        log.warning("no longer the mask writer (%s): epoch=%d version=%d", why, self.publisher.epoch,
                    self.publisher.version)
        self.restored_position = self.publisher.position()
        self.metrics.mask_writer.set(0)
        self.publisher.close()
        self.publisher = None

    def _take_over_shard(self, p: int) -> None:
        """Resume shard ``p`` from whichever is newer: the stats topic or our own last snapshot."""
        found = self.coordinator.shard_from_topic(p)
        local = self.shards.get(p)
        if found is not None and (local is None or _progress(found[0]) >= _progress(local)):
            published, fields = found
            self._adopt_rows(published, fields)
            self._bound_event_time(published)
            self._admission_of(published)
            self.shards[p] = published
            log.info("shard %d resumed from the stats topic at %s", p, _offsets_of(published))

    def _adopt_rows(self, shard: ShardState, fields: list[str]) -> None:
        """Map the rows of another instance's join buffer (its columns: ``fields``) to ours,
        giving columns to names we have not seen (in the decode worker too: nothing is in
        flight during a rebalance, so both interners take them in the same order)."""
        if fields == self.interner.fields[: len(fields)]:
            return  # the same columns (the usual case: every instance sees the same producers)
        new = [f for f in fields if self.interner.column(f) is None]
        if new:
            assert not self._in_flight
            self.interner.admit(new)
            for name in new:  # earned elsewhere: tracked here from now on
                if (col := self.interner.column(name)) is not None:
                    self.activity.touch(col, self.activity.events)
            if self.decoder is not None:
                try:
                    self.decoder.admit(new)
                except DecodeWorkerError as exc:
                    self._decoder_failed(exc)
        cols = [self.interner.column(f) for f in fields]
        shard.join.map_features(lambda rows: remap_rows(rows, cols, len(self.interner.fields)))

    def owned_shards(self) -> list[ShardState]:
        owned = {tp.partition for tp in self.assigned}
        return [self.shards[p] for p in sorted(owned) if p in self.shards]

    def _start_gates(self) -> None:
        if not self.s.gates:
            return
        from daemon.gate_worker import GateTrainer
        from models.gates import GatedCTR

        config = gate_config_from(self.s)

        def factory(snapshot: Any = None) -> Any:
            if snapshot is not None:
                return GatedCTR.restore(snapshot)
            return GatedCTR(config, seed=self.s.seed)

        self.trainer = GateTrainer(
            factory,
            queue_batches=self.s.gate_queue_batches,
            on_trained=self.metrics.gate_examples.inc,
            report=lambda model: model.report(),
        ).start(self._restored_gates)
        if self.trainer.error is not None:
            raise RuntimeError("gate model failed to start") from self.trainer.error

    def _drain_gates(self) -> None:
        """At the end of a replay (``--exit-at-end``), let the gate model train what it has queued.

        The gate worker trails the poll loop by up to ``gate_queue_batches`` batches; without this
        the final mask carried the gate report of an earlier point of the stream, or none at all
        (the demo's ~114k examples ended with every gate '-' on a busy machine)."""
        if self.trainer is None:
            return
        queued = self.trainer.offered - self.trainer.skipped - self.trainer.trained
        log.info("end of the input: the gate model trains its %d queued examples before the final mask", queued)
        try:
            self.trainer.call(lambda model: None, timeout=GATE_DRAIN_TIMEOUT_S)
        except (TimeoutError, queue.Full, RuntimeError) as exc:
            log.warning("the gate model did not finish its queue (%s); the final mask has its last report", exc)

    def _poll_once(self) -> None:
        polled_at = time.perf_counter()
        rebalances = self._rebalance_count
        try:
            # with a batch in the decoder, only look for more: that batch is applied next
            batch = self.consumer.poll(timeout_ms=0 if self._in_flight else 200)
        except KafkaError as exc:
            self.metrics.kafka_errors.labels(type(exc).__name__).inc()
            log.error("poll failed: %s", exc)
            time.sleep(1.0)
            return
        if not batch and not self._in_flight:
            return
        if batch and self.first_records_at is None:
            self.first_records_at = polled_at
        with self.state_lock:
            if self._rebalance_count != rebalances and batch:
                # a rebalance ran on the I/O thread after (or while) this batch was fetched: its
                # records may predate the offsets the new assignment was sought to. Drop it and read
                # again from what our state has counted.
                for tp in batch:
                    if tp not in self.assigned:
                        continue
                    pending = [records for t, records in self._in_flight if t == tp]
                    if pending:  # still ours and in the decoder: read on after those
                        self.consumer.seek(tp, _next_offset(pending[-1]))
                    else:
                        self._seek_to_state(tp)
                batch = {}
            self._take(batch)
        self.last_batch_done_at = time.perf_counter()
        if batch:
            failpoints.hit("poll", until=lambda: self._stop)  # tests: stand still with a batch applied
        if self.trainer is not None:
            self.trained_at_last_batch = self.trainer.trained

    def _take(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Hand this poll's batches to the decoder (or decode them here) and apply earlier ones."""
        submitted = 0
        budget = None  # with --max-events: records still to take, so that exactly that many are applied
        if self.max_events is not None:
            budget = self.max_events - self.events_seen - sum(len(r) for _, r in self._in_flight)
        sampling = self.sample.below is not None or self.auto_rate is not None
        with self.metrics.batch_seconds.time():
            for tp, records in batch.items():
                if sampling:
                    if budget is not None and budget <= 0:
                        continue
                    records = self._sampled(records, budget)
                    if not records:  # all left out: the offsets move on, after the batches before
                        self._apply_in_flight()
                        self._advance(tp, records)
                        continue
                    if budget is not None:
                        budget -= len(records)  # cut to the budget already, with its runs left out
                elif budget is not None:
                    # the rest is not applied and its offsets not recorded: a later run reads it
                    records = records[: max(budget, 0)]
                    budget -= len(records)
                    if not records:
                        continue
                if self.decoder is not None:
                    submitted += self._submit(tp, records)
                else:
                    # a worker that failed may have left batches in flight: they are older
                    self._apply_in_flight()
                    self._process_partition(tp, records)
            if self.decoder is None:
                self._apply_in_flight()
            elif submitted:
                # keep the worker busy: apply what it has finished and poll on while it decodes
                # the rest (submit() waited for the oldest when max_in_flight were out)
                # (a worker that dies in a collect leaves no decoder: the rest is decoded here, next)
                while self._in_flight and self.decoder is not None and self.decoder.ready():
                    self._apply_in_flight(keep=len(self._in_flight) - 1)
            else:
                # nothing new in this poll: wait for the oldest batch (the next poll does not block)
                self._apply_in_flight(keep=max(len(self._in_flight) - 1, 0))

    def _sampled(self, records: list[ConsumerRecord], limit: int | None = None) -> list[ConsumerRecord]:
        """The records in the sample (at most ``limit``), as a list that knows the offset after
        the last record read and how many it left out (docs/events.md, "Sampling").

        The reader's markers stand for runs left out; one is counted only with a record kept
        after it or at the end, so a list cut at ``limit`` leaves its rest, runs included, to
        be read and counted later."""
        out = _Read()
        append = out.append
        skipped = 0
        run = 0
        last = records[-1]
        in_reader = self.sample_in_reader
        rate = self.sample.rate
        for r in records:
            if in_reader:
                if r.value is _SKIPPED:
                    run += r.serialized_value_size
                    continue
            elif not kept(r.key, rate):  # the library's reader: sample here, on the same hash
                run += 1
                continue
            if limit is not None and len(out) >= limit:
                last = out[-1]
                run = 0
                break
            skipped += run
            run = 0
            append(r)
        out.next_offset = last.offset + 1
        out.last_timestamp = last.timestamp
        out.skipped = skipped + run
        return out

    def _count_sampled_out(self, records: list[ConsumerRecord]) -> None:
        n = getattr(records, "skipped", 0)
        if n:
            self.metrics.sampled_out.inc(n)
            self.sampled_out += n

    def _advance(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        """Record as read a batch the sample left out entirely."""
        shard = self.shards.get(tp.partition)
        if shard is None:
            shard = self.shards[tp.partition] = self._new_shard(tp.partition)
        source = (tp.topic, tp.partition)
        shard.offsets[source] = _next_offset(records)
        self.last_record_ts[source] = getattr(records, "last_timestamp", 0) / 1000.0
        self._count_sampled_out(records)

    def _step_sample_rate(self, now: float) -> None:
        """sample_rate = auto: let the controller see the lag and set the reader's rate."""
        if self.auto_rate is None or now - self._auto_rate_at < AUTO_RATE_STEP_S or not self.assigned:
            return
        wm = self.event_time[0]
        if wm is None:
            return  # no event time yet: a rate change could not be placed in it (the hold below)
        self._auto_rate_at = now
        lag = sum(r for r, _ in self._lag().values())
        rate = self.auto_rate.observe(lag)
        if rate != self.schedule.rate:
            log.info("sample_rate auto: lag %d records, rate %.4g -> %.4g", lag, self.schedule.rate, rate)
            self.schedule.set_rate(rate, wm)
            self.metrics.sample_rate.set(rate)
            self.masks.sample_rate = rate
        # clicks are read at the highest rate of the last window, so that those of impressions kept
        # at it still join; impressions over the current rate are left out by the joins meanwhile
        read = self.schedule.read_rate(wm)
        if read != self.sample.rate:
            self.sample.set_rate(read)
        self._impression_below = threshold(rate) if rate < read else None
        joined_out = 0
        for shard in self.shards.values():
            shard.join.impression_below = self._impression_below
            joined_out += shard.join.sampled_out_impressions
        if joined_out > self._sampled_out_joined:
            self.metrics.sampled_out.inc(joined_out - self._sampled_out_joined)
            self.sampled_out += joined_out - self._sampled_out_joined
        self._sampled_out_joined = joined_out

    def _submit(self, tp: TopicPartition, records: list[ConsumerRecord]) -> int:
        """Hand a batch to the decoder (1), or decode and apply it here if there is none (0)."""
        assert self.decoder is not None
        if len(self._in_flight) >= self.decoder.max_in_flight:
            self._apply_in_flight(keep=self.decoder.max_in_flight - 1)
        if self.decoder is not None:
            try:
                self.decoder.submit([r.value for r in records])
                self._in_flight.append((tp, records))
                self._in_flight_releases.append(len(self._releases))
                return 1
            except DecodeWorkerError as exc:
                self._decoder_failed(exc)
        self._apply_in_flight()  # the failed worker's batches first, in order
        self._process_partition(tp, records)
        return 0

    def _apply_in_flight(self, keep: int = 0, drop: set[TopicPartition] | None = None) -> None:
        """Apply the oldest batches in the decoder until ``keep`` remain; a batch of a partition
        in ``drop`` (being revoked) is collected but not applied: it is read again from the offsets
        its shard holds."""
        while len(self._in_flight) > keep:
            if self.decoder is None:
                tp, records = self._in_flight.popleft()
                self._in_flight_releases.popleft()  # decoded again now, with today's columns
                if not drop or tp not in drop:
                    self._process_partition(tp, records)
                continue
            try:
                events, bad, wire = self.decoder.collect_wire()
            except DecodeWorkerError as exc:
                self._decoder_failed(exc)
                continue
            tp, records = self._in_flight.popleft()
            released = self._in_flight_releases.popleft()
            if not drop or tp not in drop:
                if released < len(self._releases):
                    self._read_released(events, wire, self._releases[released:])
                self._apply(tp, records, events, bad, wire)

    def _settle_in_flight(self, drop: set[TopicPartition] | None = None) -> None:
        self._apply_in_flight(keep=0, drop=drop)

    def _decoder_failed(self, exc: BaseException) -> None:
        log.error("%s; decoding in the poll loop from now on (%d batches in flight are decoded again)",
                  exc, len(self._in_flight))
        self.metrics.decode_worker_failures.inc()
        if self.decoder is not None:
            self.decoder.close(timeout_s=1.0)
        self.decoder = None

    def _process_partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        wire = decode_wire([r.value for r in records], self.limits, self.interner)
        events, bad = from_wire(wire)
        self._apply(tp, records, events, bad, wire)

    def _apply(self, tp: TopicPartition, records: list[ConsumerRecord], events: list[Any],
               bad: list[tuple[int, Any]], wire: WireBatch | None = None) -> None:
        shard = self.shards.get(tp.partition)
        if shard is None:
            shard = self.shards[tp.partition] = self._new_shard(tp.partition)
        source = (tp.topic, tp.partition)
        dead: list[tuple[ConsumerRecord, str, str]] = [(records[i], e.reason, e.detail) for i, e in bad]
        good_records = _without(records, [i for i, _ in bad])
        now_ms = int(time.time() * 1000)
        first_event = self.activity.events
        by_event: dict[int, list[tuple[str, int]]] = {}
        if wire is not None:
            for i, name, h in wire.extras:
                by_event.setdefault(i, []).append((name, h))
        assert shard.admitted is not None
        # columns other shards earned that this one has not (yet): their values are counted here
        waiting = [c for c, name in enumerate(self.interner.fields) if name not in shard.admitted and name != HOLE]
        if by_event or waiting:
            def accepted(i: int, ev: Any) -> None:
                if ev.features is not None:
                    self._earn_columns(shard, ev, by_event.get(i, ()), first_event + i + 1, waiting)

            watch: Any = by_event
            if waiting:
                watch = set(by_event) | _holding(events, wire, waiting)
            result = shard.join.process(events, source, now_ms, accepted, watch)
        else:
            result = shard.join.process(events, source, now_ms)
        self.activity.observe(wire.last_seen if wire is not None else (), len(events))
        for i, reason, detail in result.rejected:
            dead.append((good_records[i], reason, detail))
        examples = result.examples + shard.join.expire()
        if dead:
            assert self.dlq is not None
            # queued only: the loop delivers them outside the lock and consumes nothing more until then
            self.dlq.add([(r, reason, detail, tp) for r, reason, detail in dead])
            for _, reason, _detail in dead:
                self.metrics.dead_letters.labels(reason).inc()
        self._count_events(events, shard, len(dead))
        if examples:
            self._learn(shard, examples)
        shard.mi.advance(shard.join.watermark_ms)
        self._note_event_time()
        n = len(records)
        shard.offsets[source] = _next_offset(records)
        self.last_record_ts[source] = getattr(records, "last_timestamp", records[-1].timestamp) / 1000.0
        self._count_sampled_out(records)
        self.events_seen += n
        self.events_seen_total += n
        self.events_since_checkpoint += n
        if self.activity.reclaim_events:
            for col in self.activity.stale(c for c, name in enumerate(self.interner.fields) if name != HOLE):
                self._reclaim(col)

    def _reclaim(self, col: int) -> None:
        """Take column ``col`` from its field, not seen in ``field_reclaim_events`` events: its
        counts and admission in every shard, its values in pending rows, its policy history and
        its gate state are cleared, so that the field (or the next one given the column) starts as
        if never seen. Batches in flight read its old values as that field's (:meth:`_read_released`)."""
        name = self.interner.release(col)
        self._releases.append((col, name))
        if self.decoder is not None:
            try:
                self.decoder.release(col)
            except DecodeWorkerError as exc:
                self._decoder_failed(exc)
        for shard in self.shards.values():
            shard.admission.forget(name)
            if shard.admitted is not None:
                shard.admitted.discard(name)
            shard.mi.drop_field(name)
            shard.join.map_features(lambda rows: blank_column(rows, col))
        self.masks.policy.forget(name)
        if self.trainer is not None:
            self.trainer.call(lambda model: model.clear_column(col))
        self.metrics.field_columns.labels("reclaimed").inc()
        log.info("field %r reclaimed: column %d, not seen in the last %d events", name, col,
                 self.activity.reclaim_events)

    @staticmethod
    def _read_released(events: list[Any], wire: WireBatch, released: list[tuple[int, str]]) -> None:
        """A batch hashed before these columns were reclaimed: their values are the old fields',
        which have no column now; hand them on as values of names without one (``extras``), as
        decoding the batch now would."""
        found = []
        for i, ev in enumerate(events):
            row = ev.features
            if row is None:
                continue
            for col, name in released:
                h = column_value(row, col)
                if h != MISSING:
                    found.append((i, name, h))
                    row = blank_column([row], col)[0]
            ev.features = row
        if found:
            wire.extras = sorted(wire.extras + found)
        for col, _ in released:  # nor were they the values of whatever holds the column now
            if col < len(wire.last_seen):
                wire.last_seen[col] = -1

    def _earn_columns(self, shard: ShardState, ev: Any, values: Sequence[tuple[str, int]], event_no: int,
                      waiting: list[int]) -> None:
        """An accepted event of ``shard``: count the names it holds that this shard has not admitted
        (models/admission.py), admit those that have now earned it (a column for a name that has
        none), and leave in its row exactly the values of the names this shard has admitted.

        ``values`` ((name, hash)) are those of names that had no column when the event was hashed;
        ``waiting`` the columns this shard has not admitted (updated here). Called in the order the
        shard's events are applied, so which of a shard's events carry a new field's values
        depends on that shard's stream only: not on other shards, nor on when the decode worker
        learnt of a column.
        """
        assert shard.admitted is not None
        fields = self.interner.fields
        changes: list[tuple[int, int]] = []
        if waiting:
            old = np.frombuffer(ev.features, ROW_DTYPE)
            for c in list(waiting):
                if c >= len(old) or old[c] == MISSING:
                    continue
                if shard.admission.seen(fields[c]):
                    shard.admitted.add(fields[c])
                    waiting.remove(c)
                    self.activity.touch(c, event_no)
                else:
                    changes.append((c, MISSING))
        for name, h in values:
            col: int | None = self.interner.column(name)
            if name not in shard.admitted:
                if not shard.admission.seen(name):
                    continue
                if col is None:
                    col = self._give_column(name)
                    if col is None:
                        continue  # max_fields taken: counted again from zero, untracked meanwhile
                elif col in waiting:
                    waiting.remove(col)
                shard.admitted.add(name)
            if col is None:
                continue
            changes.append((col, h))
            self.activity.touch(col, event_no)
        if changes:
            row = np.full(len(fields), MISSING, ROW_DTYPE)
            old_row = ev.features
            row[: len(old_row) // 8] = np.frombuffer(old_row, ROW_DTYPE)
            for col, h in changes:
                row[col] = h
            ev.features = row.tobytes()

    def _admission_of(self, shard: ShardState) -> None:
        """A shard restored from a version without per-shard admission has admitted every column."""
        shard.admission.min_events = self.s.field_admit_min_events
        if shard.admitted is None:
            shard.admitted = set(self.interner.fields)

    def _give_column(self, name: str) -> int | None:
        """A column for a name that has earned one (in the decode worker's interner too); None when
        ``max_fields`` are taken (the name is counted as untracked)."""
        self.interner.admit([name])
        col = self.interner.column(name)
        if col is None:
            return None
        if self.decoder is not None:
            try:
                self.decoder.admit([name])
            except DecodeWorkerError as exc:
                self._decoder_failed(exc)
        self.activity.touch(col, self.activity.events)
        self.metrics.field_columns.labels("admitted").inc()
        log.info("field %r admitted: column %d (seen in %d accepted events of a shard)", name, col,
                 self.s.field_admit_min_events)
        return col

    def _count_events(self, events: list[Any], shard: ShardState, n_dead: int) -> None:
        for kind, count in Counter(map(type, events)).items():  # per batch, not per event
            self.metrics.events.labels(kind.__name__.lower(), "ok").inc(count)
        if n_dead:
            self.metrics.events.labels("any", "dead_letter").inc(n_dead)
        # clicks can turn orphan inside expire(), so count from the join's own counters
        stats = shard.join.stats()
        orphans = stats["orphan_clicks"] - shard.counted.get("orphan_clicks", 0)
        duplicates = stats["duplicate_clicks"] - shard.counted.get("duplicate_clicks", 0)
        shard.counted = {"orphan_clicks": stats["orphan_clicks"], "duplicate_clicks": stats["duplicate_clicks"]}
        if orphans > 0:
            self.metrics.orphans.inc(orphans)
            self.metrics.events.labels("click", "orphan").inc(orphans)
        if duplicates > 0:
            self.metrics.duplicate_clicks.inc(duplicates)
            self.metrics.events.labels("click", "duplicate").inc(duplicates)

    def _learn(self, shard: ShardState, examples: list[Any]) -> None:
        labels = np.fromiter((ex.label for ex in examples), dtype=np.int8, count=len(examples))
        ts = np.fromiter((ex.ts for ex in examples), dtype=np.int64, count=len(examples))
        fields = list(self.interner.fields)
        encoded = EncodedBatch(fields, rows_matrix([ex.features for ex in examples], len(fields)))
        # only the watermark expires blocks: an example ahead of the rest must not expire the others
        assert shard.admitted is not None
        if len(shard.admitted) < len(fields):
            # the shard's MI counts the fields it has admitted only: a function of its own stream
            cols = [c for c, name in enumerate(fields) if name in shard.admitted]
            shard.mi.update(EncodedBatch([fields[c] for c in cols], encoded.hashes[:, cols]), labels, ts, advance=False)
        else:
            shard.mi.update(encoded, labels, ts, advance=False)
        positives = int(labels.sum())
        self.metrics.examples.labels("positive").inc(positives)
        self.metrics.examples.labels("negative").inc(len(labels) - positives)
        if self.trainer is not None:
            skipped = self.trainer.offer(encoded.hashes, labels)
            if skipped:
                self.metrics.gate_skipped.inc(skipped)
            self.metrics.gate_sampling_rate.set(self.trainer.sampling_rate)

    def _election_settled(self, now: float) -> bool:
        """Group mode, at the end of a replay: has the writer election run, and have we acted on it?

        A short replay can reach its end before the election's first round; exiting then would
        leave the final state unpublished even by a lone instance. Waits at most three writer
        session timeouts after the end is reached, then gives up with a warning.
        """
        if self.coordinator is None:
            return True
        if self._end_reached_at is None:
            self._end_reached_at = now
        if self.coordinator.settled and (not self.coordinator.elected or self.publisher is not None):
            return True
        if now - self._end_reached_at > 3 * self.s.writer_session_timeout_s:
            log.warning("reached the end, but the writer election did not settle within %.0f s; exiting",
                        3 * self.s.writer_session_timeout_s)
            return True
        return False

    def _reached_end(self) -> bool:
        if not self.assigned:
            return False
        missing = [tp for tp in self.assigned if tp not in (self.end_targets or {})]
        if missing:
            # end offsets as of the first time we hold the partition: later records are not ours to wait for
            self.end_targets = {**(self.end_targets or {}), **self.consumer.end_offsets(missing)}
        assert self.end_targets is not None
        for tp in self.assigned:
            shard = self.shards.get(tp.partition)
            target = self.end_targets.get(tp, 0)
            pos = shard.offsets.get((tp.topic, tp.partition), 0) if shard else 0
            if pos < target:
                return False
        return True

    # ------------------------------------------------------------ mask
    def global_mi(self) -> MIState:
        if self.coordinator is not None:
            owned = self.owned_shards()
            return merged_mi(owned, self.mi_config, self.coordinator.other_shards_mi(s.shard for s in owned))
        if len(self.shards) == 1:
            return next(iter(self.shards.values())).mi
        return merged_mi(self.shards.values(), self.mi_config)

    def own_gate_report(self) -> dict[str, Any] | None:
        return named_gate_report(self.trainer.report if self.trainer is not None else None, self.interner)

    def watermark_ms(self) -> int:
        shards = self.owned_shards() if self.coordinator is not None else list(self.shards.values())
        marks = [s.join.watermark_ms for s in shards if s.join.watermark_ms is not None]
        return int(min(marks)) if marks else 0

    def _note_event_time(self) -> None:
        """Record the lowest and highest watermark of the shards we own, for /readyz and metrics."""
        owned = {tp.partition for tp in self.assigned}
        marks = [(s.join.watermark_ms, p) for p, s in self.shards.items()
                 if s.join.watermark_ms is not None and p in owned]
        if not marks:
            self.event_time = (None, None, None)
            return
        high, shard = max(marks)
        self.event_time = (min(m for m, _ in marks), high, shard)

    def update_mask(self, force: bool = False, end_of_input: bool = False) -> None:
        """Build the mask; publish it when it changed, a heartbeat is due, or (``force``) nothing
        was published yet. ``end_of_input`` (``--exit-at-end`` reached the end, gates on) publishes
        it whatever: the last mask of a replay then carries the gate evidence of the whole input
        (the demo read back a mask published mid-stream, before any gate window had completed).

        Decided under the state lock, published without it (a publish waits up to 30 s for the
        broker, and rebalance callbacks and /readyz must not wait with it)."""
        assert not self.state_lock._is_owned(), "masks are published without the state lock"  # type: ignore[attr-defined]
        self.last_mask_mono = self.clock()
        if self.publisher is None:
            return  # group mode, and another instance is the writer
        with self.state_lock:
            gates_report = self.own_gate_report()
            if self.coordinator is not None:
                gates_report = self.coordinator.combined_gates(gates_report)
            msg, changed = self.masks.build(self.global_mi(), gates_report, self.publisher, self.watermark_ms())
            self.metrics_from_mask(msg, gates_report)
        if not msg.fields:
            return  # no evidence yet: an empty mask would tell subscribers nothing
        last = self.publisher.last_publish_time
        heartbeat_due = last is None or time.time() - last >= self.s.mask_republish_interval_s
        if changed or heartbeat_due or end_of_input or force and self.publisher.last_published is None:
            trigger = "change" if changed else "heartbeat"
            try:
                self.publisher.publish(msg)
            except WriterFencedError:
                if self.coordinator is None:
                    raise
                with self.state_lock:
                    self._fenced_in = self.coordinator.generation
                    self._step_down("fenced by a newer writer")
                return
            except KafkaError as exc:
                self.metrics.kafka_errors.labels(type(exc).__name__).inc()
                log.error("mask publish failed: %s; will retry at the next update", exc)
                return
            with self.state_lock:
                self.masks.published(msg)
                policy = self.masks.snapshot() if self.coordinator is not None else None
            self.last_mask_publish_wall = self.publisher.last_publish_time
            if self.coordinator is not None:
                self.coordinator.publish_policy(policy, msg.epoch, msg.version, msg.incarnation)
            self.metrics.mask_publishes.labels(trigger).inc()
            self.metrics.mask_version.set(msg.version)
            kept = sum(1 for f in msg.fields.values() if f.keep)
            log.info(
                "mask published: model=%s epoch=%d version=%d trigger=%s kept=%d dropped=%d",
                msg.model_id, msg.epoch, msg.version, trigger, kept, len(msg.fields) - kept,
            )

    def metrics_from_mask(self, msg: Any, gates_report: Any) -> None:
        kept = sum(1 for f in msg.fields.values() if f.keep)
        self.metrics.fields.labels("kept").set(kept)
        self.metrics.fields.labels("dropped").set(len(msg.fields) - kept)
        for name, entry in msg.fields.items():
            self.metrics.field_score.labels(name).set(entry.score)
            self.metrics.field_keep.labels(name).set(1 if entry.keep else 0)
            if entry.z is not None:
                self.metrics.field_z.labels(name).set(entry.z)
            if entry.gate_open is not None:
                self.metrics.field_gate_open.labels(name).set(entry.gate_open)
        self.metrics.untracked_fields.set(self.interner.untracked_fields)
        if gates_report is not None:
            m = gates_report.get("metrics", {})
            for model, key in (("masked", "auc_gated"), ("unmasked", "auc_ungated")):
                if m.get(key) is not None:
                    self.metrics.online_auc.labels(model).set(m[key])
            for model, key in (("masked", "logloss_gated"), ("unmasked", "logloss_ungated")):
                if m.get(key) is not None:
                    self.metrics.online_logloss.labels(model).set(m[key])

    # ------------------------------------------------------------ checkpoint
    def _interval_checkpoint(self) -> None:
        """The loop's periodic checkpoint, waiting on the network only without the state lock.

        In group mode the shard states are queued to the stats topic under the lock (they are
        serialised there), confirmed without it, then the snapshot is written under it again. The
        loop is the only thread that changes shard state outside rebalance callbacks, so what the
        snapshot holds is what was published (or newer, from a callback's own checkpoint).
        """
        if self.coordinator is not None:
            with self.state_lock:
                if self.dlq is not None and self.dlq.pending:
                    return
                self.metrics.stats_bytes.inc(self.coordinator.publish_shards(self.owned_shards(), self.interner.fields))
                self.coordinator.publish_gates(self.own_gate_report())
            try:
                self.coordinator.flush()
            except KafkaError as exc:
                self.metrics.kafka_errors.labels(type(exc).__name__).inc()
                log.warning("shard states not confirmed by the stats topic (%s): checkpoint skipped, "
                            "tried again at the next interval", exc)
                self.last_checkpoint_mono = self.clock()
                return
        with self.state_lock:
            # an asynchronous commit: a synchronous one would wait for the I/O thread,
            # which may be waiting for this lock in a rebalance callback
            self.checkpoint(reason="interval", sync_commit=False, stats_published=True)

    def checkpoint(self, reason: str, sync_commit: bool = True, stats_published: bool = False) -> int:
        """Flush → snapshot → commit. Returns the snapshot's size in bytes (0: skipped, because
        dead letters still wait: the snapshot's offsets would pass them)."""
        if self.dlq is not None and self.dlq.pending:
            log.info("checkpoint (%s) deferred: %d dead letters not delivered yet", reason, self.dlq.pending)
            return 0
        t0 = time.perf_counter()
        if self.coordinator is not None and not stats_published:
            self.metrics.stats_bytes.inc(self.coordinator.publish_shards(self.owned_shards(), self.interner.fields))
            self.coordinator.publish_gates(self.own_gate_report())
            self.coordinator.flush()
        gates = self.trainer.call(lambda m: m.snapshot()) if self.trainer is not None else None
        try:
            _, size = self.store.write(self.state_snapshot(gates))
        except StateWriteError as exc:
            # nothing is committed: the state on disk and its offsets stay the last complete
            # snapshot's, and the loop consumes nothing more until a write succeeds
            if self.state_write_error is None:
                log.error("checkpoint (%s) failed: %s; consumption paused, tried again every %g s",
                          reason, exc, STATE_RETRY_S)
            self.state_write_error = str(exc)
            self._state_retry_mono = self.clock()
            return 0
        if self.state_write_error is not None:
            log.info("checkpoint written again after: %s", self.state_write_error)
            self.state_write_error = None
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for shard in self.shards.values()
            for (t, p), o in shard.offsets.items()
            if TopicPartition(t, p) in self.assigned
        }
        if offsets:
            try:
                if sync_commit:
                    # bounded: while the brokers are gone the loop must keep serving (and stopping)
                    self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
                else:
                    self.consumer.commit_async(offsets)
            except KafkaError as exc:
                # the snapshot already holds these offsets; the commit is only for tools that read the group
                self.metrics.kafka_errors.labels(type(exc).__name__).inc()
                log.warning("offset commit failed after checkpoint: %s", exc)
        elapsed = time.perf_counter() - t0
        self.metrics.checkpoint_seconds.observe(elapsed)
        self.metrics.checkpoints.inc()
        self.metrics.state_bytes.set(size)
        self.last_checkpoint_wall = time.time()
        self.last_checkpoint_mono = self.clock()
        self.events_since_checkpoint = 0
        log.info("checkpoint: reason=%s bytes=%d seconds=%.3f offsets=%s", reason, size, elapsed, self._offsets_text())
        return size

    # ------------------------------------------------------------ health
    def readiness(self) -> tuple[bool, str]:
        """(ready, reason). Called from the HTTP thread: it only reads flags and connection state."""
        if not self.kafka_ok or self.consumer is None or not broker_connected(self.consumer):
            return False, "not connected to Kafka: " + connection_cause()
        if self.dlq is not None and self.dlq.blocked_since is not None:
            return False, (f"dead-letter topic {self.s.dlq_topic} unavailable ({self.dlq.reason()}): holding "
                           f"consumption, {self.dlq.pending} dead letters waiting")
        if self.state_write_error is not None:
            return False, (f"state not writable: {self.state_write_error}; holding consumption, "
                           f"checkpoint tried again every {STATE_RETRY_S:g} s")
        _, high, shard = self.event_time
        if high is not None:
            ahead_s = high / 1000.0 - time.time()
            if ahead_s > self.s.max_clock_skew_s:
                return False, (f"event-time watermark of shard {shard} is {ahead_s:.0f} s ahead of the wall clock "
                               f"(max_clock_skew_s {self.s.max_clock_skew_s:g})")
        if self.coordinator is not None and self.publisher is None:
            lag = sum(r for r, _ in self._lag().values())
            if lag > self.s.ready_max_lag:
                return False, f"lag {lag} records > ready_max_lag {self.s.ready_max_lag}"
            return True, "ready (group mode, not the mask writer)"
        if self.publisher is None or self.publisher.fenced:
            return False, "not the mask writer (fenced or not started)"
        if not self.assigned:
            return False, "no partitions assigned"
        lag = sum(r for r, _ in self._lag().values())
        if lag > self.s.ready_max_lag:
            return False, f"lag {lag} records > ready_max_lag {self.s.ready_max_lag}"
        if self.publisher.last_published is None:
            return False, "no mask published yet"
        return True, "ready"

    def _lag(self) -> dict[tuple[str, int], tuple[int, float]]:
        out: dict[tuple[str, int], tuple[int, float]] = {}
        consumer = self.consumer
        if consumer is None:
            return out
        now = time.time()
        for tp in list(self.assigned):
            high = consumer.highwater(tp)
            shard = self.shards.get(tp.partition)
            pos = shard.offsets.get((tp.topic, tp.partition), 0) if shard else 0
            lag = max(0, (high or pos) - pos)
            last = self.last_record_ts.get((tp.topic, tp.partition))
            out[(tp.topic, tp.partition)] = (lag, (now - last) if (lag and last) else 0.0)
        return out

    def _join_totals(self) -> dict[str, int]:
        """The joins' counters summed over the shards held (this process's and restored ones)."""
        out = {"positives": 0, "negatives": 0, "orphan_clicks": 0}
        for shard in self.shards.values():
            stats = shard.join.stats()
            for k in out:
                out[k] += stats.get(k, 0)
        return out

    def _join_size(self) -> int:
        return sum(s.join.pending_impressions for s in self.shards.values())

    def _mask_time(self) -> float | None:
        return self.publisher.last_publish_time if self.publisher else None

    def _offsets_text(self) -> str:
        parts = [f"{t}:{p}@{o}" for s in self.shards.values() for (t, p), o in sorted(s.offsets.items())]
        return ",".join(sorted(parts)) or "-"

    def _close(self) -> None:
        self._closing = True
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        if self.trainer is not None:
            self.trainer.stop()
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None
        for closer in (self.consumer, self.dlq, self.publisher, self.coordinator):
            if closer is None:
                continue
            try:
                closer.close()
            except KafkaError as exc:
                log.warning("close: %s", exc)


def _holding(events: list[Any], wire: WireBatch | None, cols: list[int]) -> set[int]:
    """Indices of the events whose rows hold a value in one of ``cols`` (found a batch at a time
    from the wire rows, so a column one shard never admits costs no per-event call)."""
    if wire is None or not wire.rows or wire.width == 0:
        return {i for i, ev in enumerate(events) if ev.features is not None}
    with_rows = np.flatnonzero(np.frombuffer(wire.kinds, np.uint8) != KIND_CLICK)
    matrix = np.frombuffer(wire.rows, ROW_DTYPE).reshape(len(with_rows), wire.width)
    inside = [c for c in cols if c < wire.width]
    if not inside:
        return set()
    hit = (matrix[:, inside] != MISSING).any(axis=1)
    return set(with_rows[hit].tolist())


def _progress(shard: ShardState) -> int:
    return sum(shard.offsets.values())


def _offsets_of(shard: ShardState) -> str:
    return ",".join(f"{t}:{p}@{o}" for (t, p), o in sorted(shard.offsets.items())) or "-"


class _Read(list):  # type: ignore[type-arg]
    """Sampled records of one poll, with the offset after the last record read (kept or not),
    its timestamp, and how many records before it the sample left out."""

    next_offset: int
    last_timestamp: int
    skipped: int


def _next_offset(records: list[ConsumerRecord]) -> int:
    """The offset after a batch: after its last record, or after the last one the sample left out."""
    nxt = getattr(records, "next_offset", None)
    return nxt if nxt is not None else records[-1].offset + 1


def _without(items: list[Any], drop: list[int]) -> list[Any]:
    if not drop:
        return items
    gone = set(drop)
    return [x for i, x in enumerate(items) if i not in gone]


def _tp_list(tps: list[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}:{tp.partition}" for tp in sorted(tps)) or "-"
