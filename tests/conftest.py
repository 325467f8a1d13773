"""Shared fixtures: the local broker (started by `make test` / scripts/test) and helpers."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


def _bootstrap() -> str:
    return os.environ.get("FEATSIEVE_TEST_BOOTSTRAP", "127.0.0.1:29092")


@pytest.fixture(scope="session")
def bootstrap() -> str:
    """The real broker's address; fails (not skips) when it is not running."""
    addr = _bootstrap()
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError:
        pytest.fail(
            f"no Kafka broker at {addr}: run the suite with `make test`, or start one with "
            f"`KAFKA_PORT={port} scripts/kafka up` and set FEATSIEVE_TEST_BOOTSTRAP"
        )
    return addr


@pytest.fixture
def unique() -> str:
    """A fresh name for topics, groups and model ids, so tests never see each other's data."""
    return "t" + uuid.uuid4().hex[:10]


def featsieve(*args: str, timeout: float = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the featsieve CLI of this venv as a separate process."""
    proc = subprocess.run(
        [str(BIN / "featsieve"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"featsieve {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def kcat_read(bootstrap: str, topic: str, fmt: str = "%k\t%s\n", timeout: float = 60) -> list[str]:
    """Read a whole topic with kcat (an independent client we did not write)."""
    proc = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", topic, "-e", "-q", "-f", fmt],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.split("\n") if line]


def free_port() -> int:
    """A port the kernel calls free now (for servers the test starts: metrics, Prometheus)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of a GET; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


@dataclass(frozen=True)
class GatedMasks:
    """A generated stream and the masks a real daemon (with gates) published from it."""

    bootstrap: str
    model: str
    input_topics: str
    mask_topic: str


@pytest.fixture(scope="session")
def gated_masks(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> GatedMasks:
    """Runs the daemon with gates on a generated stream until it has published a mask with closed
    values (their JSON types come from the events: the small preset has string, integer and float
    fields), then stops it. Shared by the tests that need real masks with closed values."""
    from featsieve_client import MaskSubscriber

    name = "t" + uuid.uuid4().hex[:10]
    topics = f"{name}.impressions,{name}.clicks"
    # 150 000 impressions over 750 s of event time: every impression's 60 s attribution window
    # closes within the stream, so the gates train on negatives as well as clicks
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "150000",
              "--event-rate", "200", "--input-topics", topics)
    closed = threading.Event()
    log = tmp_path_factory.mktemp("gated-log") / "daemon.log"
    proc = subprocess.Popen(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics,
         "--model-id", name, "--mask-topic", f"{name}.masks", "--dlq-topic", f"{name}.dlq",
         "--group-id", name, "--state-dir", str(tmp_path_factory.mktemp("gated") / "state"),
         "--metrics-port", "0", "--mask-interval-s", "0.5", "--attribution-window-s", "60",
         # gates earn a vote (docs/policy.md) only once their closings cost the model at most the
         # drop budget in AUC: measured on this stream, 10 000-example windows are within 0.05
         # from ~80 000 examples on, within the default 0.001 only now and then
         "--gate-window", "10000", "--drop-budget", "0.05",
         # nor when they close half of the fields MI proves (ad_id and hour, in some windows):
         # these tests need closed values, not a vote that holds
         "--gate-max-disagreement", "1",
         # the loop reads the stream faster than the trainer learns it: a trainer that fell
         # behind would subsample (its sampling rate halves while its queue is full) and its
         # model, taught a fraction of the stream, would not earn a vote within the deadline
         "--gate-queue-batches", "2000"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)
    def on_update(mask: Any) -> None:
        if any(f.closed_values for f in mask.fields.values()):
            # killed at once, from the subscriber's own callback, not stopped: a later mask (a
            # window in which the gates lost their vote, or the mask published at shutdown) would
            # replace the one with closed values these tests read as the newest
            proc.kill()
            closed.set()

    try:
        with MaskSubscriber(name, bootstrap, topic=f"{name}.masks", on_update=on_update):
            if not closed.wait(300):
                raise AssertionError("no mask with closed values in 300 s:\n" + log.read_text()[-3000:])
    finally:
        proc.kill()
        proc.wait(timeout=120)
    return GatedMasks(bootstrap, name, topics, f"{name}.masks")


def wait_until(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``cond`` until it returns something truthy and return that; fail naming ``what``.

    The one way tests wait: on a condition, with a deadline that is a bound on a hang, never
    a measure of speed (a fast machine returns at once, a slow one within the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {got!r})")
        time.sleep(interval)  # polling inside the wait helper, not synchronisation by sleeping


def scrape(port: int) -> str:
    """The daemon's /metrics text; empty while nothing answers there (yet)."""
    code, text = http_get(f"http://127.0.0.1:{port}/metrics")
    return text if code == 200 else ""


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric in a /metrics text: sorted label pairs -> value (HELP lines ignored)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


@dataclass(frozen=True)
class Letter:
    """One record of a topic as read back: key, value, headers (values decoded as UTF-8), offset."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def read_records(endpoint: Any, topic: str, timeout: float = 60) -> list[Letter]:
    """Every record of a topic (all partitions) from its beginning to its end now, with headers."""
    from kafka import TopicPartition

    from connectors.kafka_io import make_consumer

    consumer = make_consumer(endpoint, group_id=None)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Letter] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout} s"
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(
                    Letter(r.partition, r.offset, r.key, r.value,
                           {k: (v or b"").decode("utf-8", "replace") for k, v in r.headers})
                    for r in records
                )
        return out
    finally:
        consumer.close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses sockets LISTEN on for ``port``, from the kernel's tables (IPv4 and IPv6)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: TCP_LISTEN
                continue
            raw = bytes.fromhex(addr_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(words)))
    return found


def describe_group(bootstrap: str, group: str) -> tuple[str, list[list[tuple[str, int]]]]:
    """(state, [each member's assigned (topic, partition)s]) of a consumer group, as the broker sees it."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        desc = admin.describe_groups([group])[group]
    finally:
        admin.close()
    members = [
        [(a["topic"], p) for a in (m.get("member_assignment") or {}).get("assigned_partitions", []) for p in a["partitions"]]
        for m in desc.get("members") or []
    ]
    return str(desc.get("group_state")), members


# ------------------------------------------------------------------ no skips in CI
# Under FEATSIEVE_NO_SKIP=1 (set by .ci/run, and by scripts/test when CI=true) a skipped test
# fails: a missing tool or module would otherwise turn a broken check into a quiet "s". The only
# skips allowed are these, each with the reason it cannot be a failure (node id prefix -> why).
ALLOWED_SKIPS: dict[str, str] = {
    "tests/test_gate_worker.py::test_the_trainer_thread_runs_at_a_lower_priority_than_the_loop":
        "per-thread nice values exist on Linux only; CI runs on Linux, where it never skips",
}


def _no_skip() -> bool:
    return os.environ.get("FEATSIEVE_NO_SKIP", "") not in ("", "0", "false")


def _skip_allowed(nodeid: str) -> bool:
    return any(nodeid == n or nodeid.startswith(n + "[") for n in ALLOWED_SKIPS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if _no_skip() and report.skipped and not hasattr(report, "wasxfail") and not _skip_allowed(item.nodeid):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped, and FEATSIEVE_NO_SKIP forbids skips ({reason}); install what it needs "
                           f"(scripts/install-tools) or add it to ALLOWED_SKIPS in tests/conftest.py with why")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    report = outcome.get_result()
    if _no_skip() and report.skipped and not _skip_allowed(collector.nodeid):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped at collection, and FEATSIEVE_NO_SKIP forbids skips ({reason})"
