"""Pure interactions are found: offline ``score --pairs`` scores every pair, online the candidates rotate.

The generator's XOR pair carries no signal in either field alone, so a pair search limited to the
top single fields (the daemon before the drop budget) never scores it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.config import load_settings
from daemon.settings_map import mi_config_from, policy_config_from
from daemon.tools.synthetic import GeneratorConfig, labelled_examples
from models.evidence import build_evidence
from models.interning import EncodedBatch, Interner
from models.mi import MIState
from models.policy import MaskPolicy

DAY_MS = 86_400_000


@pytest.mark.slow
def test_score_pairs_finds_the_xor_pair_with_default_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    assert main(["generate", "--output", str(events), "--impressions", "40000", "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["score", "--input", str(events), "--pairs"]) == 0
    out = json.loads(capsys.readouterr().out)
    fields = {f["name"]: f for f in out["fields"]}
    assert abs(fields["xor_a"]["z"]) < 4 and abs(fields["xor_b"]["z"]) < 4  # nothing alone
    n = len(fields)
    assert len(out["pairs"]) == n * (n - 1) // 2  # every pair of the 39 fields
    best = max(out["pairs"], key=lambda p: p["gain_z"])
    assert best["fields"] == ["xor_a", "xor_b"] and best["gain_z"] > 20


def _day_of_default_stream(rotate: bool) -> tuple[MIState, list[str]]:
    """One day of event time of the default preset through the daemon's MI state and settings."""
    settings = load_settings(env={})
    config = GeneratorConfig(seed=11, n_impressions=60_000, event_rate=60_000 / 84_000)  # ~23.3 h
    data = labelled_examples(config)
    interner = Interner()
    cfg = mi_config_from(settings)
    state = MIState(cfg if rotate else replace(cfg, pairs_rotate=False))
    step = 2000
    for lo in range(0, len(data), step):
        rows = [dict(zip(data.names, r, strict=True)) for r in data.rows[lo : lo + step]]
        batch: EncodedBatch = interner.encode(rows)
        state.update(batch, data.labels[lo : lo + step], data.ts[lo : lo + step])
    assert int(data.ts[-1] - data.ts[0]) <= DAY_MS
    return state, data.names


@pytest.mark.slow
def test_the_daemon_finds_the_xor_pair_within_its_first_day_of_event_time() -> None:
    state, names = _day_of_default_stream(rotate=True)
    assert len(names) == 39  # 741 pairs: far more than max_pairs
    assert ("xor_a", "xor_b") in state.pairs
    scores, pairs = state.scores_and_pairs()
    xor = next(p for p in pairs if p.fields == ("xor_a", "xor_b"))
    assert xor.gain_z > 6
    settings = load_settings(env={})
    decision = MaskPolicy(policy_config_from(settings)).update(build_evidence(scores, pairs), "none")
    assert (decision.fields["xor_a"].keep, decision.fields["xor_a"].reason) == (True, "pair_with:xor_b")
    assert (decision.fields["xor_b"].keep, decision.fields["xor_b"].reason) == (True, "pair_with:xor_a")


@pytest.mark.slow
def test_without_rotation_the_pair_is_never_scored() -> None:
    """The control: candidates from the top single fields alone never include the XOR pair."""
    state, _ = _day_of_default_stream(rotate=False)
    assert ("xor_a", "xor_b") not in state.pairs
    assert all(p.fields != ("xor_a", "xor_b") for p in state.pair_scores())
    assert np.isfinite([p.gain for p in state.pair_scores()]).all()
