"""Every /readyz outcome, each reached by a real daemon process on the real broker.

daemon/runloop.py's ``Daemon.readiness`` answers, in its order of precedence:

1. ``not connected to Kafka: <cause>``                    (tests/test_security.py)
2. ``dead-letter topic <t> unavailable: holding consumption`` (tests/test_broker_faults.py)
3. group mode, not the writer: ``lag <n> records > ready_max_lag <m>``, else
   ``ready (group mode, not the mask writer)``             (here)
4. ``not the mask writer (fenced or not started)``          (here: fenced)
5. ``no partitions assigned``                               (here)
6. ``lag <n> records > ready_max_lag <m>``                  (here)
7. ``no mask published yet``                                (here)
8. ``ready``                                                (here and most daemon tests)

The states are made, not waited for by luck: a plain consumer that sorts first holds every
input partition (range assignment) or the writer-election partition (sticky assignment), and
failpoints (connectors/failpoints.py) stop a daemon right after its first batch, or right after
it finds itself fenced, so that its state stands still while the test reads /readyz.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from connectors.kafka_io import KafkaEndpoint, TopicSpec, ensure_topics, make_admin
from tests.conftest import BIN, ROOT, featsieve, free_port, http_get, metric_samples, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MAX_LAG = 100


class Holder:
    """A plain consumer in a group that takes (and keeps) partitions away from the daemons.

    Its member id starts with "0-" and sorts before the daemons' ("featsieve-..."): the range
    assignor gives it every partition of one-partition topics; under the sticky assignor a
    partition it holds stays with it when a daemon joins.
    """

    def __init__(self, bootstrap: str, group: str, topics: list[str], assignor: type) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, client_id="0-holder",
                                      partition_assignment_strategy=[assignor], enable_auto_commit=False)
        self.consumer.subscribe(topics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.consumer.poll(timeout_ms=100)  # takes part in rebalances; what it reads is ignored

    def held(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(30)
        self.consumer.close()  # leaves the group: its partitions go to the daemons


def topics(bootstrap: str, *names: str) -> None:
    admin = make_admin(KafkaEndpoint(bootstrap=(bootstrap,)))
    try:
        ensure_topics(admin, [TopicSpec(n, 1) for n in names])
    finally:
        admin.close()


def start(bootstrap: str, unique: str, name: str, tmp_path: Path, *extra: str,
          failpoint: str | None = None) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = tmp_path / f"{name}.log"
    args = [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap,
            "--input-topics", f"{unique}.impressions,{unique}.clicks", "--mask-topic", f"{unique}.masks",
            "--dlq-topic", f"{unique}.dlq", "--state-dir", str(tmp_path / name), "--metrics-port", str(port),
            "--gates", "false", "--min-examples", "200", "--mask-interval-s", "0.5",
            "--ready-max-lag", str(MAX_LAG), *extra]
    env = {**os.environ, **({"FEATSIEVE_FAILPOINT": failpoint} if failpoint else {})}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))  # noqa: SIM115 - closed with the process
    return proc, port, log


def readyz(proc: subprocess.Popen, port: int, log: Path, code: int, reason: str, timeout: float = 90) -> str:
    """Wait until /readyz answers ``code`` with a body matching ``reason`` (a regex); return the body."""
    def answer() -> str | None:
        assert proc.poll() is None, f"the daemon exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        got, body = http_get(f"http://127.0.0.1:{port}/readyz")
        return body if got == code and re.fullmatch(reason, body.strip()) else None

    try:
        body = wait_until(answer, timeout, f"/readyz {code} {reason!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; now {http_get(f'http://127.0.0.1:{port}/readyz')}\n"
                             f"{log.read_text()[-3000:]}") from None
    # featsieve_ready, which the FeatsieveNotReady alert watches, says the same
    wanted = 1.0 if code == 200 else 0.0
    wait_until(lambda: metric_samples(http_get(f"http://127.0.0.1:{port}/metrics")[1], "featsieve_ready")[()] == wanted,
               30, f"featsieve_ready {wanted} ({body.strip()})")
    return body


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=90)


def mask_writer(port: int) -> float:
    return metric_samples(http_get(f"http://127.0.0.1:{port}/metrics")[1], "featsieve_mask_writer")[()]


def generate(bootstrap: str, unique: str, impressions: int = 3000) -> None:
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", str(impressions),
              "--event-rate", "20", "--input-topics", f"{unique}.impressions,{unique}.clicks")


def test_the_single_writers_outcomes(bootstrap: str, unique: str, tmp_path: Path) -> None:
    """No partitions -> no mask yet -> ready; a second writer's lag; the first writer fenced."""
    topics(bootstrap, f"{unique}.impressions", f"{unique}.clicks")
    holder = Holder(bootstrap, f"{unique}-a", [f"{unique}.impressions", f"{unique}.clicks"], RangePartitionAssignor)
    procs: list[subprocess.Popen] = []
    try:
        wait_until(lambda: len(holder.held()) == 2, 60, "the holder to hold both input partitions")
        a, a_port, a_log = start(bootstrap, unique, "a", tmp_path, "--group-id", f"{unique}-a", "--model-id", unique,
                                 "--mask-republish-interval-s", "1", failpoint="writer_fenced:1=pause")
        procs.append(a)
        # 5. in the group, but the holder has every partition
        readyz(a, a_port, a_log, 503, "no partitions assigned")
        assert len(holder.held()) == 2
        # 7. the holder leaves: the daemon has the (empty) partitions, caught up, but no evidence
        holder.close()
        readyz(a, a_port, a_log, 503, "no mask published yet")
        # 8. events come: a mask is published
        generate(bootstrap, unique)
        readyz(a, a_port, a_log, 200, "ready")

        # a second writer of the same model, in another group (it reads the stream from the start):
        # its producer fences the first at start-up; it stops after its first batch of ten records
        b, b_port, b_log = start(bootstrap, unique, "b", tmp_path, "--group-id", f"{unique}-b", "--model-id", unique,
                                 "--max-poll-records", "10", failpoint="poll:1=pause")
        procs.append(b)
        # 6. the rest of the stream is lag, above ready_max_lag
        body = readyz(b, b_port, b_log, 503, rf"lag (\d+) records > ready_max_lag {MAX_LAG}")
        lag = int(body.split()[1])
        assert lag > MAX_LAG, body
        # 4. the first writer's next heartbeat finds it fenced
        readyz(a, a_port, a_log, 503, re.escape("not the mask writer (fenced or not started)"))
        assert stop(a) == 3, a_log.read_text()[-3000:]  # fenced: stops without publishing
        assert stop(b) == 0, b_log.read_text()[-3000:]
    finally:
        holder.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert "failpoint writer_fenced:1" in a_log.read_text() and "failpoint poll:1" in b_log.read_text()


@pytest.mark.parametrize("paused", [False, True], ids=["caught-up", "lagging"])
def test_a_group_instance_that_is_not_the_writer(bootstrap: str, unique: str, tmp_path: Path, paused: bool) -> None:
    """3. Group mode, the writer partition held elsewhere: ready unless its lag is above the bound."""
    topics(bootstrap, f"{unique}.impressions", f"{unique}.clicks", f"{unique}.control")
    generate(bootstrap, unique)
    holder = Holder(bootstrap, f"{unique}.writer", [f"{unique}.control"], StickyPartitionAssignor)
    proc = None
    try:
        wait_until(lambda: holder.held() == {(f"{unique}.control", 0)}, 60, "the holder to hold the writer partition")
        proc, port, log = start(bootstrap, unique, "g", tmp_path, "--coordination", "group", "--group-id", unique,
                                "--model-id", unique, "--stats-topic", f"{unique}.stats",
                                "--control-topic", f"{unique}.control", "--max-poll-records", "10",
                                failpoint="poll:1=pause" if paused else None)
        if paused:
            body = readyz(proc, port, log, 503, rf"lag (\d+) records > ready_max_lag {MAX_LAG}")
            assert int(body.split()[1]) > MAX_LAG, body
        else:
            readyz(proc, port, log, 200, re.escape("ready (group mode, not the mask writer)"), timeout=180)
        assert mask_writer(port) == 0
        assert holder.held() == {(f"{unique}.control", 0)}  # the holder is still the writer
        assert stop(proc) == 0, log.read_text()[-3000:]
    finally:
        holder.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
