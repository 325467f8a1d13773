"""``featsieve bench SUITE``: measurements side by side with a baseline in the same run.

Machines are shared and noisy, so every suite reports ratios against a
baseline measured in the same process run, beside the absolute rates.
Output: one JSON object (``--json``) with ``suite``, ``*_per_s`` rates and
``ratio`` where a baseline runs; otherwise a readable table too.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from daemon.config import Settings
from daemon.tools.bench_stream import SIZES, peak_rss_mb, produce_stream

log = logging.getLogger("featsieve.bench")

def ceiling(settings: Settings, topics: tuple[str, str], expected: int,
            gc_threshold: tuple[int, int, int] | None = None, fast_reader: bool = False) -> dict[str, float]:
    """A plain kafka-python consumer that polls the topics and decodes every value with orjson.

    ``gc_threshold``: the collector's thresholds during the pass (None: as they are). The daemon
    raises them (kafka-python's parsing allocates an object per record and field), and a fair
    ceiling gets the same; the default-GC ceiling is reported beside it. ``fast_reader``: read
    the fetched batches with featsieve's reader (connectors/record_reader.py), as the daemon does,
    instead of kafka-python's.
    """
    import gc

    from connectors.kafka_io import make_consumer
    from daemon.settings_map import endpoint_from

    before = gc.get_threshold()
    if gc_threshold is not None:
        gc.set_threshold(*gc_threshold)
    try:
        return _ceiling(settings, topics, expected, make_consumer, endpoint_from, fast_reader)
    finally:
        gc.set_threshold(*before)


def _ceiling(settings: Settings, topics: tuple[str, str], expected: int, make_consumer: Any,
             endpoint_from: Any, fast_reader: bool) -> dict[str, float]:
    from connectors.kafka_compat import read_batches_fast

    consumer = make_consumer(
        endpoint_from(settings),
        group_id=None,
        max_poll_records=settings.max_poll_records,
        fetch_max_bytes=settings.fetch_max_bytes,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
    )
    if fast_reader:
        read_batches_fast(consumer)
    from kafka import TopicPartition

    tps = [TopicPartition(t, 0) for t in topics]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    n = 0
    loads = orjson.loads
    first: float | None = None  # the start of the poll that first returned records, as the daemon's
    t0 = time.perf_counter()
    while n < expected:
        polled_at = time.perf_counter()
        batch = consumer.poll(timeout_ms=500)
        if batch and first is None:
            first = polled_at
        for records in batch.values():
            for rec in records:
                loads(rec.value)
            n += len(records)
    done = time.perf_counter()
    consumer.close()
    steady = done - (first if first is not None else t0)
    return {"events": n, "seconds": steady, "events_per_s": n / steady,
            "wall_seconds": done - t0, "wall_events_per_s": n / (done - t0)}


def daemon_pass(settings: Settings, topics: tuple[str, str], gates: bool, expected: int) -> dict[str, Any]:
    """The daemon from the start of the topics to their end: join, MI, policy, checkpoints (gates on/off)."""
    from prometheus_client import CollectorRegistry

    from daemon.runloop import Daemon

    run = "bench-" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as state:
        s = settings.with_overrides(
            input_topics=",".join(topics), group_id=run, model_id=run, state_dir=state,
            gates=gates, metrics_port=0, mask_interval_s=5.0,
        )
        daemon = Daemon(s, CollectorRegistry(), exit_at_end=True)
        t0 = time.perf_counter()
        code = daemon.run()
        wall = time.perf_counter() - t0
        n = daemon.events_seen
        first, last = daemon.first_records_at, daemon.last_batch_done_at
        # steady state: from the poll that first returned records to the end of the last batch,
        # interval checkpoints and mask updates included; start-up (connect, group join, restore)
        # and the final checkpoint are the difference to the wall-clock figure
        steady = (last - first) if first is not None and last is not None and last > first else wall
        out: dict[str, Any] = {"events": n, "seconds": steady, "exit_code": code,
                               "events_per_s": n / steady, "wall_seconds": wall,
                               "wall_events_per_s": n / wall,
                               "startup_seconds": (first - t0) if first is not None else None,
                               "shutdown_seconds": (t0 + wall - last) if last is not None else None}
        if gates and daemon.trainer is not None:
            out["gate_examples"] = daemon.trainer.trained
            out["gate_sampling_rate"] = daemon.trainer.sampling_rate
            out["gate_skipped_examples"] = daemon.trainer.skipped
            # trained after the last batch was applied: the queue's backlog, trained at shutdown
            out["gate_backlog_examples"] = daemon.trainer.trained - daemon.trained_at_last_batch
        return out


E2E_ROUNDS = {"tiny": 1, "small": 3, "full": 3}
_PASSES: dict[str, Callable[..., dict[str, Any]]] = {"ceiling": ceiling, "daemon_pass": daemon_pass}


def isolated(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a pass (:func:`ceiling` or :func:`daemon_pass`) in a fresh Python process.

    Every pass gets a heap of its own, as a consumer deployed on its own would: in one long
    bench process the objects earlier passes left (torch's, the join's) make the collector's
    full passes dearer for whoever runs later (measured: the default-GC ceiling ~30% slower
    after a few daemon passes than in a fresh process).
    """
    import pickle
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "daemon.tools.bench", out.name], check=True,
                       input=pickle.dumps((name, args, kwargs)))
        result: dict[str, Any] = orjson.loads(Path(out.name).read_bytes())
    return result


def suite_e2e(settings: Settings, size: str) -> dict[str, Any]:
    """Ceiling and daemon passes over one produced stream, alternated for a few rounds.

    Each round runs the ceiling, the daemon with gates off (decode worker on, then decoding
    in the poll loop) and with gates on, so that load which comes and goes on a shared machine
    falls on all of them; the ratios are of the medians over the rounds.
    """
    run = "bench-" + uuid.uuid4().hex[:8]
    topics = (f"{run}.impressions", f"{run}.clicks")
    n_imp = SIZES[size]
    produced = produce_stream(settings, topics, n_imp)
    from daemon.runloop import GC_THRESHOLDS

    passes: dict[str, list[dict[str, Any]]] = {"ceiling": [], "ceiling_default_gc": [],
                                               "ceiling_fast_reader": [], "off": [], "off_in_loop": [], "on": []}
    for _ in range(E2E_ROUNDS[size]):
        passes["ceiling"].append(isolated("ceiling", settings, topics, produced, GC_THRESHOLDS))
        passes["ceiling_default_gc"].append(isolated("ceiling", settings, topics, produced, (700, 10, 10)))
        passes["ceiling_fast_reader"].append(isolated("ceiling", settings, topics, produced, (700, 10, 10),
                                                      fast_reader=True))
        worker = settings.with_overrides(decode_process=True)
        passes["off"].append(isolated("daemon_pass", worker, topics, gates=False, expected=produced))
        passes["off_in_loop"].append(isolated("daemon_pass", settings.with_overrides(decode_process=False),
                                              topics, gates=False, expected=produced))
        passes["on"].append(isolated("daemon_pass", worker, topics, gates=True, expected=produced))

    def median(name: str, key: str = "events_per_s") -> float:
        return float(np.median([p[key] for p in passes[name]]))

    def per_event(runs: list[dict[str, Any]], key: str) -> float:
        return round(float(np.median([p[key] for p in runs])) / produced * 1e6, 1)

    ceil = median("ceiling")
    on_last = passes["on"][-1]
    return {
        "suite": "e2e",
        "events": produced,
        "rounds": E2E_ROUNDS[size],
        "ceiling_events_per_s": ceil,
        "ceiling_default_gc_events_per_s": median("ceiling_default_gc"),
        "ratio_vs_default_gc_ceiling": median("off") / median("ceiling_default_gc"),
        "ratio_gates_on_vs_default_gc_ceiling": median("on") / median("ceiling_default_gc"),
        # the plain consumer reading batches as the daemon does (connectors/record_reader.py):
        # how much of the daemon's lead over the plain ceiling is its reader
        "ceiling_fast_reader_events_per_s": median("ceiling_fast_reader"),
        "ratio_vs_fast_reader_ceiling": median("off") / median("ceiling_fast_reader"),
        "ratio_gates_on_vs_fast_reader_ceiling": median("on") / median("ceiling_fast_reader"),
        # wall clock, start-up and the final checkpoint included (with gates: the training backlog)
        "wall_ratio_gates_on_vs_default_gc_ceiling": (median("on", "wall_events_per_s")
                                                      / median("ceiling_default_gc", "wall_events_per_s")),
        "daemon_gates_off_events_per_s": median("off"),
        "daemon_gates_off_in_loop_events_per_s": median("off_in_loop"),
        "daemon_gates_on_events_per_s": median("on"),
        "ratio": median("off") / ceil,
        "ratio_in_loop": median("off_in_loop") / ceil,
        "ratio_gates_on": median("on") / ceil,
        "ceiling_wall_events_per_s": median("ceiling", "wall_events_per_s"),
        "daemon_gates_off_wall_events_per_s": median("off", "wall_events_per_s"),
        "daemon_gates_on_wall_events_per_s": median("on", "wall_events_per_s"),
        "wall_ratio": median("off", "wall_events_per_s") / median("ceiling", "wall_events_per_s"),
        "daemon_startup_seconds": median("off", "startup_seconds"),
        "daemon_shutdown_seconds": median("off", "shutdown_seconds"),
        "daemon_gates_on_startup_seconds": median("on", "startup_seconds"),
        "daemon_gates_on_shutdown_seconds": median("on", "shutdown_seconds"),
        "per_round_events_per_s": {k: [round(p["events_per_s"]) for p in v] for k, v in passes.items()},
        "max_poll_records": settings.max_poll_records,
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "gate_sampling_rate": on_last.get("gate_sampling_rate"),
        "gate_examples": on_last.get("gate_examples"),
        "gate_skipped_examples": on_last.get("gate_skipped_examples"),
        "gate_backlog_examples": on_last.get("gate_backlog_examples"),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        # each pass runs in a process of its own (isolated()): the largest of those, and per event
        # the CPU of the daemon's process and of its decode worker (start-up included)
        "peak_rss_mb": max(p["peak_rss_mb"] for v in passes.values() for p in v),
        "daemon_peak_rss_mb": median("off", "peak_rss_mb"),
        "daemon_gates_on_peak_rss_mb": median("on", "peak_rss_mb"),
        "cpu_us_per_event": {k: {"process": per_event(v, "cpu_seconds"), "worker": per_event(v, "worker_cpu_seconds")}
                             for k, v in passes.items()},
    }


def _synthetic_hashes(n: int, fields: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cards = np.geomspace(2, 1_000_000, fields).astype(np.int64)
    ids = (rng.random((n, fields)) ** 2 * cards).astype(np.uint64)
    hashes = ids * np.uint64(0x9E3779B97F4A7C15) + np.arange(fields, dtype=np.uint64)
    labels = (rng.random(n) < 0.03).astype(np.int8)
    return hashes, labels


def suite_mi(settings: Settings, size: str) -> dict[str, Any]:
    """The scoring core alone: MIState.update rows/s on pre-encoded batches (40 fields), one core."""
    from daemon.settings_map import mi_config_from
    from models.interning import EncodedBatch
    from models.mi import MIState

    n = SIZES[size]
    fields = 40
    hashes, labels = _synthetic_hashes(n, fields, 1)
    ts = np.arange(n, dtype=np.int64) * 50 + 1_700_000_000_000
    names = [f"f{i}" for i in range(fields)]
    state = MIState(mi_config_from(settings))
    batch = 8192
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        state.update(EncodedBatch(names, hashes[i : i + batch]), labels[i : i + batch], ts[i : i + batch])
    elapsed = time.perf_counter() - t0
    t1 = time.perf_counter()
    state.scores()
    score_s = time.perf_counter() - t1
    return {"suite": "mi", "rows": n, "fields": fields, "update_rows_per_s": n / elapsed,
            "scores_seconds": score_s, "peak_rss_mb": peak_rss_mb()}


def _gate_pass(settings: Settings, hashes: np.ndarray, labels: np.ndarray, threads: int) -> dict[str, float]:
    """One window of gate training (its fit half, then its search half) at batch 1024; rates per phase."""
    from dataclasses import replace

    import torch

    from daemon.settings_map import gate_config_from
    from models.gates import GatedCTR

    torch.set_num_threads(threads)
    n = len(labels)
    model = GatedCTR(replace(gate_config_from(settings), window=n + 1024), seed=0)
    model.learn(hashes[:1024], labels[:1024])  # warm-up, and the window's first batch
    phase_at = None
    t0 = time.perf_counter()
    for i in range(0, n, 1024):
        model.learn(hashes[i : i + 1024], labels[i : i + 1024])
        if phase_at is None and model.in_window >= (n + 1024) // 2:
            phase_at = (time.perf_counter() - t0, i + 1024)
    elapsed = time.perf_counter() - t0
    assert phase_at is not None
    fit_s, fit_n = phase_at
    return {"train_examples_per_s": n / elapsed, "fit_examples_per_s": fit_n / fit_s,
            "search_examples_per_s": (n - fit_n) / (elapsed - fit_s)}


def suite_gates(settings: Settings, size: str) -> dict[str, Any]:
    """Gate training alone: examples/s at batch 1024 with 40 fields over one whole window (fit and
    search phases), on every available core and on one thread (the daemon's gate worker)."""
    import torch

    n = min(SIZES[size], 200_000)
    hashes, labels = _synthetic_hashes(n, 40, 2)
    cores = os.cpu_count() or 1
    on_all = _gate_pass(settings, hashes, labels, cores)
    on_one = _gate_pass(settings, hashes, labels, 1)
    out: dict[str, Any] = {"suite": "gates", "examples": n, "batch": 1024, "fields": 40, "threads": cores}
    out.update(on_all)
    out.update({f"one_thread_{k}": v for k, v in on_one.items()})
    out["torch"] = torch.__version__
    return out


def suite_scale(settings: Settings, size: str) -> dict[str, Any]:
    """The scoring core's rate and memory as fields, cardinality, pairs and stream length grow."""
    from dataclasses import asdict

    from daemon.settings_map import mi_config_from
    from daemon.tools.bench_scale import suite_scale as scale

    return scale(asdict(mi_config_from(settings)), size)


def suite_instances(settings: Settings, size: str) -> dict[str, Any]:
    """Total events/s of 1, 2 and 3 group-mode instances sharing one 6-partition stream."""
    from daemon.tools.bench_cluster import suite_instances as instances

    return instances(settings, size)


def suite_gates_split(settings: Settings, size: str) -> dict[str, Any]:
    """Gate quality (field F1, online AUC) of 1, 2 and 3 instances each training on its partitions."""
    from daemon.tools.bench_gates_split import suite_gates_split as gates_split

    return gates_split(settings, size)


SUITES = {"e2e": suite_e2e, "mi": suite_mi, "gates": suite_gates, "scale": suite_scale,
          "instances": suite_instances, "gates-split": suite_gates_split}


def bench_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.suite == "score":
        from daemon.tools.bench_score import suite_score

        result = suite_score(settings, args.size, args.outrank_python)
    elif args.suite in SUITES:
        result = SUITES[args.suite](settings, args.size)
    else:
        print(f"featsieve bench: unknown suite {args.suite!r}; one of {', '.join([*SUITES, 'score'])}", file=sys.stderr)
        return 2
    result["size"] = args.size
    if not args.json:
        width = max(len(k) for k in result)
        for key, value in result.items():
            shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {shown}", file=sys.stderr)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


def _run_isolated(out_path: str) -> int:  # pragma: no cover - runs in the child of isolated()
    import pickle

    from connectors.kafka_compat import install_socket_reader

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    install_socket_reader()  # as every featsieve command does: the ceiling reads as the daemon does
    name, args, kwargs = pickle.loads(sys.stdin.buffer.read())
    result = _PASSES[name](*args, **kwargs)
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # the whole process, start-up (imports, connecting) included; workers: the decode worker
    result.update(peak_rss_mb=own.ru_maxrss / 1024.0, worker_peak_rss_mb=workers.ru_maxrss / 1024.0,
                  cpu_seconds=own.ru_utime + own.ru_stime, worker_cpu_seconds=workers.ru_utime + workers.ru_stime)
    Path(out_path).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_run_isolated(sys.argv[1]))
