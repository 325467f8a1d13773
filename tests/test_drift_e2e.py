"""Drift end to end on the real broker: the published mask follows a change of the informative set.

One generated stream whose signal moves from one field to another halfway (the
generator's ``drift``: ``loses_signal`` carries signal only before, ``gains_signal``
only after). The stream goes to one topic in event-time order, so ``--max-events``
stops the daemon at a known point in event time. The daemon runs twice on the same
state: up to the drift, then to the end, re-evaluating the policy every 50 ms of
wall clock, so every change of evidence has a chance to show in a mask version.

The policy is the MI vote (``policy_mode = mi``): the daemon's default, the drop budget, keeps
a noise field MI cannot rule out (docs/policy.md), and this test is about following a change.
Gates are on, as by default: their state is checkpointed between the two runs and their
training shares the process with the loop, but they have no vote in this mode.

Claims checked: before the drift the mask keeps the field that will lose its signal
and drops the one that will gain it; after the drift both decisions flip, in a mask
whose watermark is within the configured MI horizon of the drift; the number of
versions stays small (no flapping); ``masks --follow`` prints the flips as a diff and
``masks --explain`` shows the field's history.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import orjson
import pytest

from tests.conftest import BIN, ROOT, featsieve, kcat_read, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

IMPRESSIONS = 120_000
EVENT_RATE = 5.0  # impressions per second of event time: the stream spans 6.7 h
BLOCK_S, BLOCKS = 1200, 6  # MI horizon: 2 h, shorter than the 3.3 h after the drift
MAX_VERSIONS = 12


def _events_before(path: Path, ts_ms: int) -> int:
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            if orjson.loads(line)["ts"] >= ts_ms:
                break
            n += 1
    return n


def test_mask_follows_drift_within_the_horizon_without_flapping(bootstrap: str, unique: str, tmp_path: Path) -> None:
    topic = f"{unique}.events"
    truth_path, file_path = tmp_path / "truth.json", tmp_path / "events.jsonl"
    gen = ("--preset", "default", "--impressions", str(IMPRESSIONS), "--event-rate", str(EVENT_RATE),
           "--drift-at", "0.5", "--seed", "5")
    featsieve("generate", *gen, "--output", str(file_path), "--ground-truth", str(truth_path))
    featsieve("generate", *gen, "--bootstrap", bootstrap, "--input-topics", topic)
    truth = json.loads(truth_path.read_text())
    loses, gains = truth["drift"]["loses_signal"], truth["drift"]["gains_signal"]
    drift_ts = int(truth["drift"]["approx_at_ts"])
    before = _events_before(file_path, drift_ts)
    assert 0 < before < IMPRESSIONS * 1.1

    common = ("--bootstrap", bootstrap, "--input-topics", topic, "--group-id", unique, "--model-id", unique,
              "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
              "--state-dir", str(tmp_path / "state"), "--metrics-port", "0",  # gates: the default, on
              "--mask-interval-s", "0.05", "--mi-block-s", str(BLOCK_S), "--mi-blocks", str(BLOCKS),
              # the threshold votes on MI: the default drop budget keeps a field whose pairs with
              # the wide informative fields cannot be counted (under-powered), and a closed gate
              # drops a field only once all its pairs were counted, which the pair rotation does
              # not do within this test's 2 h horizon (docs/policy.md); so the noise field that
              # gains signal would never have been dropped before the drift
              "--policy-mode", "mi")
    featsieve("run", *common, "--max-events", str(before))
    first = featsieve("masks", "--bootstrap", bootstrap, "--mask-topic", f"{unique}.masks", "--get", unique, "--json")
    pre = orjson.loads(first.stdout)
    assert pre["fields"][loses]["keep"], pre["fields"][loses]
    assert not pre["fields"][gains]["keep"], pre["fields"][gains]

    follow = subprocess.Popen(
        [str(BIN / "featsieve"), "masks", "--bootstrap", bootstrap, "--mask-topic", f"{unique}.masks",
         "--follow", unique], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follow.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def shown(version: int) -> bool:
        return any(line.startswith(f"--- model {unique} ") and line.split()[-1] == str(version) for line in list(lines))

    try:
        # the follower has read the topic to its end (it shows the latest mask) before the daemon adds to it
        wait_until(lambda: shown(pre["version"]), 60, f"the follower to show version {pre['version']}")
        featsieve("run", *common, "--exit-at-end")
        masks = [orjson.loads(line.split("\t", 1)[1]) for line in kcat_read(bootstrap, f"{unique}.masks")
                 if line.startswith(unique + "\t")]
        wait_until(lambda: shown(masks[-1]["version"]), 60, f"the follower to show version {masks[-1]['version']}")
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(timeout=30)
        reader.join(30)
    followed = "".join(lines)
    versions = [m["version"] for m in masks]
    assert versions == sorted(set(versions)), versions
    assert len(masks) <= MAX_VERSIONS, [(m["version"], m["watermark"]) for m in masks]

    final = masks[-1]["fields"]
    assert final[gains]["keep"] and not final[loses]["keep"], f"{gains}: {final[gains]}\n{loses}: {final[loses]}"
    flipped = next(m for m in masks if m["fields"][gains]["keep"] and not m["fields"][loses]["keep"])
    horizon_ms = BLOCK_S * BLOCKS * 1000
    assert drift_ts < flipped["watermark"] <= drift_ts + horizon_ms + BLOCK_S * 1000, (
        flipped["watermark"] - drift_ts, horizon_ms)

    assert f"{gains}: dropped -> kept" in followed or f"{gains}: drop -> keep" in followed, followed
    explained = featsieve("masks", "--bootstrap", bootstrap, "--mask-topic", f"{unique}.masks",
                          "--model-id", unique, "--explain", gains, "--json")
    history = orjson.loads(explained.stdout)
    keeps = [h["keep"] for h in history]
    assert keeps[-1] is True and False in keeps, keeps  # dropped before the drift, kept after it
    assert [h["version"] for h in history] == sorted(h["version"] for h in history)
    assert all(h["reason"] for h in history)
