"""``featsieve score``: offline scoring of a CSV or JSONL file, JSON out, same core as the daemon."""

from __future__ import annotations

import argparse
import sys

import orjson

from connectors.tabular import default_workers, score_file
from daemon.config import Settings
from daemon.settings_map import mi_config_from


def score_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.input.endswith(".csv") and not args.label:
        print("featsieve score: a CSV input needs --label COLUMN (the 0/1 click column)", file=sys.stderr)
        return 2
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        print("featsieve score: --workers must be >= 1", file=sys.stderr)
        return 2
    result = score_file(
        args.input,
        label=args.label,
        pairs=args.pairs,
        config=mi_config_from(settings),
        window_ms=int(settings.attribution_window_s * 1000),
        progress=sys.stderr.isatty(),
        max_fields=settings.max_fields,
        workers=workers,
    )
    if args.format == "table":
        print(f"{'field':<28}{'score':>12}{'mi':>12}{'z':>9}{'cardinality':>13}  redundant_with")
        for f in result["fields"]:
            print(f"{f['name']:<28}{f['score']:>12.6f}{f['mi']:>12.6f}{f['z']:>9.1f}{f['cardinality']:>13}  "
                  f"{f.get('redundant_with') or ''}")
        for p in result.get("pairs", []):
            print(f"pair {p['fields'][0]} x {p['fields'][1]}: {p['score']:.6f}")
        return 0
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0
