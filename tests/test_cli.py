"""The command line's contract (docs/cli.md): user errors are one line and exit 2, never a traceback;
--version; grouped --help; --flag/--no-flag booleans (old --flag false still works); input formats;
progress on stderr only when asked; OutRank-style TSV; cardinality flagged when estimated."""

from __future__ import annotations

import argparse
import csv
import gzip
import re
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import orjson
import pytest

import daemon.tools.tabular as tabular
from daemon.cli import _parser
from daemon.config import SETTING_GROUPS, SETTINGS, SETTINGS_BY_NAME, load_settings
from daemon.tools.bench_score import parse_outrank_ranking
from tests.conftest import featsieve

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connection refused at once


def _csv(path: Path, n: int = 5000, seed: int = 0, label_values: tuple[str, str] = ("0", "1")) -> Path:
    rng = np.random.default_rng(seed)
    strong = rng.integers(0, 6, n)
    y = rng.random(n) < np.where(strong < 2, 0.2, 0.04)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["strong", "noise", "clicked"])
        for i in range(n):
            w.writerow([f"s{strong[i]}", int(rng.integers(0, 30)), label_values[int(y[i])]])
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    good = _csv(d / "good.csv")
    out = {"good": good, "dir": d}
    (d / "good.txt").write_bytes(good.read_bytes())  # a CSV not named .csv
    out["goodtxt"] = d / "good.txt"
    out["ratio"] = _csv(d / "ratio.csv", label_values=("0.1", "0.7"))  # a label that is not 0/1
    out["three"] = d / "three.csv"
    out["three"].write_text("a,clicked\n" + "".join(f"{i % 5},{i % 3}\n" for i in range(3000)))
    out["binary"] = d / "blob.dat"
    out["binary"].write_bytes(bytes(range(256)) * 40)
    out["latin1"] = d / "latin1.csv"
    out["latin1"].write_bytes(b"a,clicked\n" + "é,1\n".encode("latin-1") * 10)
    out["emptycsv"] = d / "empty.csv"
    out["emptycsv"].write_text("")
    out["headeronly"] = d / "header.csv"
    out["headeronly"].write_text("a,clicked\n")
    out["truncgz"] = d / "trunc.csv.gz"
    out["truncgz"].write_bytes(gzip.compress(good.read_bytes())[:5000])
    out["junkgz"] = d / "junk.csv.gz"
    out["junkgz"].write_bytes(b"not gzip at all\n" * 100)
    out["notjson"] = d / "truth.json"
    out["notjson"].write_text("{not json")
    out["badtoml"] = d / "bad.toml"
    out["badtoml"].write_text("bootstrap = [unclosed\n")
    out["wrongtoml"] = d / "wrong.toml"
    out["wrongtoml"].write_text("gates = 'perhaps'\n")
    out["empty_jsonl"] = d / "events.jsonl"
    out["empty_jsonl"].write_text("this is not json\nnor this\n")
    return out


# (subcommand args, needle in the one-line error); {name} is replaced with the path of files[name]
BAD = [
    ([], "required: COMMAND"),
    (["nosuch"], "invalid choice"),
    # run
    (["run", "--duration", "-1"], "--duration"),
    (["run", "--duration", "nan"], "--duration"),
    (["run", "--max-events", "0"], "--max-events"),
    (["run", "--gates", "perhaps"], "gates"),
    (["run", "--no-gates", "false"], "--no-gates takes no value"),
    (["run", "--bootstrap", "no-port"], "bootstrap"),
    (["run", "--config", "/nonexistent/featsieve.toml"], "not found"),
    (["run", "--config", "{badtoml}"], "not valid TOML"),
    (["run", "--config", "{wrongtoml}"], "invalid setting gates"),
    (["run", "--config", "{dir}"], "--config"),
    (["run", "--min-z", "1", "--exit-z", "3"], "exit_z"),
    (["run", "--state-dir", "{good}/x", "--bootstrap", UNREACHABLE, "--duration", "5"], "Not a directory"),
    (["run", "--metrics-addr", "192.0.2.1", "--metrics-port", "9", "--bootstrap", UNREACHABLE, "--duration", "5"],
     "cannot listen on 192.0.2.1:9"),
    # generate
    (["generate", "--impressions", "-5"], "--impressions"),
    (["generate", "--preset", "huge", "--output", "{dir}/x.jsonl"], "unknown preset"),
    (["generate", "--drift-at", "2"], "--drift-at"),
    (["generate", "--impressions", "10", "--output", "/nonexistent/dir/x.jsonl"], "/nonexistent/dir/x.jsonl"),
    (["generate", "--impressions", "10", "--ground-truth", "/nonexistent/dir/t.json", "--output", "{dir}/y.jsonl"],
     "/nonexistent/dir/t.json"),
    (["generate", "--impressions", "10", "--bootstrap", UNREACHABLE, "--timeout", "2"], "cannot reach Kafka"),
    # score
    (["score"], "--input"),
    (["score", "--input", "/nonexistent.csv", "--label", "clicked"], "no such input file"),
    (["score", "--input", "{dir}", "--label", "clicked"], "is not a file"),
    (["score", "--input", "{good}"], "--label"),
    (["score", "--input", "{good}", "--label", "nope"], "label column 'nope' is not in"),
    (["score", "--input", "{ratio}", "--label", "clicked"], "not a 0/1 column"),
    (["score", "--input", "{three}", "--label", "clicked"], "not a 0/1 column"),
    (["score", "--input", "{goodtxt}", "--input-format", "jsonl"], "no line of"),
    (["score", "--input", "{empty_jsonl}"], "no line of"),
    (["score", "--input", "{binary}", "--label", "clicked"], "cannot tell the format"),
    (["score", "--input", "{emptycsv}", "--label", "clicked"], "no header row"),
    (["score", "--input", "{headeronly}", "--label", "clicked"], "no labelled example"),
    (["score", "--input", "{truncgz}", "--label", "clicked"], "not a complete gzip file"),
    (["score", "--input", "{junkgz}", "--label", "clicked"], "not a complete gzip file"),
    (["score", "--input", "{latin1}", "--label", "clicked"], "not UTF-8"),
    (["score", "--input", "{good}", "--label", "clicked", "--workers", "0"], "--workers"),
    (["score", "--input", "{good}", "--label", "clicked", "--format", "xml"], "--format"),
    (["score", "--input", "{good}", "--label", "clicked", "--input-format", "parquet"], "--input-format"),
    (["score", "--input", "{good}", "--label", "clicked", "--output-dir", "{dir}/o"], "--output-dir goes with"),
    (["score", "--input", "{good}", "--label", "clicked", "--mi-max-values", "3"], "mi_max_values"),
    # masks
    (["masks", "--timeout", "0"], "--timeout"),
    (["masks", "--get", "a", "--follow", "b"], "not allowed with"),
    (["masks", "--get", "--bootstrap", UNREACHABLE, "--timeout", "2"], "within --timeout 2 s"),
    (["masks", "--explain", "f", "--bootstrap", UNREACHABLE, "--timeout", "2"], "within --timeout 2 s"),
    (["masks", "--follow", "--bootstrap", UNREACHABLE, "--timeout", "2"], "within --timeout 2 s"),
    # bench
    (["bench"], "suite"),
    (["bench", "nosuite"], "invalid choice"),
    (["bench", "e2e", "--size", "huge"], "--size"),
    (["bench", "e2e", "--size", "tiny", "--bootstrap", UNREACHABLE], "cannot use Kafka at 127.0.0.1:1"),
    # evaluate
    (["evaluate", "--input", "/nonexistent.csv", "--label", "clicked"], "no such input file"),
    (["evaluate", "--input", "{good}", "--label", "nope"], "label column 'nope'"),
    (["evaluate", "--input", "{good}"], "--label"),
    (["evaluate", "--input", "{ratio}", "--label", "clicked"], "not a 0/1 column"),
    (["evaluate", "--input", "{binary}", "--label", "clicked"], "cannot tell the format"),
    (["evaluate", "--input", "{good}", "--label", "clicked", "--ground-truth", "{notjson}"], "not JSON"),
    (["evaluate", "--input", "{good}", "--label", "clicked", "--ground-truth", "/nonexistent/t.json"],
     "/nonexistent/t.json"),
    (["evaluate", "--input", "{good}", "--label", "clicked", "--ratios", "x"], "--ratios"),
    (["evaluate", "--input", "{good}", "--label", "clicked", "--threads", "0"], "--threads"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_every_subcommand_reports_bad_input_in_one_line_with_exit_2(
        files: dict[str, Path], argv: list[str], needle: str) -> None:
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    proc = featsieve(*args, check=False, timeout=120, env={"FEATSIEVE_STATE_DIR": str(files["dir"] / "state")})
    err = proc.stderr
    assert "Traceback" not in err + proc.stdout, err
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("featsieve"), err
    assert needle in lines[0], err


def test_every_subcommand_has_help_and_is_in_the_table() -> None:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    tested = {argv[0] for argv, _ in BAD if argv and argv[0] in commands}
    assert tested == commands  # a new subcommand must join the bad-input table
    for name in commands:
        assert featsieve(name, "--help").returncode == 0


def test_version_comes_from_the_package_metadata() -> None:
    out = featsieve("--version")
    assert out.stdout.strip() == f"featsieve {metadata.version('featsieve')}"


def test_run_help_is_grouped_by_the_settings_table() -> None:
    named = [n for _, members in SETTING_GROUPS for n in members]
    assert sorted(named) == sorted(SETTINGS_BY_NAME)  # every setting in exactly one section
    text = featsieve("run", "--help").stdout
    sections = re.split(r"\n(?=\S[^\n]*:\n)", text)
    by_title = {s.split(":\n", 1)[0]: s for s in sections}
    for title, members in SETTING_GROUPS:
        body = by_title[f"{title} settings"]
        for name in members:
            setting = SETTINGS_BY_NAME[name]
            if setting.kind != "secret":
                assert setting.flag in body, (title, name)
    for title in ("Kafka settings", "MI settings", "policy settings", "gates settings", "security settings",
                  "limits (inputs beyond are dead-lettered) settings"):
        assert title in by_title
    assert "--gates, --no-gates" in text


@pytest.mark.parametrize(("argv", "expected"), [
    ([], True),
    (["--gates"], True),
    (["--no-gates"], False),
    (["--gates", "false"], False),  # the old spelling
    (["--gates=false"], False),
    (["--gates", "no"], False),
    (["--no-gates", "--gates"], True),  # the last one wins
    (["--gates", "true"], True),
])
def test_boolean_flags_and_the_old_spelling(argv: list[str], expected: bool) -> None:
    args = _parser().parse_args(["run", *argv])
    assert load_settings(args, env={}).gates is expected


def test_every_boolean_setting_has_both_forms() -> None:
    for setting in SETTINGS:
        if setting.kind != "bool":
            continue
        off = _parser().parse_args(["run", "--no-" + setting.flag[2:]])
        on = _parser().parse_args(["run", setting.flag])
        assert getattr(load_settings(off, env={}), setting.name) is False
        assert getattr(load_settings(on, env={}), setting.name) is True


# ------------------------------------------------------------------ input formats
def test_format_is_found_by_extension_then_content(files: dict[str, Path], tmp_path: Path) -> None:
    by_name = orjson.loads(featsieve("score", "--input", str(files["good"]), "--label", "clicked").stdout)
    sniffed = orjson.loads(featsieve("score", "--input", str(files["goodtxt"]), "--label", "clicked").stdout)
    assert sniffed["format"] == "csv" and sniffed["fields"] == by_name["fields"]
    events = tmp_path / "events.log"  # JSONL not named .jsonl
    featsieve("generate", "--preset", "small", "--impressions", "3000", "--output", str(events))
    assert tabular.input_format(str(events)) == "jsonl"
    assert tabular.input_format(str(files["good"]), "jsonl") == "jsonl"  # declared wins
    with pytest.raises(tabular.InputError, match="blob.dat"):
        tabular.input_format(str(files["binary"]))


def test_a_few_bad_labels_are_skipped_and_reported(tmp_path: Path) -> None:
    path = _csv(tmp_path / "few.csv", n=5000)
    with open(path, "a") as fh:
        fh.write("s1,3,maybe\n" * 10)  # 0.2 %: below MAX_BAD_LABEL_SHARE
    proc = featsieve("score", "--input", str(path), "--label", "clicked")
    assert orjson.loads(proc.stdout)["skipped_rows"] == {"bad_label": 10}
    assert "10 bad_label" in proc.stderr


# ------------------------------------------------------------------ progress
def test_progress_counts_every_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tabular, "_MIN_RANGE_BYTES", 1 << 12)  # several ranges even for a small file
    path = _csv(tmp_path / "p.csv", n=20_000)
    result = tabular.score_file(str(path), label="clicked", workers=3, progress=True)
    err = capsys.readouterr().err
    assert result["workers"] == 3
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    size = path.stat().st_size
    assert f"{result['rows']:,} rows" in last, last  # all workers' rows, not the first range's
    assert "100%" in last and "/s" in last, last  # total and rate
    assert f"{size / 1024:.0f}k" in last or f"{size / 1024:.1f}k" in last, (last, size)


def test_progress_only_when_asked_or_on_a_terminal(files: dict[str, Path]) -> None:
    base = ("score", "--input", str(files["good"]), "--label", "clicked")
    quiet = featsieve(*base)  # stderr is a pipe here: no bar
    assert quiet.stderr == "" and orjson.loads(quiet.stdout)["rows"] == 5000
    assert featsieve(*base, "--no-progress").stderr == ""
    loud = featsieve(*base, "--progress")
    assert "100%" in loud.stderr and "ETA" not in loud.stdout
    assert orjson.loads(loud.stdout)["rows"] == 5000  # stdout stays clean JSON
    gen = featsieve("generate", "--preset", "small", "--impressions", "2000", "--output",
                    str(files["dir"] / "g.jsonl"), "--progress")
    assert "2.00k/2.00k" in gen.stderr.replace("\r", "\n"), gen.stderr


# ------------------------------------------------------------------ TSV and cardinality
def test_tsv_is_outranks_ranking_files(files: dict[str, Path], tmp_path: Path) -> None:
    base = ("score", "--input", str(files["good"]), "--label", "clicked")
    result = orjson.loads(featsieve(*base).stdout)
    singles = featsieve(*base, "--format", "tsv").stdout.splitlines()
    assert singles[0] == "Feature\tScore featsieve-MI"
    rows = [line.split("\t") for line in singles[1:]]
    assert [r[0] for r in rows] == [f["name"] for f in result["fields"]]
    values = [float(r[1]) for r in rows]
    assert values[0] == 1.0 and values[-1] == 0.0 and values == sorted(values, reverse=True)
    out = tmp_path / "ranking"
    featsieve(*base, "--format", "tsv", "--output-dir", str(out))
    assert (out / "feature_singles.tsv").read_text().splitlines() == singles
    # OutRank's own pairwise_ranks.tsv reader (the one bench score uses) reads ours
    pairs = parse_outrank_ranking(out / "pairwise_ranks.tsv", label="clicked")
    assert pairs == pytest.approx({f["name"]: f["score"] for f in result["fields"]}, rel=1e-9)


@pytest.mark.slow
def test_score_cardinality_is_within_two_percent_and_flagged(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n_values, rows = 28_692, 120_000
    ids = np.concatenate([np.arange(n_values), rng.integers(0, n_values, rows - n_values)])
    rng.shuffle(ids)
    y = rng.random(rows) < 0.05
    path = tmp_path / "card.csv"
    with open(path, "w") as fh:
        fh.write("user,small,y\n")
        fh.writelines(f"u{ids[i]},{ids[i] % 7},{int(y[i])}\n" for i in range(rows))
    for workers in ("1", "3"):
        result = orjson.loads(featsieve("score", "--input", str(path), "--label", "y", "--workers", workers).stdout)
        fields = {f["name"]: f for f in result["fields"]}
        assert fields["user"]["estimated"] is True
        assert fields["user"]["cardinality"] == pytest.approx(n_values, rel=0.02)
        assert fields["small"]["estimated"] is False and fields["small"]["cardinality"] == 7
    table = featsieve("score", "--input", str(path), "--label", "y", "--format", "table").stdout
    assert re.search(r"\buser\b.*~\d+", table)  # an estimate is marked in the table


# ------------------------------------------------------------------ timeouts (no broker needed)
MARGIN_S = 7.0  # start-up of the interpreter and imports, on a loaded machine; the timeouts asked are 3 s


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--get"], ["--explain", "f"]])
def test_masks_timeout_against_an_unreachable_broker(mode: list[str]) -> None:
    # before: --get took 13 s for --timeout 3, --explain ignored it (30 s and a traceback)
    t0 = time.monotonic()
    proc = featsieve("masks", *mode, "--bootstrap", UNREACHABLE, "--timeout", "3", check=False, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert elapsed < 3 + MARGIN_S, elapsed


@pytest.mark.slow
def test_run_duration_is_honoured_while_connecting(tmp_path: Path) -> None:
    # before: --duration was only checked in the poll loop, so an unreachable broker kept it retrying for ever
    t0 = time.monotonic()
    proc = featsieve("run", "--bootstrap", UNREACHABLE, "--duration", "5", "--state-dir", str(tmp_path / "s"),
                     "--metrics-port", "0", "--no-gates", check=False, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "within --duration 5 s" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 5 + 3 * MARGIN_S, elapsed  # run imports torch: a larger start-up


def test_docs_name_every_flag_of_every_subcommand() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"## `featsieve {name}`" in doc, name
        for action in command._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in doc or f"{flag}/" in doc or f"/{flag}" in doc, (name, flag)


@pytest.mark.slow
def test_evaluate_progress_has_totals_and_stdout_stays_empty(files: dict[str, Path], tmp_path: Path) -> None:
    proc = featsieve("evaluate", "--input", str(files["good"]), "--label", "clicked", "--output-dir",
                     str(tmp_path / "e"), "--ratios", "0.5,1", "--methods", "topk-mi", "--progress")
    bars = proc.stderr.replace("\r", "\n")
    assert re.search(r"read: 100%.*5,000 rows", bars), bars[-2000:]
    assert re.search(r"evaluate: 100%.*5\.00k/5\.00k", bars), bars[-2000:]
    assert proc.stdout == ""
    quiet = featsieve("evaluate", "--input", str(files["good"]), "--label", "clicked", "--output-dir",
                      str(tmp_path / "q"), "--ratios", "0.5,1", "--methods", "topk-mi")
    assert "%" not in quiet.stderr  # a pipe, not a terminal: no bar (only the line naming the outputs)


def test_a_progress_bar_starts_no_thread() -> None:
    # tqdm's monitor thread would make score's workers start with 'spawn' (slow) instead of 'fork'
    import threading

    from connectors.progress import bar

    before = threading.active_count()
    with bar(10, "x", "B", True) as b:
        b.update(5)
        assert threading.active_count() == before
