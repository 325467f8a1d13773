"""The health server serves exactly three paths."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from daemon.http import HealthServer


@pytest.fixture
def server():
    registry = CollectorRegistry()
    Counter("featsieve_test_things", "x", registry=registry).inc(3)
    state = {"ready": (False, "no mask published yet")}
    srv = HealthServer(registry, lambda: state["ready"], host="127.0.0.1", port=0).start()
    yield srv, state
    srv.stop()


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_paths(server) -> None:
    srv, state = server
    assert get(srv.port, "/healthz") == (200, "ok\n")
    code, body = get(srv.port, "/metrics")
    assert code == 200 and "featsieve_test_things_total 3.0" in body
    assert get(srv.port, "/readyz") == (503, "no mask published yet\n")
    state["ready"] = (True, "ready")
    assert get(srv.port, "/readyz")[0] == 200
    for path in ("/", "/metrics/../etc", "/debug", "/favicon.ico", "/healthz/x"):
        assert get(srv.port, path)[0] == 404
    assert get(srv.port, "/metrics", method="POST")[0] == 405
