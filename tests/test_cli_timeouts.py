"""Timeouts honoured against the real broker: ``masks --get/--explain --timeout`` and ``run --duration``.

(The same commands against an unreachable bootstrap address are in tests/test_cli.py.) Each test
asserts a condition — the command returns within its timeout plus a start-up margin — not a speed.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import featsieve

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MARGIN_S = 7.0  # interpreter start-up and imports on a loaded machine (masks does not import torch)


def test_masks_get_on_a_missing_topic_stops_at_the_timeout(bootstrap: str, unique: str) -> None:
    t0 = time.monotonic()
    proc = featsieve("masks", "--get", "--bootstrap", bootstrap, "--mask-topic", f"{unique}.masks",
                     "--timeout", "3", check=False, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2 and "within --timeout 3 s" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert elapsed < 3 + MARGIN_S, elapsed


def test_masks_explain_honours_the_timeout(bootstrap: str, unique: str) -> None:
    t0 = time.monotonic()
    proc = featsieve("masks", "--explain", "f", "--bootstrap", bootstrap, "--mask-topic", f"{unique}.masks",
                     "--model-id", unique, "--timeout", "3", check=False, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1 and "no published mask" in proc.stderr, proc.stderr  # a result, not an error
    assert "Traceback" not in proc.stderr
    assert elapsed < 3 + MARGIN_S, elapsed


def test_run_duration_counts_from_start_and_masks_read_within_the_timeout(
        bootstrap: str, unique: str, tmp_path: Path) -> None:
    topics = f"{unique}.imp,{unique}.clk"
    featsieve("generate", "--preset", "small", "--impressions", "3000", "--bootstrap", bootstrap,
              "--input-topics", topics, "--timeout", "30")
    t0 = time.monotonic()
    proc = featsieve("run", "--bootstrap", bootstrap, "--input-topics", topics, "--mask-topic", f"{unique}.masks",
                     "--dlq-topic", f"{unique}.dlq", "--group-id", unique, "--model-id", unique,
                     "--state-dir", str(tmp_path / "state"), "--metrics-port", "0", "--no-gates",
                     "--mask-interval-s", "1", "--duration", "8", check=False, timeout=180)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 8 + 3 * MARGIN_S, elapsed  # run imports torch; the shutdown publishes and checkpoints
    t0 = time.monotonic()
    got = featsieve("masks", "--get", unique, "--bootstrap", bootstrap, "--mask-topic", f"{unique}.masks",
                    "--json", "--timeout", "10", timeout=120)
    assert time.monotonic() - t0 < 10 + MARGIN_S
    assert orjson.loads(got.stdout)["model_id"] == unique
    explained = featsieve("masks", "--explain", "f0", "--bootstrap", bootstrap, "--mask-topic", f"{unique}.masks",
                          "--model-id", unique, "--json", "--timeout", "10", check=False, timeout=120)
    assert explained.returncode in (0, 1) and "Traceback" not in explained.stderr
