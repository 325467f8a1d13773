#!/usr/bin/env python3
"""Plot the cost curves of `featsieve bench scale --json` output (docs/performance.md uses it).

    scripts/plot_bench.py docs/results/scale-full.json docs/figures/scale.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    result = json.load(open(src, encoding="utf-8"))
    sweeps = [("fields", "fields", "number of fields"), ("cardinality", "widest", "values of the widest field"),
              ("pairs", "pairs", "scored pairs"), ("length", "rows", "stream length (examples)")]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), constrained_layout=True)
    for col, (sweep, key, label) in enumerate(sweeps):
        cases = result[sweep]
        xs = [c[key] for c in cases]
        axes[0, col].plot(xs, [c["update_rows_per_s"] / 1e3 for c in cases], "o-")
        axes[0, col].set_ylabel("update, thousand rows/s")
        axes[1, col].plot(xs, [c["peak_rss_mb"] for c in cases], "o-", label="peak RSS")
        axes[1, col].plot(xs, [c["state_mb"] for c in cases], "s--", label="MI state")
        axes[1, col].plot(xs, [c["bound_mb"] for c in cases], ":", color="grey", label="configured bound")
        axes[1, col].set_ylabel("MB")
        axes[1, col].set_xlabel(label)
        for ax in axes[:, col]:
            if sweep in ("cardinality", "length"):
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[0, col].set_ylim(bottom=0)
        axes[1, col].set_ylim(bottom=0)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(f"featsieve bench scale ({result.get('size', '?')}): MI core rate and memory "
                 f"(mi_max_values={result['mi']['max_values']}, blocks={result['mi']['blocks']})")
    fig.savefig(dst, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
