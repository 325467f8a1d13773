"""``featsieve run``: build the daemon, its metrics server, and run it."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry

from daemon.config import Settings
from daemon.http import HealthServer
from daemon.runloop import Daemon

log = logging.getLogger("featsieve")


def serve(
    settings: Settings,
    *,
    exit_at_end: bool = False,
    max_events: int | None = None,
    duration_s: float | None = None,
    registry: CollectorRegistry | None = None,
    reset_state: bool = False,
) -> int:
    """Run until stopped; returns the exit code. Only here is the global registry chosen."""
    registry = REGISTRY if registry is None else registry
    daemon = Daemon(settings, registry, exit_at_end=exit_at_end, max_events=max_events, duration_s=duration_s,
                    reset_state=reset_state)
    server = None
    if settings.metrics_port:
        # read at scrape time, like /readyz: Prometheus scrapes /metrics only, so a gauge set by
        # /readyz requests would stay at 0 (and FeatsieveNotReady would fire) wherever nothing probes it
        daemon.metrics.ready.set_function(lambda: 1.0 if daemon.readiness()[0] else 0.0)
        server = HealthServer(registry, daemon.readiness, host=settings.metrics_addr,
                              port=settings.metrics_port).start()
        log.info("metrics and health on http://%s:%d/metrics", settings.metrics_addr, server.port)
    try:
        return daemon.run()
    finally:
        if server is not None:
            server.stop()
