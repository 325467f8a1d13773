"""A real Prometheus scrapes a running daemon; its HTTP API shows lag, mask version and events."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, ROOT, featsieve, free_port, http_get, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.prometheus, pytest.mark.slow]




def query(prom_port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    return doc["data"]["result"]




def _load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheus_scrapes_the_daemon(bootstrap: str, unique: str, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not installed (scripts/install-tools installs it)"
    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "30000",
              "--event-rate", "5", "--input-topics", topics)
    metrics_port, prom_port = free_port(), free_port()
    daemon = subprocess.Popen(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics, "--group-id", unique,
         "--model-id", unique, "--mask-topic", f"{unique}.masks", "--state-dir", str(tmp_path / "state"),
         "--metrics-port", str(metrics_port), "--gates", "false", "--mask-interval-s", "1",
         "--attribution-window-s", "120", "--duration", "150"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: featsieve\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    prom = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        version = events = lag = up = ready = []

        def scraped() -> bool:
            nonlocal version, events, lag, up, ready
            try:
                up = query(prom_port, 'up{job="featsieve"}')
                version = query(prom_port, "featsieve_mask_version")
                events = query(prom_port, 'sum(featsieve_events_total{outcome="ok"})')
                lag = query(prom_port, "featsieve_consumer_lag_records")
                ready = query(prom_port, "featsieve_ready")  # nothing calls /readyz before this
            except OSError:
                return False
            return bool(up and version and float(version[0]["value"][1]) >= 1 and events
                        and float(events[0]["value"][1]) >= 30000 and lag and ready and ready[0]["value"][1] == "1")

        try:
            wait_until(scraped, 120, "Prometheus to have scraped a ready daemon with a mask", interval=1)
        except AssertionError:
            pass  # the assertions below say what is missing
        assert up and up[0]["value"][1] == "1", up
        assert version and float(version[0]["value"][1]) >= 1, version
        assert events and float(events[0]["value"][1]) >= 30000, events
        assert lag and all(float(r["value"][1]) >= 0 for r in lag), lag
        assert ready and ready[0]["value"][1] == "1", ready
        assert {r["metric"]["topic"] for r in lag} == set(topics.split(","))
        code, body = http_get(f"http://127.0.0.1:{metrics_port}/readyz")
        assert code == 200, body
        # the dashboard's own queries, asked of this Prometheus and drawn (scripts/render_dashboard.py)
        # a few more scrapes, so rate() over the dashboard's interval has two points
        def scrapes() -> float:
            got = query(prom_port, 'count_over_time(up{job="featsieve"}[1h])')
            return float(got[0]["value"][1]) if got else 0.0

        done = scrapes()
        wait_until(lambda: scrapes() >= done + 4, 60, "four more scrapes")
        render = _load_script("render_dashboard")
        png = tmp_path / "dashboard.png"
        empty = render.render(f"http://127.0.0.1:{prom_port}", 2.0, png, "10s", allow_empty=True)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        core = {"Ready", "Mask version", "Total lag", "Events/s by type and outcome", "Fields kept / dropped",
                "Consumer lag (records) per partition", "Field score (cardinality-corrected MI)"}
        assert not core & set(empty), sorted(core & set(empty))
    finally:
        prom.terminate()
        prom.wait(10)
        daemon.terminate()
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err[-3000:]
    assert "featsieve stopped" in err
