"""The one HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``, nothing else.

Bounded so that no client can hold it: at most ``MAX_CONNECTIONS`` are served
at once (more are closed unanswered), each connection gets ``READ_TIMEOUT_S``
per read and ``CONNECTION_DEADLINE_S`` in total (a client that trickles its
request one byte at a time is cut off), the request line and headers are
limited by http.server (64 KiB line: 414, 100 headers: 431), bodies are never
read, one request per connection, and any other path or method is a 404/405
with no listing. Binds to ``metrics_addr`` (loopback unless configured).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
READ_TIMEOUT_S = 5.0
CONNECTION_DEADLINE_S = 10.0


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: refuse rather than queue without bound
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints a traceback to stderr for any error in a handler. A client that hung
        up before its answer was written (a scrape that timed out on a loaded machine) is routine:
        a debug line. Anything else is logged once, as an error of this server."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("client %s went away before its answer: %s", client_address[0], exc)
            return
        log.error("request from %s failed: %r", client_address[0], exc)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HealthServer:
    """Serves metrics from ``registry`` and health from ``readiness`` (returns (ok, reason))."""

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Callable[[], tuple[bool, str]],
        host: str = "127.0.0.1",
        port: int = 9400,
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_S  # per read of the request line and headers
            server_version = "featsieve"
            sys_version = ""

            def setup(self) -> None:
                super().setup()
                # a total deadline: the read timeout alone lets a trickling client stay forever
                self._deadline = threading.Timer(CONNECTION_DEADLINE_S, self._cut_off)
                self._deadline.daemon = True
                self._deadline.start()

            def _cut_off(self) -> None:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def finish(self) -> None:
                self._deadline.cancel()
                try:
                    super().finish()
                except OSError:
                    pass

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server_self.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok, reason = server_self.readiness()
                    self._send(200 if ok else 503, (reason + "\n").encode())
                else:
                    self._send(404, b"not found\n")

            do_HEAD = do_GET  # noqa: N815

            def _not_allowed(self) -> None:
                self._send(405, b"method not allowed\n")

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # no per-request logging

        self._server = _BoundedServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="featsieve-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
