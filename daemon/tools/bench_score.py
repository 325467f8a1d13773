"""``featsieve bench score``: the offline scorer against OutRank on the same file, same run.

Two labelled CSVs are built from the seeded synthetic generator (impressions joined
offline with their clicks by id within the attribution window):

* ``default``: the ``default`` preset, ``SIZES[size]`` rows: realistic, weak effects
  (true MI 0.001 .. 0.018 nats, several near-ties), 3% CTR;
* ``clear``: the ``clear`` preset (the same fields, stronger effects), ``CLEAR_ROWS[size]``
  rows, 10% CTR: every informative field far above chance, their true MIs well apart.
  This is the data on which the two must agree.

Each is scored by

* featsieve: :func:`daemon.tools.tabular.score_file` in this process, timed (median of
  ``FEATSIEVE_RUNS`` runs), with all usable cores (``workers``, as ``featsieve score`` does
  by default) and, for reference, with one process; also the ``featsieve score`` command
  end to end, once (a subprocess, so interpreter start and imports included);
* OutRank: its CLI (``python -m outrank``) in its own venv (``scripts/outrank-venv``),
  as a subprocess timed by wall clock, heuristic ``MI-numba-randomized``, the whole
  file as one minibatch, every row (``--subsampling 1``), label ranking only, with as
  many threads as there are cores.

Both tools get the same bytes. The report says, per file, how fast each was, which
fields each considers *clearly informative*, whether those agree (same set, same order
up to near-ties), and how each order compares with the generator's true MI.
docs/outrank.md explains the rules and the measured numbers.

Rules (module constants, so the test and the docs quote the same numbers):

* featsieve, clearly informative: ``z >= FEATSIEVE_Z_MIN`` and ``score > 0``.
* OutRank, clearly informative: ``score > null_max + OUTRANK_MARGIN * max(null_max, 0)``
  ... and above ``null_max + (null_max - null_median)``; see :func:`outrank_threshold`.
  The *null fields* are those whose true MI with the click is 0 in the ground truth
  (noise, id-like and the XOR pair, which has no marginal signal).
* near-tie: two scores within ``NEAR_TIE`` (relative to the larger) of each other.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon.config import Settings
from daemon.tools.bench_stream import SIZES, peak_rss_mb

log = logging.getLogger("featsieve.bench")

LABEL = "label"
SEED = 11
OUTRANK_VERSION = "0.97.5"
FEATSIEVE_Z_MIN = 5.0
OUTRANK_MARGIN = 1.0
NEAR_TIE = 0.10
WARMUP_ROWS = 4_000
DATASETS = ("default", "clear")
CLEAR_CTR = 0.1
CLEAR_ROWS = {"tiny": 100_000, "small": 400_000, "full": 400_000}
SPEED_TARGET = 50.0  # featsieve rows/s over OutRank's, same file, same run
FEATSIEVE_RUNS = 3  # featsieve's time is the median of this many runs
NOT_INSTALLED = "not installed (run scripts/outrank-venv)"


class OutRankError(RuntimeError):
    """OutRank's subprocess failed or wrote no ranking; the message carries its output tail."""


# ------------------------------------------------------------------ the data file
def _cell(value: Any) -> str:
    """One CSV cell: every value becomes a string, missing (None) the empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_labelled_csv(path: Path, config: Any, window_ms: int) -> dict[str, Any]:
    """Write the generator's stream for ``config`` (a ``GeneratorConfig``) as a labelled CSV.

    Rows are impressions in event-time order; ``label`` is 1 when a click with the same id
    has ``ts`` in ``[impression ts, impression ts + window_ms]`` (duplicates count once,
    late clicks are orphans). The stream is generated twice (first only the clicks are
    kept) so memory stays bounded by the clicks, not the rows. Header first, the label
    column last. Returns ``{"rows", "positives", "fields"}``.
    """
    from connectors.codec import Click, Impression
    from daemon.tools.synthetic import generate

    clicks: dict[str, list[int]] = {}
    for ev in generate(config):
        if type(ev) is Click:
            clicks.setdefault(ev.id, []).append(ev.ts)
    rows = positives = 0
    names: list[str] = []
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        for ev in generate(config):
            if type(ev) is not Impression:
                continue
            if not names:
                names = list(ev.features)
                if LABEL in names:
                    raise ValueError(f"a generated field is called {LABEL!r}")
                out.writerow([*names, LABEL])
            t = ev.ts
            label = int(any(t <= ct <= t + window_ms for ct in clicks.get(ev.id, ())))
            feats = ev.features
            out.writerow([*(_cell(feats.get(n)) for n in names), str(label)])
            rows += 1
            positives += label
    return {"rows": rows, "positives": positives, "fields": names}


def _head(src: Path, dst: Path, rows: int) -> None:
    """Copy the header and the first ``rows`` rows of ``src`` to ``dst`` (warm-up input)."""
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for i, line in enumerate(fin):
            if i > rows:
                break
            fout.write(line)


# ------------------------------------------------------------------ featsieve
def run_featsieve(path: Path, settings: Settings, workers: int = 1) -> tuple[dict[str, Any], float]:
    """Score ``path`` with :func:`daemon.tools.tabular.score_file`; returns (result, seconds)."""
    from daemon.settings_map import mi_config_from
    from daemon.tools.tabular import score_file

    t0 = time.perf_counter()
    result = score_file(
        str(path), label=LABEL, pairs=False, config=mi_config_from(settings),
        window_ms=int(settings.attribution_window_s * 1000), progress=False,
        max_fields=settings.max_fields, workers=workers,
    )
    return result, time.perf_counter() - t0


def run_featsieve_cli(path: Path, workers: int) -> float:
    """Wall seconds of ``featsieve score --input path --label label --workers N`` as a subprocess."""
    cmd = [sys.executable, "-m", "daemon.cli", "score", "--input", str(path), "--label", LABEL,
           "--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"featsieve score exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds


# ------------------------------------------------------------------ OutRank
def default_outrank_python() -> Path:
    """The python of the venv ``scripts/outrank-venv`` creates by default."""
    venv = os.environ.get("FEATSIEVE_OUTRANK_VENV") or Path.home() / ".cache/featsieve/outrank-venv"
    return Path(venv) / "bin" / "python"


def find_outrank_python(given: str | None) -> str | None:
    """``given`` if set (it must exist), else the default venv's python if it exists, else None."""
    if given:
        if not (shutil.which(given) or Path(given).exists()):
            raise OutRankError(f"--outrank-python {given!r} does not exist; run scripts/outrank-venv")
        return given
    py = default_outrank_python()
    return str(py) if py.exists() else None


def outrank_command(python: str, data_dir: Path, out_dir: Path, rows: int, threads: int) -> list[str]:
    """The OutRank CLI call: label-only ranking of ``data_dir/data.csv`` as one minibatch."""
    return [
        python, "-m", "outrank",
        "--task", "ranking",
        "--data_source", "csv-raw",  # reads <data_path>/data.csv, header = column names
        "--data_path", str(data_dir),
        "--output_folder", str(out_dir),
        "--label_column", LABEL,
        "--heuristic", "MI-numba-randomized",
        "--target_ranking_only", "True",
        "--minibatch_size", str(rows),
        "--subsampling", "1",  # its default (10) would keep every 10th row only
        "--num_threads", str(threads),
        "--include_cardinality_in_feature_names", "False",
        "--include_noise_baseline_features", "False",
        "--transformers", "none",
        "--interaction_order", "1",
        "--disable_tqdm", "True",
        "--tldr", "False",
    ]


def parse_outrank_ranking(path: Path, label: str = LABEL) -> dict[str, float]:
    """Field → score from OutRank's ``pairwise_ranks.tsv`` (rows pairing a field with the label)."""
    scores: dict[str, float] = {}
    with open(path, encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            a, b = row["FeatureA"], row["FeatureB"]
            if (a == label) == (b == label):
                continue  # the label with itself, or a feature pair
            scores[b if a == label else a] = float(row["Score"])
    return scores


def run_outrank(python: str, csv_path: Path, rows: int, workdir: Path) -> tuple[dict[str, float], float]:
    """Run OutRank on ``csv_path`` (copied into the folder layout it reads); (scores, seconds).

    The seconds are the wall clock of the whole subprocess: interpreter start, imports,
    reading and parsing the CSV, scoring, writing its outputs.
    """
    data_dir = workdir / "data"
    out_dir = workdir / "ranking"
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / "data.csv"
    if not target.exists():
        os.link(csv_path, target) if _same_fs(csv_path, data_dir) else shutil.copy(csv_path, target)
    cmd = outrank_command(python, data_dir, out_dir, rows, os.cpu_count() or 1)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    ranking = out_dir / "pairwise_ranks.tsv"
    if proc.returncode != 0 or not ranking.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise OutRankError(f"OutRank exited {proc.returncode} without {ranking.name}:\n{tail}")
    return parse_outrank_ranking(ranking), seconds


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


# ------------------------------------------------------------------ comparison
def clearly_informative_featsieve(fields: Sequence[Mapping[str, Any]],
                                  z_min: float = FEATSIEVE_Z_MIN) -> list[str]:
    """Names with ``z >= z_min`` and ``score > 0``, by score (desc), ties by name."""
    keep = [f for f in fields if f["score"] > 0 and f["z"] >= z_min]
    return [f["name"] for f in sorted(keep, key=lambda f: (-f["score"], f["name"]))]


def outrank_threshold(scores: Mapping[str, float], null_fields: Sequence[str],
                      margin: float = OUTRANK_MARGIN) -> float:
    """The score a field must exceed to be clearly informative for OutRank.

    ``null_max + margin * max(null_max - null_median, |null_max|)``: above the highest
    null field by at least the null fields' own spread above their median (or the size
    of the highest null score, whichever is larger), so one lucky null field does not set
    a bar that the next seed's lucky null field would clear.
    """
    null = [scores[n] for n in null_fields if n in scores]
    if not null:
        raise ValueError("no null field among OutRank's scores")
    top, mid = max(null), statistics.median(null)
    return top + margin * max(top - mid, abs(top))


def clearly_informative_outrank(scores: Mapping[str, float], null_fields: Sequence[str],
                                margin: float = OUTRANK_MARGIN) -> list[str]:
    """Names above :func:`outrank_threshold`, by score (desc), ties by name."""
    bar = outrank_threshold(scores, null_fields, margin)
    return [n for n, s in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])) if s > bar]


def near_tie(a: float, b: float, tie: float = NEAR_TIE) -> bool:
    """True when ``a`` and ``b`` are within ``tie`` of the larger magnitude of the two."""
    return abs(a - b) <= tie * max(abs(a), abs(b))


def agreement(ours: Sequence[str], theirs: Sequence[str], our_scores: Mapping[str, float],
              their_scores: Mapping[str, float], tie: float = NEAR_TIE) -> dict[str, Any]:
    """Compare two ordered lists of clearly informative fields.

    ``same_set``: the sets are equal. A pair of common fields is *discordant* when the two
    orders disagree on it; it is *excused* when its two scores are a near-tie in either
    tool (one tool cannot separate them, so its order is no evidence). ``same_order``: no
    unexcused discordant pair. ``agree`` = ``same_set and same_order``.
    """
    common = [n for n in ours if n in set(theirs)]
    pos = {n: i for i, n in enumerate(theirs)}
    discordant: list[dict[str, Any]] = []
    for i, a in enumerate(common):
        for b in common[i + 1:]:
            if pos[a] < pos[b]:
                continue
            tied = near_tie(our_scores[a], our_scores[b], tie) or near_tie(
                their_scores[a], their_scores[b], tie)
            discordant.append({"pair": [a, b], "near_tie": tied,
                               "featsieve": [our_scores[a], our_scores[b]],
                               "outrank": [their_scores[a], their_scores[b]]})
    same_set = set(ours) == set(theirs)
    same_order = all(d["near_tie"] for d in discordant)
    return {
        "agree": same_set and same_order, "same_set": same_set, "same_order": same_order,
        "only_featsieve": [n for n in ours if n not in set(theirs)],
        "only_outrank": [n for n in theirs if n not in set(ours)],
        "discordant_pairs": discordant, "near_tie": tie,
    }


def spearman_vs_truth(scores: Mapping[str, float], truth_order: Sequence[str]) -> float | None:
    """Spearman rank correlation of ``scores`` over the fields of ``truth_order`` (strongest
    first) with that order; None with fewer than 3 fields."""
    from scipy.stats import spearmanr

    names = [n for n in truth_order if n in scores]
    if len(names) < 3:
        return None
    rho = spearmanr([-i for i in range(len(names))], [scores[n] for n in names]).statistic
    return float(rho)


# ------------------------------------------------------------------ the suite
def dataset_config(name: str, size: str, seed: int, settings: Settings) -> Any:
    """The generator config of one of :data:`DATASETS` at ``size``."""
    from daemon.tools.synthetic import GeneratorConfig

    if name == "default":
        return GeneratorConfig(seed=seed, n_impressions=SIZES[size], preset="default",
                               attribution_window_s=settings.attribution_window_s)
    if name == "clear":
        return GeneratorConfig(seed=seed, n_impressions=CLEAR_ROWS[size], preset="clear",
                               base_ctr=CLEAR_CTR, attribution_window_s=settings.attribution_window_s)
    raise ValueError(f"unknown dataset {name!r}")


def compare_file(data: Path, rows: int, truth: Mapping[str, Any], settings: Settings, python: str | None,
                 work: Path, workers: int) -> dict[str, Any]:
    """Score one labelled CSV with featsieve (``workers`` processes and one) and OutRank; compare."""
    null_fields = sorted(n for n, mi in truth["true_mi"].items() if mi == 0.0)
    # featsieve takes a second or two, so a moment of other load on the machine moves it a lot:
    # the median of FEATSIEVE_RUNS runs (all reported); OutRank's minutes average such moments out.
    runs = [run_featsieve(data, settings, workers) for _ in range(FEATSIEVE_RUNS)]
    fs_result, fs_seconds = runs[0][0], statistics.median(t for _, t in runs)
    ones = [run_featsieve(data, settings, 1) for _ in range(FEATSIEVE_RUNS)]
    one_seconds = statistics.median(t for _, t in ones)
    same = all(r["fields"] == fs_result["fields"] for r, _ in runs + ones)
    report: dict[str, Any] = {
        "rows": rows, "positives": fs_result["positives"], "csv_mb": data.stat().st_size / 1e6,
        "featsieve_workers": fs_result["workers"],
        "featsieve_seconds": fs_seconds, "featsieve_rows_per_s": rows / fs_seconds,
        "featsieve_seconds_runs": [t for _, t in runs],
        "featsieve_1proc_seconds": one_seconds, "featsieve_1proc_rows_per_s": rows / one_seconds,
        "featsieve_1proc_seconds_runs": [t for _, t in ones],
        "featsieve_workers_same_result": same,
    }
    cli_seconds = run_featsieve_cli(data, workers)
    report.update({"featsieve_cli_seconds": cli_seconds, "featsieve_cli_rows_per_s": rows / cli_seconds})
    fs_scores = {f["name"]: float(f["score"]) for f in fs_result["fields"]}
    fs_clear = clearly_informative_featsieve(fs_result["fields"])
    fs_null_max = max(fs_scores[n] for n in null_fields if n in fs_scores)
    report["clearly_informative_featsieve"] = fs_clear
    report["spearman_vs_truth"] = spearman_vs_truth(fs_scores, truth["informative"])
    report["informative_above_noise"] = all(
        fs_scores.get(n, float("-inf")) > fs_null_max for n in truth["informative"])
    report["featsieve_null_max_score"] = fs_null_max
    report["truth_informative"] = truth["informative"]
    report["true_mi"] = {n: truth["true_mi"][n] for n in truth["informative"]}
    if python is not None:
        or_scores, or_seconds = run_outrank(python, data, rows, work / "outrank")
        or_clear = clearly_informative_outrank(or_scores, null_fields)
        ratio = (rows / fs_seconds) / (rows / or_seconds)
        report.update({
            "outrank_seconds": or_seconds, "outrank_rows_per_s": rows / or_seconds,
            "ratio": ratio, "ratio_1proc": (rows / one_seconds) / (rows / or_seconds),
            "ratio_cli": (rows / cli_seconds) / (rows / or_seconds),
            "speed_target_met": ratio >= SPEED_TARGET,
            "clearly_informative_outrank": or_clear,
            "outrank_threshold": outrank_threshold(or_scores, null_fields),
            "outrank_null_max_score": max(or_scores[n] for n in null_fields if n in or_scores),
            "agreement": agreement(fs_clear, or_clear, fs_scores, or_scores),
            "outrank_spearman_vs_truth": spearman_vs_truth(or_scores, truth["informative"]),
            "outrank_scores": dict(sorted(or_scores.items(), key=lambda kv: -kv[1])),
        })
    report["featsieve_scores"] = {f["name"]: {"score": f["score"], "z": f["z"]}
                                  for f in fs_result["fields"]}
    return report


def suite_score(settings: Settings, size: str, outrank_python: str | None,
                *, seed: int = SEED, with_outrank: bool = True, workers: int | None = None,
                datasets: Sequence[str] = DATASETS, rows: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Build the files, score each with featsieve and (if installed) OutRank, compare.

    ``outrank_python`` None: the default venv's python if it exists; if OutRank is not
    available (or ``with_outrank`` is False) the report has the featsieve side only and
    ``"outrank": "not installed (run scripts/outrank-venv)"`` (or ``"skipped"``).
    Raises :class:`OutRankError` when OutRank is there but fails. ``workers``: featsieve's
    processes (default: the usable cores); ``rows``: override a dataset's row count (tests).
    """
    from dataclasses import replace

    from daemon.tools.synthetic import ground_truth
    from daemon.tools.tabular import default_workers

    python = find_outrank_python(outrank_python) if with_outrank else None
    workers = default_workers() if workers is None else workers
    window_ms = int(settings.attribution_window_s * 1000)
    report: dict[str, Any] = {"suite": "score", "outrank": OUTRANK_VERSION if python else
                              (NOT_INSTALLED if with_outrank else "skipped"),
                              "seed": seed, "workers": workers, "load_avg_start": _load(), "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="featsieve-bench-score-") as tmp:
        work = Path(tmp)
        warmed = False
        for name in datasets:
            config = dataset_config(name, size, seed, settings)
            if rows and name in rows:
                config = replace(config, n_impressions=rows[name])
            truth = ground_truth(config)
            data = work / name / "data.csv"
            data.parent.mkdir()
            info = write_labelled_csv(data, config, window_ms)
            if not warmed:
                warm = work / "warmup.csv"
                _head(data, warm, WARMUP_ROWS)
                run_featsieve(warm, settings, workers)  # imports, first-call costs, worker start: untimed
                if python is not None:
                    # numba compiles on first use (cached on disk afterwards): warm it up untimed
                    run_outrank(python, warm, WARMUP_ROWS, work / "warmup")
                warmed = True
            part = compare_file(data, info["rows"], truth, settings, python, work / name, workers)
            part.update({"preset": config.preset, "base_ctr": config.base_ctr, "fields": len(info["fields"])})
            report["datasets"][name] = part
    parts = report["datasets"].values()
    if python is not None:
        report["ratio_min"] = min(p["ratio"] for p in parts)
        report["speed_target_met"] = all(p["speed_target_met"] for p in parts)
        if "clear" in report["datasets"]:
            report["agree_where_clear"] = report["datasets"]["clear"]["agreement"]["agree"]
    report["load_avg_end"] = _load()
    report["cores"] = os.cpu_count()
    report["peak_rss_mb"] = peak_rss_mb()
    report["python"] = sys.version.split()[0]
    return report


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages (how busy the machine was), None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
