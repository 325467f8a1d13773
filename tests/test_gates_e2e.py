"""The default configuration (gates on) under load: a trainer that falls behind lowers its sampling
rate, the daemon reports it (featsieve_gate_sampling_rate) and the rate recovers once it catches up.

The trainer is made to fall behind by a failpoint (connectors/failpoints.py) that stops it before
its first batch, not by hoping the machine is slow; a file the test creates lets it go on.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT, featsieve, free_port, http_get, metric_samples, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_a_full_training_queue_lowers_the_sampling_rate_reports_it_and_recovers(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topics = f"{unique}.impressions,{unique}.clicks"

    def produce(seed: int) -> None:
        featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "6000",
                  "--event-rate", "20", "--seed", str(seed), "--input-topics", topics)

    produce(1)
    port, resume, log = free_port(), tmp_path / "resume", tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics, "--group-id", unique,
         "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
         "--state-dir", str(tmp_path / "state"), "--metrics-port", str(port),  # gates: the default, on
         "--gate-queue-batches", "4", "--max-poll-records", "200", "--attribution-window-s", "60",
         # no checkpoint while the trainer stands still (a snapshot would wait for it)
         "--checkpoint-interval-s", "3600", "--checkpoint-interval-events", "10000000"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"),  # noqa: SIM115 - closed with the process
        env={**os.environ, "FEATSIEVE_FAILPOINT": "gate_learn:1=pause", "FEATSIEVE_FAILPOINT_RESUME": str(resume)})

    def metric(name: str) -> float:
        assert proc.poll() is None, log.read_text()[-3000:]
        code, text = http_get(f"http://127.0.0.1:{port}/metrics")
        return sum(metric_samples(text, name).values()) if code == 200 else float("nan")  # nan: not up yet

    try:
        # the trainer stands still, its queue fills: the rate halves at each offer that finds it full
        wait_until(lambda: 0 < metric("featsieve_gate_sampling_rate") < 0.25, 120, "the sampling rate to drop")
        assert metric("featsieve_gate_skipped_examples_total") > 0
        assert metric("featsieve_gate_examples_total") == 0
        # the trainer goes on; with more examples coming the rate climbs back to 1
        resume.touch()
        seeds = iter(range(2, 100))

        def recovered() -> bool:
            # each offer after the trainer drained its queue doubles the rate (1/1024 -> 1 in ten):
            # more examples while it has not climbed all the way back
            if metric("featsieve_gate_sampling_rate") == 1.0:
                return True
            produce(next(seeds))
            return metric("featsieve_gate_sampling_rate") == 1.0

        wait_until(recovered, 240, "the sampling rate to recover", interval=1.0)
        assert metric("featsieve_gate_examples_total") > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "failpoint gate_learn:1: paused" in log.read_text()
