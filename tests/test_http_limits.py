"""The health server's bounds: what it binds to, what it answers, and how long a client may hold it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon import http as health
from daemon.config import load_settings
from daemon.http import HealthServer
from tests.conftest import BIN, ROOT, free_port, http_get, listening_addresses, wait_until


@pytest.fixture
def server() -> Iterator[HealthServer]:
    srv = HealthServer(CollectorRegistry(), lambda: (True, "ready"), host="127.0.0.1", port=0).start()
    yield srv
    srv.stop()


def raw(port: int, data: bytes, timeout: float = 15) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.slow  # starts the daemon twice
@pytest.mark.parametrize("addr", [None, "127.0.0.2"])
def test_metrics_addr_defaults_to_loopback_and_is_configurable(addr: str | None, tmp_path: Path) -> None:
    """The daemon itself (a real `featsieve run`) listens where metrics_addr says: loopback by default.

    No broker is needed: the health server answers while the daemon retries its connection.
    127.0.0.2 is another loopback address, so a daemon that ignored the setting (listening on
    127.0.0.1, or on every address) would be seen in the kernel's socket table.
    """
    assert load_settings(env={}).metrics_addr == "127.0.0.1"
    port, nowhere = free_port(), free_port()
    env = {**os.environ, "FEATSIEVE_BOOTSTRAP": f"127.0.0.1:{nowhere}", "FEATSIEVE_METRICS_PORT": str(port),
           "FEATSIEVE_STATE_DIR": str(tmp_path / "state"), "FEATSIEVE_GATES": "false"}
    if addr is not None:
        env["FEATSIEVE_METRICS_ADDR"] = addr
    proc = subprocess.Popen([str(BIN / "featsieve"), "run"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        want = addr or "127.0.0.1"
        got = wait_until(lambda: proc.poll() is None and listening_addresses(port), 60, f"the daemon to listen on {port}")
        assert got == {want}, got
        assert http_get(f"http://{want}:{port}/healthz") == (200, "ok\n")
    finally:
        proc.terminate()
        proc.wait(60)


def test_only_three_paths_no_listing_and_no_body_read(server: HealthServer) -> None:
    for path in (b"/", b"/metrics/", b"/../../etc/passwd", b"/.git/config", b"/readyz%00"):
        reply = raw(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 404"), (path, reply[:80])
        assert b"Index of" not in reply and b"<a href" not in reply
    reply = raw(server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert reply.startswith(b"HTTP/1.0 405")


def test_oversized_request_line_and_too_many_headers_are_refused(server: HealthServer) -> None:
    reply = raw(server.port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 414"), reply[:80]
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(150))
    reply = raw(server.port, b"GET /healthz HTTP/1.1\r\n" + headers + b"\r\n")
    assert reply.startswith(b"HTTP/1.0 431"), reply[:80]


def test_a_slow_client_is_cut_off_and_does_not_block_others(server: HealthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # one client that sends nothing, one that trickles a byte a second (each read under the timeout)
    silent = socket.create_connection(("127.0.0.1", server.port))
    trickle = socket.create_connection(("127.0.0.1", server.port))
    try:
        t0 = time.monotonic()
        # meanwhile a normal request is answered at once
        assert raw(server.port, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200")
        closed_at = None
        trickle.settimeout(1.0)
        for ch in b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"z" * 40:
            try:
                trickle.send(bytes([ch]))
                data = trickle.recv(1024)
            except TimeoutError:
                continue
            except OSError:
                closed_at = time.monotonic()
                break
            if data == b"":
                closed_at = time.monotonic()
                break
        assert closed_at is not None, "the trickling client was never cut off"
        assert closed_at - t0 <= health.CONNECTION_DEADLINE_S + 3
        silent.settimeout(health.READ_TIMEOUT_S + 3)
        assert silent.recv(1024) == b""  # closed unanswered by the read timeout
        assert time.monotonic() - t0 <= health.CONNECTION_DEADLINE_S + 3
    finally:
        silent.close()
        trickle.close()


def test_connections_beyond_the_bound_are_refused_not_queued(server: HealthServer) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(health.MAX_CONNECTIONS)]
    try:
        # every slot taken: the server has accepted each held connection
        wait_until(lambda: server._server._slots._value == 0, 30, "the server to hold every slot")
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        try:
            reply = extra.recv(1024)
        except ConnectionResetError:
            reply = b""
        extra.close()
        assert reply == b"", reply  # closed unanswered while every slot is held
    finally:
        for s in held:
            s.close()
    # slots come back once the holders go
    wait_until(lambda: raw(server.port, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200"), 10,
               "the slots to be released")


def test_a_client_that_hangs_up_before_the_answer_leaves_no_traceback(
    server: HealthServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A scrape that timed out (Prometheus closed the connection) made the answer's write fail with
    BrokenPipe/ConnectionReset, and socketserver printed a traceback to the daemon's stderr."""
    import struct

    def slow_metrics(registry: CollectorRegistry) -> bytes:
        time.sleep(0.5)  # the client is gone by now
        return b"# x\n" * 2_000_000

    monkeypatch.setattr(health, "generate_latest", slow_metrics)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    s.close()
    time.sleep(1.5)
    assert raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.0 200")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
