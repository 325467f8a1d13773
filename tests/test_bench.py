"""`featsieve bench` suites run and report what docs/performance.md quotes (rates are not asserted)."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import featsieve


def _bench(*args: str, timeout: float = 900) -> dict:
    out = featsieve("bench", *args, "--json", timeout=timeout)
    return dict(orjson.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_scale_suite_memory_is_flat_in_stream_length() -> None:
    result = _bench("scale", "--size", "tiny")
    assert result["suite"] == "scale"
    short, long = result["length"]
    assert long["rows"] == 10 * short["rows"]
    # bounded by configuration: fields x live blocks x (max_values + tail) x (8 key + 16 count) bytes
    mi = result["mi"]
    bound = (40 + long["pairs"]) * mi["blocks"] * (mi["max_values"] + mi["tail_buckets"]) * 24 / 1e6
    assert long["state_mb"] <= bound == long["bound_mb"]
    assert short["live_blocks"] == long["live_blocks"] == mi["blocks"]  # both span the whole horizon
    assert long["state_mb"] <= 1.05 * short["state_mb"]
    assert result["rss_growth_long_vs_short"] < 1.3
    for sweep in ("fields", "cardinality", "pairs"):
        assert len(result[sweep]) == 3 and all(r["update_rows_per_s"] > 0 for r in result[sweep])


def test_mi_suite_reports_its_rate() -> None:
    result = _bench("mi", "--size", "tiny")
    assert result["suite"] == "mi" and result["update_rows_per_s"] > 0 and result["rows"] == 20_000


@pytest.mark.broker
@pytest.mark.slow
def test_e2e_suite_measures_the_daemon_against_the_consumer_ceiling(bootstrap: str) -> None:
    result = _bench("e2e", "--size", "tiny", "--bootstrap", bootstrap)
    # the shape and the arithmetic of the report; how fast is the benchmark's business
    # (docs/performance.md quotes it), never a test's: a ratio bound fails on a busy machine
    assert result["suite"] == "e2e" and result["events"] > 0
    rates = {k: v for k, v in result.items() if k.endswith("events_per_s") and isinstance(v, float)}
    assert {"ceiling_events_per_s", "ceiling_fast_reader_events_per_s", "daemon_gates_off_events_per_s",
            "daemon_gates_on_events_per_s"} <= set(rates) and all(v > 0 for v in rates.values()), rates
    assert result["ratio"] == result["daemon_gates_off_events_per_s"] / result["ceiling_events_per_s"]
    assert result["ratio_gates_on"] == result["daemon_gates_on_events_per_s"] / result["ceiling_events_per_s"]
    assert result["ratio_vs_fast_reader_ceiling"] == (result["daemon_gates_off_events_per_s"]
                                                      / result["ceiling_fast_reader_events_per_s"])


def test_unknown_suite_is_refused() -> None:
    proc = featsieve("bench", "nope", check=False)
    assert proc.returncode == 2 and "unknown suite" in proc.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_instances_suite_runs_one_two_and_three_group_instances(bootstrap: str) -> None:
    """`bench instances`: its report's shape and arithmetic, not its speed."""
    result = _bench("instances", "--size", "tiny", "--bootstrap", bootstrap)
    assert result["suite"] == "instances" and result["events"] > 0 and result["partitions"] == 6
    runs = result["runs"]
    assert [r["instances"] for r in runs] == [1, 2, 3]
    for r in runs:
        assert r["seconds"] > 0 and r["events_per_s"] == result["events"] / r["seconds"]
        assert r["ratio"] == r["events_per_s"] / runs[0]["events_per_s"]
        # group mode publishes every shard's state: some bytes per event, in each run
        assert r["stats_bytes"] > 0 and r["stats_bytes_per_event"] == r["stats_bytes"] / result["events"]
    assert runs[0]["ratio"] == 1.0 and result["ratio"] == runs[-1]["ratio"]
