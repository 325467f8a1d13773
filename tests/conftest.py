"""Shared fixtures: the local broker (started by `make test` / scripts/test) and helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "60000",
              "--input-topics", topics)
    closed = threading.Event()
    log = tmp_path_factory.mktemp("gated-log") / "daemon.log"
    proc = subprocess.Popen(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics,
         "--model-id", name, "--mask-topic", f"{name}.masks", "--dlq-topic", f"{name}.dlq",
         "--group-id", name, "--state-dir", str(tmp_path_factory.mktemp("gated") / "state"),
         "--metrics-port", "0", "--mask-interval-s", "0.5", "--attribution-window-s", "120",
         "--gate-window", "1000"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)
    sub = MaskSubscriber(name, bootstrap, topic=f"{name}.masks", on_update=lambda m: any(
        f.closed_values for f in m.fields.values()) and closed.set())
    try:
        with sub:
            if not closed.wait(300):
                raise AssertionError("no mask with closed values in 300 s:\n" + log.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=120)
    return GatedMasks(bootstrap, name, topics, f"{name}.masks")
