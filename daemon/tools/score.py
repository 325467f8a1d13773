"""``featsieve score``: offline scoring of a CSV or JSONL file, same core as the daemon.

Outputs (docs/cli.md): ``json`` (everything), ``table`` (for people), ``tsv`` — the
ranking files OutRank writes, for users who come from it:

* ``feature_singles.tsv``: ``Feature`` and ``Score featsieve-MI``, best first, the
  score min-max normalised to [0, 1] as OutRank normalises its MI heuristics;
* ``pairwise_ranks.tsv`` (with ``--output-dir``): ``FeatureA FeatureB Score``, one row
  per field paired with the label, the raw corrected MI in nats, in OutRank's
  ascending order.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import orjson

from daemon.cliparse import UserError, progress_wanted
from daemon.config import Settings
from daemon.settings_map import mi_config_from
from daemon.tools.tabular import default_workers, score_file

HEURISTIC = "featsieve-MI"  # the "Score <heuristic>" column of feature_singles.tsv
JSONL_LABEL = "label"  # the label's name in pairwise_ranks.tsv for JSONL input (it has no column)


def _clean(name: str) -> str:
    """A field name as one TSV cell: tabs and newlines would break the row."""
    return name.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def feature_singles(result: dict[str, Any]) -> str:
    """OutRank's ``feature_singles.tsv`` of a score result."""
    fields = result["fields"]
    scores = [f["score"] for f in fields]
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 0.0)
    out = io.StringIO()
    out.write(f"Feature\tScore {HEURISTIC}\n")
    for f in fields:  # already best first
        norm = (f["score"] - lo) / (hi - lo) if hi > lo else 0.0
        out.write(f"{_clean(f['name'])}\t{norm:.12g}\n")
    return out.getvalue()


def pairwise_ranks(result: dict[str, Any], label: str) -> str:
    """OutRank's ``pairwise_ranks.tsv`` (label pairs only, as with its ``--target_ranking_only``)."""
    out = io.StringIO()
    out.write("FeatureA\tFeatureB\tScore\n")
    for f in sorted(result["fields"], key=lambda f: (f["score"], f["name"])):
        out.write(f"{_clean(label)}\t{_clean(f['name'])}\t{f['score']:.12g}\n")
    return out.getvalue()


def score_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.output_dir and args.format != "tsv":
        raise UserError("--output-dir goes with --format tsv")
    workers = default_workers() if args.workers is None else args.workers
    result = score_file(
        args.input,
        label=args.label,
        pairs=args.pairs,
        config=mi_config_from(settings),
        window_ms=int(settings.attribution_window_s * 1000),
        progress=progress_wanted(args),
        max_fields=settings.max_fields,
        workers=workers,
        fmt=args.input_format,
    )
    if result["rows"] == 0:
        raise UserError(f"{args.input} has no labelled example to score"
                        + (f" (skipped: {result['skipped_rows']})" if result["skipped_rows"] else ""))
    skipped = result["skipped_rows"]
    if skipped:
        shown = ", ".join(f"{n:,} {reason}" for reason, n in sorted(skipped.items()))
        print(f"featsieve score: skipped rows of {args.input}: {shown}", file=sys.stderr)
    if args.format == "tsv":
        singles = feature_singles(result)
        if not args.output_dir:
            sys.stdout.write(singles)
            return 0
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "feature_singles.tsv").write_text(singles, encoding="utf-8")
        label = args.label or JSONL_LABEL
        (out / "pairwise_ranks.tsv").write_text(pairwise_ranks(result, label), encoding="utf-8")
        print(f"featsieve score: {out / 'feature_singles.tsv'}, {out / 'pairwise_ranks.tsv'}", file=sys.stderr)
        return 0
    if args.format == "table":
        print(f"{'field':<28}{'score':>12}{'mi':>12}{'z':>9}{'cardinality':>13}  redundant_with")
        for f in result["fields"]:
            card = f"{'~' if f['estimated'] else ''}{f['cardinality']}"
            print(f"{f['name']:<28}{f['score']:>12.6f}{f['mi']:>12.6f}{f['z']:>9.1f}{card:>13}  "
                  f"{f.get('redundant_with') or ''}")
        for p in result.get("pairs", []):
            print(f"pair {p['fields'][0]} x {p['fields'][1]}: {p['score']:.6f}")
        return 0
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0
