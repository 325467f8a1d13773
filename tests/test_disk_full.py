"""A state directory that cannot take a snapshot (disk full, file too large): the daemon does not
crash, pauses consumption, says why on /readyz, tries again, and once a write succeeds goes on
with nothing lost.

The fault is the operating system's own: the daemon runs with a soft file-size limit
(RLIMIT_FSIZE, 16 MB) below the size of its snapshots (~100 MB with gates, the default), so
the snapshot write fails with EFBIG, as it fails with ENOSPC on a full disk (the same OSError
path). Raising the limit from outside (prlimit) is the operator freeing space.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT, featsieve, free_port, http_get, metric_samples, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

LIMIT = 16 << 20


def _small_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def test_a_snapshot_that_cannot_be_written_pauses_consumption_and_nothing_is_lost(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topics = f"{unique}.impressions,{unique}.clicks"

    def produce(seed: int) -> int:
        done = featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "5000",
                         "--seed", str(seed), "--input-topics", topics)
        line = next(x for x in (done.stdout + done.stderr).splitlines() if x.startswith("produced "))
        return int(line.split()[1])  # "produced N events to ..."

    produced = produce(1)
    state, port, log = tmp_path / "state", free_port(), tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics, "--group-id", unique,
         "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
         "--state-dir", str(state), "--metrics-port", str(port), "--checkpoint-interval-s", "1",
         "--ready-max-lag", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"), preexec_fn=_small_files)  # noqa: SIM115, PLW1509

    def ready() -> tuple[int, str]:
        assert proc.poll() is None, log.read_text()[-3000:]
        return http_get(f"http://127.0.0.1:{port}/readyz")

    def events() -> float:
        code, text = http_get(f"http://127.0.0.1:{port}/metrics")
        return sum(metric_samples(text, "featsieve_events_total").values()) if code == 200 else -1.0

    try:
        # 1. the first checkpoint fails: not ready, with the reason; no snapshot, no partial file left
        code, body = wait_until(lambda: (r := ready())[0] == 503 and "state not writable" in r[1] and r, 120,
                                "/readyz to say the state cannot be written")
        assert "File too large" in body and "holding consumption" in body, body
        assert not list(state.glob("snapshot-*")), sorted(p.name for p in state.iterdir())
        text = log.read_text()
        assert "checkpoint (interval) failed" in text and "consumption paused: the state cannot be written" in text
        # 2. more events come while it cannot write: they wait in Kafka (the daemon holds them back)
        produced += produce(2)
        seen = events()
        wait_until(lambda: "checkpoint (interval) failed" in log.read_text() and ready()[0] == 503, 30,
                   "the daemon to keep refusing while the state cannot be written")
        assert events() == seen and _checkpointed(log.read_text()) == 0, seen
        # 3. space again: the next try writes the snapshot, consumption resumes, everything is read
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_until(lambda: ready()[0] == 200, 180, "/readyz to be ready again")
        assert list(state.glob("snapshot-*.bin"))
        assert "checkpoint written again after" in log.read_text()
        wait_until(lambda: _checkpointed(log.read_text()) == produced, 120,
                   f"a checkpoint of all {produced} events")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # nothing lost, nothing twice: the final snapshot's offsets are the topics' ends
    stopped = [line for line in log.read_text().splitlines() if "featsieve stopped:" in line]
    assert stopped and _offsets_sum(stopped[-1]) == produced, stopped
    assert os.path.getsize(sorted(state.glob("snapshot-*.bin"))[-1]) > LIMIT


def _offsets_sum(line: str) -> int:
    """The records a checkpoint or stop line's offsets cover: ``offsets=t.clicks:0@293,t.impressions:0@10000``."""
    spec = line.rsplit("offsets=", 1)[1].split()[0]
    return sum(int(part.rsplit("@", 1)[1]) for part in spec.split(",") if "@" in part)


def _checkpointed(text: str) -> int:
    """The records covered by the last checkpoint written (0 before the first)."""
    lines = [line for line in text.splitlines() if "checkpoint: reason=" in line]
    return _offsets_sum(lines[-1]) if lines else 0
