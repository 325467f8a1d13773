"""Shared fixtures: the local broker (started by `make test` / scripts/test) and helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
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
