"""One markdown row per evaluation.json: all fields vs each featsieve mask (docs/policy.md tables).

    python scripts/policy_table.py eval-presets/*/evaluation.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MASKS = ("featsieve", "featsieve-mi", "featsieve-gates", "featsieve-both")


def row(path: Path) -> str:
    r = json.loads(path.read_text())
    every = r["methods"]["all"]["points"][0]
    cells = [path.parent.name, f"{r['evaluated_rows']:,} / {r['evaluated_positives']:,}",
             f"{every['auc']:.4f} / {every['logloss']:.4f}"]
    for m in MASKS:
        if m not in r["methods"]:
            cells.append("–")
            continue
        p = r["methods"][m]["points"][0]
        cells.append(f"{p['kept_fields']} · {p['auc'] - every['auc']:+.4f} · {p['logloss'] / every['logloss'] - 1:+.1%}"
                     f" · {p['memory_saved']:.0%}")
    gate = r.get("gate_ranking_vs_random")
    cells.append("–" if gate is None else f"{gate:+.4f}")
    return "| " + " | ".join(cells) + " |"


def main(paths: list[str]) -> None:
    print("| preset | scored rows / clicks | all fields AUC / log loss | " + " | ".join(MASKS)
          + " | gate AUKC − random |")
    print("| --- | --- | --- |" + " --- |" * len(MASKS) + " --- |")
    for p in paths:
        print(row(Path(p)))


if __name__ == "__main__":
    main(sys.argv[1:])
