"""Gate training off the poll loop: a worker thread fed by a bounded queue.

The poll loop must never wait for training (a slow poll loop misses
heartbeats and triggers rebalances), so :meth:`GateTrainer.offer` never
blocks. When the queue is full the trainer lowers its sampling rate and the
batch is *subsampled deterministically* (rows whose content hash falls under
the rate are kept); skipped examples are counted, never silently dropped.
When the queue drains, the rate climbs back towards 1.

The worker owns the model: snapshots are taken on the worker thread between
batches (``snapshot()`` waits for it), so the model is never read half-updated.

Training batches are *re-cut* to ``batch_rows`` examples: the run loop offers
one batch per partition per poll, and the join makes those batches nearly
label-pure (a clicks partition's records release positives, an impressions
partition's expiring negatives), often of a few dozen rows. SGD on such
batches drove the gate search to wrong field decisions (measured: online log
loss of the gated model 2.5 against 0.15 for the ungated twin on a live
stream, 0.13 for both once the same examples were re-cut to 1024). Rows wait
on the worker until a full batch is there; before any ``call`` (a snapshot
for a checkpoint) the partial batch is trained, so a snapshot reflects every
example offered before it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from connectors import failpoints

log = logging.getLogger(__name__)

# The trainer thread's nice value (Linux: each thread has its own). The poll loop and the decode
# worker come first when the cores are busy; training gets what they leave, and the bounded queue
# turns a trainer that falls behind into a lower sampling rate, reported, rather than a slower loop.
GATE_THREAD_NICE = 10


def _lower_priority(nice: int) -> None:
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:  # not permitted here: train at the loop's priority
        log.info("gate trainer keeps its priority (%s)", exc)

_RATE_STEPS = 1024  # sampling granularity
# odd multipliers, one per column, so that rows differing in any column get unrelated keys
_MIX_COLUMNS = (np.arange(1, 2 * 4096, 2, dtype=np.uint64) * np.uint64(0xBF58476D1CE4E5B9)) | np.uint64(1)


def _interleaved(hashes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in an order fixed by their content alone (a hash of each row), not by arrival.

    A loop batch holds the clicks it joined as they came (recent impressions) beside the
    impressions its watermark expired (older ones, all negatives): in arrival or event-time
    order its positives sit together, and a gate model taught its batches in that order learns
    the order, not the features (a replay's gated AUC fell to 0.48-0.55 from 0.73 in some
    runs, depending on where the poll loop cut its batches). The order depends on the rows only,
    so a replay that cuts the same rows the same way trains the same model.
    """
    if len(labels) < 2:
        return hashes, labels
    key = np.bitwise_xor.reduce(hashes * _MIX_COLUMNS[: hashes.shape[1]], axis=1) if hashes.shape[1] else (
        np.arange(len(labels), dtype=np.uint64))
    order = np.argsort(key * np.uint64(0x9E3779B97F4A7C15), kind="stable")
    return hashes[order], labels[order]


class GateTrainer:
    """Runs ``model.learn(hashes, labels)`` on a worker thread."""

    def __init__(
        self,
        model_factory: Callable[..., Any],  # () or (restored snapshot) -> model
        queue_batches: int = 64,
        torch_threads: int = 1,
        on_trained: Callable[[int], None] | None = None,
        report: Callable[[Any], dict[str, Any]] | None = None,
        report_every: int = 20,
        report_min_examples: int = 100_000,
        batch_rows: int = 1024,
    ) -> None:
        self._factory = model_factory
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=queue_batches)
        self._torch_threads = torch_threads
        self._on_trained = on_trained
        self._report_fn = report
        self._report_every = report_every
        # a report scores the evaluation window with river twice (~1 s for 20 000 examples on this
        # machine), on this thread: at most one per report_min_examples keeps it a small share of
        # training (every 20 batches of ~1000 examples, it took five times the training time)
        self._report_min_examples = report_min_examples
        self._since_report = 0
        self._batch_rows = max(1, batch_rows)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._reported_windows: Any = 0
        self._batches = 0
        # the latest evidence for the policy, replaced whole (never mutated) so readers need no lock
        self.report: dict[str, Any] | None = None
        self.model: Any = None
        self.rate_steps = _RATE_STEPS
        # set by the worker each time it finds its queue empty (it has caught up), read and
        # cleared by the next offer: the rate climbs back after any drain between two offers,
        # not only when an offer happens to see the queue nearly empty
        self._drained = threading.Event()
        self.offered = 0
        self.skipped = 0
        self.trained = 0
        self.error: BaseException | None = None
        self.restore_skipped: str | None = None  # why a snapshot was not restored, if it was not
        self._thread = threading.Thread(target=self._run, name="featsieve-gates", daemon=True)
        self._started = threading.Event()

    @property
    def sampling_rate(self) -> float:
        return self.rate_steps / _RATE_STEPS

    def start(self, restored: dict[str, Any] | None = None) -> GateTrainer:
        self._restored = restored
        self._thread.start()
        self._started.wait(60)
        return self

    def _run(self) -> None:
        _lower_priority(GATE_THREAD_NICE)
        try:
            import torch

            from models.gates import GateSnapshotError

            torch.set_num_threads(self._torch_threads)
            try:
                self.model = self._factory() if self._restored is None else self._factory(self._restored)
            except GateSnapshotError as exc:
                # a checkpoint written by another version of the gate model: the MI state and
                # offsets restore as usual, the gates start again (one window until evidence)
                log.warning("gate snapshot not restored (%s); the gate model starts fresh", exc)
                self.restore_skipped = str(exc)
                self.model = self._factory()
        except BaseException as exc:  # make start-up failures visible to the owner
            self.error = exc
            self._started.set()
            log.exception("gate model could not be built")
            return
        self._started.set()
        while True:
            if self._queue.empty():
                self._drained.set()
            kind, payload = self._queue.get()
            if kind == "stop":
                self._flush()
                return
            if kind == "call":
                fn, box, done = payload
                try:
                    self._flush()
                    box.append(fn(self.model))
                except BaseException as exc:  # handed back to the caller
                    box.append(exc)
                done.set()
                continue
            self._add(*payload)

    def _add(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        """Buffer rows; train every full batch of ``batch_rows`` (in arrival order)."""
        if self._pending and self._pending[0][0].shape[1] != hashes.shape[1]:
            self._flush()  # the interner added a column: rows of different widths do not stack
        self._pending.append((hashes, labels))
        self._pending_rows += len(labels)
        if self._pending_rows < self._batch_rows:
            return
        all_h, all_y = _interleaved(*self._take())
        full = len(all_y) - len(all_y) % self._batch_rows
        for i in range(0, full, self._batch_rows):
            self._learn(all_h[i:i + self._batch_rows], all_y[i:i + self._batch_rows])
        if full < len(all_y):
            self._pending, self._pending_rows = [(all_h[full:], all_y[full:])], len(all_y) - full

    def _flush(self) -> None:
        """Train the partial batch, if any."""
        if self._pending:
            self._learn(*_interleaved(*self._take()))

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pending row, stacked in arrival order; the buffer is left empty."""
        all_h = np.concatenate([h for h, _ in self._pending])
        all_y = np.concatenate([y for _, y in self._pending])
        self._pending, self._pending_rows = [], 0
        return all_h, all_y

    def _learn(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        failpoints.hit("gate_learn")  # tests: a trainer that stands still fills its queue
        try:
            self.model.learn(hashes, labels)
            self.trained += len(labels)
            self._batches += 1
            self._since_report += len(labels)
            if self._on_trained is not None:
                self._on_trained(len(labels))
            windows = getattr(self.model, "windows", None)
            every = self._batches % self._report_every == 0
            due = (windows != self._reported_windows  # new masks: publish them now
                   or (every and (self.report is None or self._since_report >= self._report_min_examples)))
            if self._report_fn is not None and due:
                self.report = self._report_fn(self.model)
                self._since_report = 0
                self._reported_windows = windows
        except Exception:
            # a bad batch must not kill training; it is logged with its size
            log.exception("gate training failed on a batch of %d examples", len(labels))

    def offer(self, hashes: np.ndarray, labels: np.ndarray) -> int:
        """Queue a batch for training without blocking; returns the number of examples skipped."""
        n = len(labels)
        self.offered += n
        if self.rate_steps < _RATE_STEPS:
            # deterministic: the decision depends on the example's content only
            row_key = (hashes[:, 0] if hashes.shape[1] else np.zeros(n, np.uint64)) ^ np.uint64(0x9E3779B97F4A7C15)
            keep = (row_key % np.uint64(_RATE_STEPS)) < np.uint64(self.rate_steps)
            hashes, labels = hashes[keep], labels[keep]
        skipped = n - len(labels)
        try:
            if len(labels):
                self._queue.put_nowait(("learn", (hashes, labels)))
        except queue.Full:
            skipped = n
            self.rate_steps = max(1, self.rate_steps // 2)
        else:
            caught_up = self._drained.is_set() or self._queue.qsize() < self._queue.maxsize // 4
            if caught_up and self.rate_steps < _RATE_STEPS:
                self.rate_steps = min(_RATE_STEPS, self.rate_steps * 2)
        self._drained.clear()
        self.skipped += skipped
        return skipped

    def call(self, fn: Callable[[Any], Any], timeout: float = 120.0) -> Any:
        """Run ``fn(model)`` on the worker between batches and return its result."""
        if self.error is not None:
            raise RuntimeError("gate model is not available") from self.error
        box: list[Any] = []
        done = threading.Event()
        self._queue.put(("call", (fn, box, done)), timeout=timeout)
        if not done.wait(timeout):
            raise TimeoutError("gate worker did not answer")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(("stop", None))
            self._thread.join(30)
