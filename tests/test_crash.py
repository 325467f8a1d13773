"""Crash-exact state: SIGKILL the daemon at seeded points (and inside a snapshot write),
restart it each time; the final state equals that of a run that was never killed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from connectors.state_store import SnapshotStore
from tests.conftest import BIN, ROOT, featsieve, kcat_read

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def run_args(bootstrap: str, unique: str, name: str, state: Path) -> list[str]:
    return [
        str(BIN / "featsieve"), "run", "--bootstrap", bootstrap,
        "--input-topics", f"{unique}.impressions,{unique}.clicks",
        "--group-id", f"{unique}-{name}", "--model-id", f"{unique}-{name}",
        "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
        "--state-dir", str(state), "--metrics-port", "0", "--gates", "false",
        "--checkpoint-interval-events", "3000", "--checkpoint-interval-s", "0.5",
        "--max-poll-records", "500", "--exit-at-end",
    ]


def assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Exact structural equality; NumPy arrays compared element by element."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def final_state(state: Path) -> dict[str, Any]:
    loaded = SnapshotStore(state).load_latest()
    assert loaded is not None
    return loaded.state


def last_mask(bootstrap: str, topic: str, model: str) -> dict[str, Any]:
    lines = [x for x in kcat_read(bootstrap, topic) if x.startswith(model + "\t")]
    return orjson.loads(lines[-1].split("\t", 1)[1])


def test_sigkill_at_random_points_gives_the_uninterrupted_state(bootstrap: str, unique: str, tmp_path: Path) -> None:
    featsieve(
        "generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "40000", "--event-rate", "20",
        "--input-topics", f"{unique}.impressions,{unique}.clicks", "--seed", "5",
    )
    clean = tmp_path / "clean"
    subprocess.run(run_args(bootstrap, unique, "clean", clean), check=True, capture_output=True, timeout=600, cwd=ROOT)

    crashed = tmp_path / "crashed"
    args = run_args(bootstrap, unique, "crashed", crashed)
    rng = random.Random(1234)
    kills = 0
    # one deterministic crash inside a snapshot write (half the temp file on disk) ...
    proc = subprocess.run(args, env={**os.environ, "FEATSIEVE_FAILPOINT": "snapshot_write:3"}, capture_output=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 137, proc.stderr[-2000:]
    kills += 1
    # ... then SIGKILL at seeded random moments, restarting each time: ~1 s of each run is start-up,
    # so a run gets 0.5-2.5 s of work and ten of them are not enough to finish the stream
    finished = False
    while kills < 12:
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        try:
            p.wait(timeout=rng.uniform(1.5, 3.5))
            finished = p.returncode == 0
            if finished:
                break
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
    if not finished:
        subprocess.run(args, check=True, capture_output=True, timeout=600, cwd=ROOT)
    assert kills >= 10, f"the stream was finished after {kills} kills: kill sooner"

    a, b = final_state(clean), final_state(crashed)
    assert [s["offsets"] for s in a["shards"]] == [s["offsets"] for s in b["shards"]]
    for sa, sb in zip(a["shards"], b["shards"], strict=True):
        assert_same(sa["mi"], sb["mi"], "mi")
        ja, jb = sa["join"], sb["join"]
        for counter in ("positives", "negatives"):
            assert ja["counters"][counter] == jb["counters"][counter], counter

    ma = last_mask(bootstrap, f"{unique}.masks", f"{unique}-clean")
    mb = last_mask(bootstrap, f"{unique}.masks", f"{unique}-crashed")
    assert {k: (v["keep"], v["score"]) for k, v in ma["fields"].items()} == {
        k: (v["keep"], v["score"]) for k, v in mb["fields"].items()
    }
