"""`featsieve bench score` without OutRank: both files are built and scored; the rules are the documented ones."""

from __future__ import annotations

import pytest

from daemon.config import load_settings
from daemon.tools.bench_score import (
    DATASETS,
    agreement,
    clearly_informative_outrank,
    outrank_threshold,
    suite_score,
)


@pytest.mark.slow
def test_score_suite_builds_and_scores_both_files_without_outrank() -> None:
    report = suite_score(load_settings(), "tiny", None, with_outrank=False, workers=2,
                         rows={"default": 6000, "clear": 6000})
    assert report["outrank"] == "skipped" and set(report["datasets"]) == set(DATASETS)
    for name, part in report["datasets"].items():
        assert part["preset"] == name and part["rows"] == 6000 and part["fields"] == 39
        assert part["featsieve_workers_same_result"]
        assert part["featsieve_rows_per_s"] > 0 and part["featsieve_cli_rows_per_s"] > 0
        assert "ratio" not in part and "agreement" not in part
    clear = report["datasets"]["clear"]
    assert clear["base_ctr"] == 0.1 and clear["informative_above_noise"]
    for part in report["datasets"].values():  # nothing without signal is declared informative
        assert set(part["clearly_informative_featsieve"]) <= {*part["truth_informative"], "site_copy"}


def test_outrank_rule_and_agreement() -> None:
    scores = {"a": 0.02, "b": 0.011, "c": 0.0105, "n1": 0.001, "n2": -0.0005, "n3": 0.0}
    null = ["n1", "n2", "n3"]
    assert outrank_threshold(scores, null) == pytest.approx(0.002)  # 0.001 + max(0.001 - 0, 0.001)
    theirs = clearly_informative_outrank(scores, null)
    assert theirs == ["a", "b", "c"]
    ours_scores = {"a": 0.03, "b": 0.010, "c": 0.0104}
    result = agreement(["a", "c", "b"], theirs, ours_scores, scores)
    assert result["agree"] and result["discordant_pairs"][0]["near_tie"]  # b, c: a near-tie
    worse = agreement(["a", "c"], theirs, ours_scores, scores)
    assert not worse["agree"] and worse["only_outrank"] == ["b"]
