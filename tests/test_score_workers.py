"""``featsieve score --workers``: a CSV counted in byte ranges by several processes scores exactly as one pass."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import daemon.tools.tabular as tabular
from daemon.tools.tabular import csv_ranges, score_file
from tests.conftest import featsieve

TIMING = ("seconds", "rows_per_s", "workers")


def _write(path: Path, n: int = 6000, seed: int = 3, final_newline: bool = True) -> Path:
    """A CSV with signal, noise, an id-like column, a column that is empty in the first third
    (its first value comes late), a column that is always empty, and some bad rows."""
    rng = np.random.default_rng(seed)
    strong = rng.integers(0, 6, n)
    y = (rng.random(n) < np.where(strong < 2, 0.2, 0.04)).astype(int)
    lines = ["strong,noise,rid,late,empty,y"]
    for i in range(n):
        late = f"l{(strong[i] + rng.integers(0, 2)) % 4}" if i > n // 3 and i % 3 else ""
        lines.append(f"s{strong[i]},{rng.integers(0, 40)},r{i},{late},,{y[i]}")
        if i % 997 == 0:
            lines.append("s1,2,bad,,,maybe")  # not a label
        if i % 1511 == 0:
            lines.append("s1,2")  # wrong number of columns
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_text(text, encoding="utf-8")
    return path


def _strip(result: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in result.items() if k not in TIMING}, sort_keys=True)


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tabular, "_MIN_RANGE_BYTES", 1 << 10)  # split even a small file


@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.usefixtures("small_ranges")
def test_workers_give_exactly_the_single_process_result(tmp_path: Path, final_newline: bool) -> None:
    path = str(_write(tmp_path / "a.csv", final_newline=final_newline))
    one = score_file(path, label="y", pairs=True, workers=1)
    for workers in (2, 3):
        many = score_file(path, label="y", pairs=True, workers=workers)
        assert many["workers"] == workers and one["workers"] == 1
        assert _strip(many) == _strip(one)
    names = [f["name"] for f in one["fields"]]
    assert names[0] == "strong" and "late" in names and "empty" not in names  # no value: not reported
    assert one["skipped_rows"] == {"bad_label": 7, "wrong_column_count": 4}
    late = next(f for f in one["fields"] if f["name"] == "late")
    assert late["examples"] == one["rows"]  # empty cells before its first value count as missing


def test_a_late_field_does_not_depend_on_batching(tmp_path: Path) -> None:
    path = str(_write(tmp_path / "b.csv"))
    assert _strip(score_file(path, label="y", batch_rows=50)) == _strip(score_file(path, label="y"))


@pytest.mark.usefixtures("small_ranges")
def test_ranges_end_at_line_ends_and_cover_the_data(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv")
    data = path.read_bytes()
    header = data.index(b"\n") + 1
    ranges = csv_ranges(str(path), 4)
    assert ranges is not None and len(ranges) == 4
    assert ranges[0][0] == header and ranges[-1][1] == len(data)
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert end == start and data[end - 1 : end] == b"\n"
    assert csv_ranges(str(path), 1) == [(header, len(data))]


@pytest.mark.usefixtures("small_ranges")
def test_files_that_cannot_be_cut_are_read_by_one_process(tmp_path: Path) -> None:
    quoted = tmp_path / "q.csv"
    quoted.write_bytes(_write(tmp_path / "plain.csv").read_bytes() + b'"s,1",3,q,,,1\n')
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(_write(tmp_path / "plain2.csv").read_bytes().replace(b"\n", b"\r\n"))
    packed = tmp_path / "p.csv.gz"
    packed.write_bytes(gzip.compress(_write(tmp_path / "plain3.csv").read_bytes()))
    for path in (quoted, crlf, packed):
        assert csv_ranges(str(path), 2) is None
        one, two = score_file(str(path), label="y", workers=1), score_file(str(path), label="y", workers=2)
        assert two["workers"] == 1 and _strip(one) == _strip(two)
    assert score_file(str(crlf), label="y")["fields"] == score_file(str(tmp_path / "plain2.csv"), label="y")["fields"]


def test_small_files_and_header_only_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", n=200)
    assert score_file(str(path), label="y", workers=2)["workers"] == 1  # below one range's size
    empty = tmp_path / "e.csv"
    empty.write_text("a,b,y\n")
    assert csv_ranges(str(empty), 2) == []
    result = score_file(str(empty), label="y", workers=2)
    assert result["rows"] == 0 and result["fields"] == []
    with pytest.raises(ValueError, match="workers"):
        score_file(str(path), label="y", workers=0)


def test_score_cli_workers_flag(tmp_path: Path) -> None:
    path = str(_write(tmp_path / "f.csv", n=2000))
    one = orjson.loads(featsieve("score", "--input", path, "--label", "y", "--workers", "1").stdout)
    default = orjson.loads(featsieve("score", "--input", path, "--label", "y").stdout)
    assert one["fields"] == default["fields"] and one["workers"] == 1
    bad = featsieve("score", "--input", path, "--label", "y", "--workers", "0", check=False)
    assert bad.returncode == 2 and "--workers" in bad.stderr
