"""Offline scoring of files: CSV and JSONL, streamed, with the daemon's MI core."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from daemon.tools.tabular import read_batches, score_file
from tests.conftest import featsieve


def _csv(path: Path, n: int = 20_000, seed: int = 0, bad_labels: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    strong = rng.integers(0, 8, n)
    noise = rng.integers(0, 30, n)
    y = (rng.random(n) < np.where(strong < 2, 0.15, 0.03)).astype(int)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["strong", "noise", "request_id", "clicked"])
        for i in range(n):
            w.writerow([f"s{strong[i]}", noise[i], f"r{seed}-{i}", y[i]])
        for i in range(bad_labels):
            w.writerow(["s1", 1, f"bad{i}", "maybe"])
    return path


def test_csv_ranks_signal_first_and_id_like_at_chance(tmp_path: Path) -> None:
    result = score_file(str(_csv(tmp_path / "a.csv", bad_labels=7)), label="clicked")
    fields = {f["name"]: f for f in result["fields"]}
    assert result["rows"] == 20_000 and result["skipped_rows"] == {"bad_label": 7}
    assert result["fields"][0]["name"] == "strong" and fields["strong"]["z"] > 10
    assert fields["request_id"]["mi"] > 0.05 and abs(fields["request_id"]["z"]) < 3
    assert fields["request_id"]["score"] < 0.1 * fields["strong"]["score"]


def test_batching_does_not_change_the_scores(tmp_path: Path) -> None:
    path = str(_csv(tmp_path / "b.csv", n=5000))
    small = score_file(path, label="clicked", batch_rows=100)
    big = score_file(path, label="clicked", batch_rows=8192)
    assert small["fields"] == big["fields"]


def test_missing_label_column_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'label'.*columns: strong, noise, request_id, clicked"):
        list(read_batches(str(_csv(tmp_path / "c.csv", n=10)), "label"))


def test_jsonl_events_are_joined_like_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    featsieve("generate", "--preset", "small", "--impressions", "5000", "--event-rate", "5", "--seed", "2",
              "--output", str(path), "--ground-truth", str(tmp_path / "truth.json"))
    events = [orjson.loads(line) for line in path.read_text().splitlines()]
    shown = {e["id"]: e["ts"] for e in events if e["type"] == "impression"}
    impressions = len(shown)
    # positives: impressions with a click inside the 30-minute attribution window (the join's rule)
    clicked = {e["id"] for e in events
               if e["type"] == "click" and e["id"] in shown and 0 <= e["ts"] - shown[e["id"]] <= 1_800_000}
    with open(path, "a", encoding="utf-8") as f:
        f.write("not json\n")
    result = score_file(str(path), window_ms=1_800_000)
    assert result["rows"] == impressions and result["positives"] == len(clicked)
    assert result["skipped_rows"] == {"not_json": 1}
    truth = json.loads((tmp_path / "truth.json").read_text())
    top = result["fields"][0]["name"]
    assert top in truth["informative"]


def test_score_cli_json_and_table(tmp_path: Path) -> None:
    path = str(_csv(tmp_path / "d.csv", n=3000))
    out = featsieve("score", "--input", path, "--label", "clicked", "--pairs")
    result = orjson.loads(out.stdout)
    assert {f["name"] for f in result["fields"]} == {"strong", "noise", "request_id"}
    assert "pairs" in result
    table = featsieve("score", "--input", path, "--label", "clicked", "--format", "table").stdout
    assert "strong" in table and "request_id" in table
    bad = featsieve("score", "--input", path, check=False)
    assert bad.returncode == 2 and "--label" in bad.stderr


def _hashed(path: Path, reader: str, batch_rows: int = 7) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Field names (sorted), the hash of every (row, field), labels and row numbers: all batches."""
    from daemon.tools.tabular import encoded_batches
    from models.interning import Interner

    interner = Interner()
    if reader == "bytes":
        parts = list(encoded_batches(str(path), "y", interner, batch_rows))
        encs, ys, ts = zip(*parts, strict=True)
    else:
        batches = list(read_batches(str(path), "y", batch_rows))
        encs = tuple(interner.encode(b.features) for b in batches)
        ys, ts = tuple(b.labels for b in batches), tuple(b.ts for b in batches)
    fields = interner.fields
    width = len(fields)
    rows = np.concatenate([np.pad(e.hashes, ((0, 0), (0, width - e.hashes.shape[1])),
                                  constant_values=0) for e in encs])
    by_name = {f: rows[:, j] for j, f in enumerate(fields)}
    cols = sorted(by_name)
    return cols, np.stack([by_name[c] for c in cols], axis=1), np.concatenate(ys), np.concatenate(ts)


@pytest.mark.parametrize("tail", ["", 'q1,"a,b",1\n', "crlf\r\n"])
def test_csv_bytes_reader_hashes_like_the_row_reader(tmp_path: Path, tail: str) -> None:
    lines = ["a,b,y"] + [f"{'é' if i % 5 == 0 else ''}v{i % 3},{i if i % 4 else ''},{i % 2}" for i in range(40)]
    lines += [",,1", "x,y", "", "p,q,maybe", "p,q, true ", "w,z,TRUE"]
    text = "\n".join(lines) + "\n" + tail + "\n".join(["late,1,0", "last,,1"])  # no final newline
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode())
    from collections import Counter

    from daemon.tools.tabular import encoded_batches
    from models.interning import Interner

    fast, slow = Counter(), Counter()
    list(encoded_batches(str(path), "y", Interner(), 7, skipped=fast))
    list(read_batches(str(path), "y", 7, skipped=slow))
    assert fast == slow and fast["wrong_column_count"] >= 2 and fast["bad_label"] >= 1
    cols_f, h_f, y_f, t_f = _hashed(path, "bytes")
    cols_s, h_s, y_s, t_s = _hashed(path, "rows")
    assert cols_f == cols_s == ["a", "b"]
    np.testing.assert_array_equal(h_f, h_s)
    np.testing.assert_array_equal(y_f, y_s)
    np.testing.assert_array_equal(t_f, t_s)
