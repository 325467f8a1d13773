"""``featsieve bench instances``: total events/s of 1, 2 and 3 instances in group mode on one stream.

One stream (the default ~40-field generator, keyed by impression id) is
produced into 6-partition topics. For each N, N ``featsieve run --coordination
group --exit-at-end`` processes share it in a fresh consumer group; the wall
time from their start to the last exit gives the total rate, and the stats
topic is read afterwards to measure what group mode publishes (bytes of shard
states per input event). The baseline of the ratios is N = 1 in the same run.
On a 2-core machine the curve flattens by construction: each instance is one
busy Python process, and the broker runs on the same two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import TopicPartition

from daemon.config import Settings
from daemon.settings_map import endpoint_from

PARTITIONS = 6


def _topic_bytes(settings: Settings, topic: str) -> int:
    from connectors.kafka_io import make_consumer

    consumer = make_consumer(endpoint_from(settings), group_id=None, max_partition_fetch_bytes=64 << 20)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return 0
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        total = 0
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                total += sum(len(r.value or b"") for r in records)
        return total
    finally:
        consumer.close()


def _run_group(settings: Settings, topics: tuple[str, str], n: int, workdir: Path) -> dict[str, Any]:
    run = "bench-" + uuid.uuid4().hex[:8]
    args = [
        sys.executable, "-m", "daemon.cli", "run", "--coordination", "group", "--exit-at-end",
        "--bootstrap", ",".join(settings.bootstrap), "--input-topics", ",".join(topics),
        "--group-id", run, "--model-id", run, "--mask-topic", f"{run}.masks", "--dlq-topic", f"{run}.dlq",
        "--stats-topic", f"{run}.stats", "--control-topic", f"{run}.control", "--metrics-port", "0",
        "--gates", "false", "--log-level", "WARNING",
    ]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([*args, "--instance-id", f"{run}-{k}", "--state-dir", str(workdir / f"{run}-{k}")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for k in range(n)
    ]
    errors = [p.communicate(timeout=3600)[1] for p in procs]
    elapsed = time.perf_counter() - t0
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"instance exited {p.returncode}: {err[-2000:]}")
    return {"instances": n, "seconds": elapsed, "stats_bytes": _topic_bytes(settings, f"{run}.stats")}


def suite_instances(settings: Settings, size: str) -> dict[str, Any]:
    from daemon.tools.bench_stream import SIZES, produce_stream

    run = "bench-" + uuid.uuid4().hex[:8]
    topics = (f"{run}.impressions", f"{run}.clicks")
    produced = produce_stream(settings, topics, SIZES[size], seed=13, partitions=PARTITIONS)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2, 3):
            r = _run_group(settings, topics, n, Path(tmp))
            r["events_per_s"] = produced / r["seconds"]
            r["stats_bytes_per_event"] = r["stats_bytes"] / produced
            results.append(r)
    base = results[0]["events_per_s"]
    for r in results:
        r["ratio"] = r["events_per_s"] / base
    return {"suite": "instances", "events": produced, "partitions": PARTITIONS, "cores": os.cpu_count(),
            "runs": results, "ratio": results[-1]["ratio"]}
