"""Render the Grafana dashboard as a PNG from a real Prometheus, without Grafana.

Grafana cannot be installed here, so this draws the dashboard the way Grafana
lays it out: every panel of ``deploy/grafana/dashboards/featsieve.json`` at its
``gridPos`` (24 columns), every target's ``expr`` asked of Prometheus's HTTP API
(``query_range`` for time series, the last value for stat panels), with the
dashboard variables ``$instance`` and ``$field`` set to match everything and
``$__rate_interval`` to ``--rate-interval``.

    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --minutes 10 --output docs/figures/dashboard.png

Exit status 1 if Prometheus answered no data for any panel's query (the
picture would hide a broken panel); ``--allow-empty`` draws it anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "featsieve.json"
ROW_PX, COL_PX = 30, 60  # Grafana's grid: 30 px per row unit; 24 columns on a ~1440 px page
BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ffb357"]


def substitute(expr: str, rate_interval: str) -> str:
    return (expr.replace('=~"$instance"', '=~".*"').replace('=~"$field"', '=~".*"')
            .replace("$__rate_interval", rate_interval))


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(url, timeout=30) as resp:
        doc = json.load(resp)
    if doc.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {doc.get('error')}")
    return list(doc["data"]["result"])


def legend(metric: dict[str, str], fmt: str | None) -> str:
    if fmt:
        out = fmt
        for k, v in metric.items():
            out = out.replace("{{" + k + "}}", v).replace("{{ " + k + " }}", v)
        return out
    labels = {k: v for k, v in metric.items() if k not in ("__name__", "instance", "job")}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or metric.get("__name__", "value")


def render(base: str, minutes: float, output: Path, rate_interval: str, allow_empty: bool) -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 240)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width_px, height_px = 24 * COL_PX, rows * ROW_PX + 40
    fig = plt.figure(figsize=(width_px / 100, height_px / 100), dpi=100, facecolor=BG)
    fig.text(0.01, 1 - 20 / height_px, f"{dashboard.get('title', 'featsieve')}  ·  last {minutes:g} min  ·  "
             f"rendered from Prometheus by scripts/render_dashboard.py", color=TEXT, fontsize=11, va="center")
    empty: list[str] = []

    def box(p: dict[str, Any], inner: bool) -> list[float]:
        # the panel's rectangle; time series leave room inside it for tick labels and the title
        g = p["gridPos"]
        left, right, top, bottom = (52, 8, 22, 30) if inner else (6, 6, 22, 6)
        x0 = (g["x"] * COL_PX + left) / width_px
        y0 = 1 - ((g["y"] + g["h"]) * ROW_PX + 40 - bottom) / height_px
        return [x0, y0, (g["w"] * COL_PX - left - right) / width_px,
                (g["h"] * ROW_PX - top - bottom) / height_px]

    for p in panels:
        if p.get("type") == "row":
            g = p["gridPos"]
            fig.text(8 / width_px, 1 - (g["y"] * ROW_PX + 40 + ROW_PX / 2) / height_px, p.get("title", ""),
                     color=TEXT, fontsize=12, fontweight="bold", va="center")
            continue
        ax = fig.add_axes(box(p, inner=p.get("type") != "stat"), facecolor=PANEL)
        ax.set_title(p.get("title", ""), color=TEXT, fontsize=9, loc="left")
        for spine in ax.spines.values():
            spine.set_color(GRID)
        series = []
        for t in p.get("targets", []):
            for r in query_range(base, substitute(t["expr"], rate_interval), start, end, step):
                pts = [(float(ts), float(v)) for ts, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if pts:
                    series.append((legend(r["metric"], t.get("legendFormat")), pts))
        if not series:
            empty.append(p.get("title", "?"))
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if p.get("type") == "stat":
            value = series[0][1][-1][1]
            unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            text = f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.3g}"
            text += {"s": " s", "bytes": " B", "Bps": " B/s"}.get(unit, "")
            if p.get("options", {}).get("textMode") == "name":  # e.g. the version, from the legend
                text = ", ".join(name for name, _ in series)
            ax.text(0.5, 0.45, text, color=COLORS[0], ha="center", va="center", fontsize=22,
                    fontweight="bold", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for i, (name, pts) in enumerate(series[:8]):
            xs = [(ts - end) / 60 for ts, _ in pts]
            ax.plot(xs, [v for _, v in pts], color=COLORS[i % len(COLORS)], linewidth=1.2, label=name[:40])
        ax.set_xlim(-minutes, 0)
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        ax.grid(color=GRID, linewidth=0.5)
        ax.set_xlabel("minutes ago", color="#8e8e8e", fontsize=7)
        ax.legend(loc="upper left", fontsize=6, frameon=False, labelcolor=TEXT, ncol=2)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, facecolor=BG)
    plt.close(fig)
    if empty and not allow_empty:
        print(f"no data for: {', '.join(empty)}", file=sys.stderr)
    return empty


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    ap.add_argument("--minutes", type=float, default=10.0, help="time range to draw, ending now")
    ap.add_argument("--rate-interval", default="30s", help="value of $__rate_interval")
    ap.add_argument("--output", type=Path, default=Path("dashboard.png"))
    ap.add_argument("--allow-empty", action="store_true", help="exit 0 even if some panel had no data")
    args = ap.parse_args()
    empty = render(args.prometheus.rstrip("/"), args.minutes, args.output, args.rate_interval, args.allow_empty)
    print(f"wrote {args.output}", file=sys.stderr)
    return 1 if empty and not args.allow_empty else 0


if __name__ == "__main__":
    raise SystemExit(main())
