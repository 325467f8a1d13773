"""connectors/kafka_compat.py: every touch of kafka-python's internals is installed explicitly,
never at import, and only for the kafka-python versions it was verified against.

The import test runs in a fresh interpreter: it snapshots every attribute of every
kafka-python module and class, imports every module of connectors/ and daemon/, and asserts
nothing of the library changed. The gate tests fake the installed version; the broker tests
use real clients on the local broker.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.errors import ProducerFencedError

from connectors import kafka_compat
from connectors.kafka_io import KafkaEndpoint, make_consumer

ROOT = Path(__file__).resolve().parents[1]

_IMPORT_EVERYTHING = r"""
import importlib, pkgutil, sys, types

# the kafka-python modules our code touches, and everything they pull in
for name in ("kafka", "kafka.net.transport", "kafka.consumer.fetcher", "kafka.consumer.group",
             "kafka.coordinator.consumer", "kafka.coordinator.base", "kafka.producer.kafka",
             "kafka.producer.transaction_manager", "kafka.record.default_records"):
    importlib.import_module(name)

def snapshot():
    seen = {}
    for mod_name, mod in list(sys.modules.items()):
        if not (mod_name == "kafka" or mod_name.startswith("kafka.")) or mod is None:
            continue
        for attr, value in list(vars(mod).items()):
            seen[(mod_name, attr)] = id(value)
            if isinstance(value, type) and value.__module__ == mod_name:
                for cls_attr, cls_value in list(vars(value).items()):
                    seen[(mod_name, attr, cls_attr)] = id(cls_value)
    return seen

before = snapshot()
imported = 0
for package in ("connectors", "daemon"):
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        importlib.import_module(info.name)
        imported += 1
after = snapshot()
changed = sorted(str(key) for key, ident in before.items() if after.get(key) != ident)
print(imported)
print("\n".join(changed))
"""


def test_importing_every_module_patches_nothing_of_kafka_python() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}
    out = subprocess.run([sys.executable, "-c", _IMPORT_EVERYTHING], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    imported, *changed = out.stdout.splitlines()
    assert int(imported) >= 30  # every module of connectors/ and daemon/ was imported
    assert [line for line in changed if line] == []


@pytest.fixture
def fake_version(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Set ``fake_version[0]`` to the version kafka_compat should see; the cached check is reset."""
    version = [kafka_compat.installed_version()]
    monkeypatch.setattr(kafka_compat, "installed_version", lambda: version[0])
    kafka_compat.reset_version_check()
    yield version
    kafka_compat.reset_version_check()
    kafka_compat.uninstall_socket_reader()


def test_the_supported_range() -> None:
    assert kafka_compat.in_supported_range("3.0.12")
    assert kafka_compat.in_supported_range("3.0.20")
    assert kafka_compat.in_supported_range("3.0.13rc1")
    assert not kafka_compat.in_supported_range("3.0.11")
    assert not kafka_compat.in_supported_range("2.3.1")
    assert not kafka_compat.in_supported_range("3.1.0")
    assert not kafka_compat.in_supported_range("3.1.0rc1")
    assert not kafka_compat.in_supported_range("4.0")
    assert not kafka_compat.in_supported_range("unknown")


def test_the_installed_kafka_python_is_supported_and_pyproject_pins_the_same_range() -> None:
    assert kafka_compat.in_supported_range(kafka_compat.installed_version())
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if d.replace(" ", "").startswith("kafka-python")]
    low, high = kafka_compat.SUPPORTED
    assert pins == [f"kafka-python>={low},<{high}"]


def test_outside_the_range_one_warning_and_nothing_is_installed(
        fake_version: list[str], caplog: pytest.LogCaptureFixture) -> None:
    from kafka.net import transport

    fake_version[0] = "3.1.0"
    original = vars(transport.KafkaTCPTransport)["_sock_recv"]
    fenced = SimpleNamespace(_transaction_manager=SimpleNamespace(last_error=ProducerFencedError()))
    with caplog.at_level(logging.WARNING, logger="connectors.kafka_compat"):
        assert not kafka_compat.install_socket_reader()
        assert not kafka_compat.keep_metadata_rejoins(SimpleNamespace(_coordinator=None))
        assert not kafka_compat.read_batches_fast(SimpleNamespace(_fetcher=SimpleNamespace(PartitionRecords=None)))
        # the library's own paths: no connection table read, fencing by exception type alone
        assert kafka_compat.broker_connected(SimpleNamespace(_client=SimpleNamespace(
            _manager=SimpleNamespace(_conns={}))))
        assert kafka_compat.transaction_error(fenced) is None
    assert vars(transport.KafkaTCPTransport)["_sock_recv"] is original
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "kafka-python 3.1.0" in warnings[0] and ">=3.0.12,<3.1" in warnings[0]


def test_in_the_range_the_touches_are_installed(fake_version: list[str], caplog: pytest.LogCaptureFixture) -> None:
    from kafka.net import transport

    fenced = SimpleNamespace(_transaction_manager=SimpleNamespace(last_error=ProducerFencedError()))
    with caplog.at_level(logging.WARNING, logger="connectors.kafka_compat"):
        assert kafka_compat.install_socket_reader()
        assert transport.KafkaTCPTransport._sock_recv is kafka_compat.read_available
        assert isinstance(kafka_compat.transaction_error(fenced), ProducerFencedError)
        assert not kafka_compat.broker_connected(SimpleNamespace(_client=SimpleNamespace(
            _manager=SimpleNamespace(_conns={0: SimpleNamespace(connected=False)}))))
    assert caplog.records == []


@pytest.mark.broker
def test_a_daemon_consumer_in_and_out_of_the_range(bootstrap: str, fake_version: list[str]) -> None:
    """In range, a consumer gets the kept rejoins and the fast reader; out of range it is left as
    the library made it, and still joins its group and reads every record."""
    topic = "compat-" + uuid.uuid4().hex[:10]
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i in range(500):
        producer.send(topic, value=b"%04d" % i, partition=0)
    producer.flush()
    producer.close()
    endpoint = KafkaEndpoint(bootstrap=(bootstrap,))

    def read_all(consumer: KafkaConsumer) -> None:
        consumer.subscribe([topic])
        values: list[bytes] = []
        for _ in range(120):
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
            if len(values) >= 500:
                break
        assert values == [b"%04d" % i for i in range(500)]
        assert consumer.assignment() == {TopicPartition(topic, 0)}
        assert kafka_compat.broker_connected(consumer)

    ours = make_consumer(endpoint, group_id="g-" + topic)
    try:
        assert kafka_compat.adopt_consumer(ours, fast_reader=True)
        assert issubclass(ours._fetcher.PartitionRecords, kafka_compat.FastPartitionRecords)
        assert ours._fetcher.PartitionRecords.sample is None  # no sample: every record
        assert "need_rejoin" in vars(ours._coordinator)
        read_all(ours)
    finally:
        ours.close()

    kafka_compat.reset_version_check()
    fake_version[0] = "9.0"
    plain = make_consumer(endpoint, group_id="g2-" + topic)
    try:
        assert not kafka_compat.adopt_consumer(plain, fast_reader=True)
        assert plain._fetcher.PartitionRecords is Fetcher.PartitionRecords
        assert "need_rejoin" not in vars(plain._coordinator)
        read_all(plain)
    finally:
        plain.close()


_DAEMON_ON_ANOTHER_KAFKA_PYTHON = (
    "import sys\n"
    "from connectors import kafka_compat\n"
    "kafka_compat.installed_version = lambda: '3.1.0'  # a kafka-python outside the supported range\n"
    "from daemon.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.broker
@pytest.mark.slow
def test_the_daemon_runs_on_the_librarys_own_paths_outside_the_range(bootstrap: str, unique: str,
                                                                       tmp_path: Path) -> None:
    """A whole daemon run (join, MI, a published mask) with nothing of kafka_compat installed."""
    from tests.conftest import featsieve, kcat_read

    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "20000",
              "--input-topics", topics, "--seed", "5")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}
    run = subprocess.run(
        [sys.executable, "-c", _DAEMON_ON_ANOTHER_KAFKA_PYTHON, "run", "--bootstrap", bootstrap,
         "--input-topics", topics, "--group-id", unique, "--model-id", unique, "--mask-topic", f"{unique}.masks",
         "--dlq-topic", f"{unique}.dlq", "--state-dir", str(tmp_path / "state"), "--metrics-port", "0",
         "--exit-at-end", "--gates", "false"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("kafka-python 3.1.0 is outside the range") == 1, run.stderr[-3000:]
    assert ">=3.0.12,<3.1" in run.stderr
    assert "internals are not the ones" not in run.stderr  # one warning, not one per touch
    assert "mask published" in run.stderr
    masks = [line for line in kcat_read(bootstrap, f"{unique}.masks") if line.startswith(unique + "\t")]
    assert masks, "no mask on the mask topic"
