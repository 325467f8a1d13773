"""The dashboard against what a running daemon really exports (real broker, gates on).

Every featsieve_ family on a live /metrics is shown by a dashboard panel or listed, with its
reason, in tests.test_deploy_static.NOT_ON_DASHBOARD; and the live families are exactly the ones
daemon.metrics declares, so the static tests (which read daemon.metrics) see the same list.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import featsieve_version
from tests.conftest import BIN, ROOT, featsieve, free_port, http_get
from tests.test_deploy_static import (
    NOT_ON_DASHBOARD,
    _dashboard_families,
    _families,
    _registry_exposition,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_exported_metric_is_on_the_dashboard_or_listed(bootstrap: str, unique: str, tmp_path: Path) -> None:
    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "20000",
              "--event-rate", "5", "--input-topics", topics, "--log-level", "WARNING")
    port = free_port()
    started = time.time()
    daemon = subprocess.Popen(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topics, "--group-id", unique,
         "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
         "--state-dir", str(tmp_path / "state"), "--metrics-port", str(port), "--mask-interval-s", "1",
         "--checkpoint-interval-s", "2", "--gate-window", "2000", "--attribution-window-s", "60",
         "--duration", "180", "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    text = ""
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            time.sleep(1)
            assert daemon.poll() is None, daemon.communicate()[1][-3000:]
            code, text = http_get(f"http://127.0.0.1:{port}/metrics")
            if code != 200:
                continue
            v = _values(text)
            if (v.get(("featsieve_mask_version", ()), 0) >= 1
                    and v.get(("featsieve_last_checkpoint_timestamp_seconds", ()), 0) > 0
                    and v.get(("featsieve_gate_examples_total", ()), 0) > 0):
                break
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err[-3000:]
    live = _families(text)
    assert live == _families(_registry_exposition()), live ^ _families(_registry_exposition())
    missing = live - _dashboard_families() - set(NOT_ON_DASHBOARD)
    assert not missing, f"exported but on no panel and not in NOT_ON_DASHBOARD: {sorted(missing)}"
    v = _values(text)
    assert v[("featsieve_build_info", (("version", featsieve_version()),))] == 1.0
    assert v[("featsieve_instance_info", (("coordination", "single"), ("group", unique), ("model", unique)))] == 1.0
    assert started <= v[("featsieve_last_mask_publish_timestamp_seconds", ())] <= time.time()
    assert started <= v[("featsieve_last_checkpoint_timestamp_seconds", ())] <= time.time()
    assert v[("featsieve_dead_letters_total", (("reason", "not_json"),))] == 0.0  # zero, yet exported
    lag = {labels for (name, labels) in v if name == "featsieve_consumer_lag_records"}
    assert {dict(labels)["topic"] for labels in lag} == set(topics.split(","))
    assert all(dict(labels)["group"] == unique for labels in lag)
