"""``featsieve bench scale``: the scoring core's rate and memory as fields, cardinality, pairs and length grow.

Every case runs in a fresh child process (so its peak RSS is its own) that
streams pre-hashed synthetic batches through :class:`models.mi.MIState` —
generated chunk by chunk, never held whole — with event times advancing at
a rate chosen so that even the short stream spans more than the MI horizon
(``mi_blocks x mi_block_s``): every case cycles through the evidence blocks
and expires old ones as the daemon does, and the long stream (10x) shows that
memory stays where the configuration puts it. Reported per case:
rows/s of ``update``, seconds of one ``scores()``, the state's own bytes and
the child's peak RSS. The baseline for the ratios is the first case of each
sweep (10 fields, 1e3 values, no pairs, the short stream) in the same run.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

CHUNK = 20_000
LENGTHS = {"tiny": (20_000, 200_000), "small": (200_000, 2_000_000), "full": (1_000_000, 10_000_000)}


def run_case(fields: int, widest: int, pairs: int, rows: int, mi: dict[str, Any], event_rate: float,
             seed: int = 1) -> dict[str, Any]:
    """One measurement in this process (the child's side)."""
    from models.interning import EncodedBatch
    from models.mi import MIConfig, MIState

    rng = np.random.default_rng(seed)
    cards = np.unique(np.geomspace(2, widest, fields).astype(np.int64))
    cards = np.concatenate([cards, np.full(fields - len(cards), widest)])[:fields]
    names = [f"f{i}" for i in range(fields)]
    config = MIConfig(**{**mi, "pairs_top_n": 0})
    state = MIState(config)
    if pairs:
        top = names[-pairs:] if pairs < fields else names
        state.set_pairs([(a, b) for i, a in enumerate(top) for b in top[i + 1 :]][:pairs])
    golden = np.uint64(0x9E3779B97F4A7C15)
    elapsed = 0.0
    done = 0
    while done < rows:
        n = min(CHUNK, rows - done)
        ids = (rng.random((n, fields)) ** 2 * cards).astype(np.uint64)  # skewed: low ids frequent
        hashes = (ids + np.uint64(1)) * golden + np.arange(fields, dtype=np.uint64)
        labels = (rng.random(n) < 0.03 + 0.05 * (ids[:, 0] == 0)).astype(np.int8)
        ts = (np.arange(done, done + n, dtype=np.float64) * (1000.0 / event_rate)).astype(np.int64) + 1_700_000_000_000
        t0 = time.perf_counter()
        state.update(EncodedBatch(names, hashes), labels, ts)
        elapsed += time.perf_counter() - t0
        done += n
    t1 = time.perf_counter()
    state.scores()
    return {
        "fields": fields, "widest": widest, "pairs": len(state.pairs), "rows": rows,
        "update_rows_per_s": rows / elapsed, "scores_seconds": time.perf_counter() - t1,
        "state_mb": state.nbytes() / 1e6, "live_blocks": len(state.blocks),
        "bound_mb": (fields + len(state.pairs)) * config.blocks * (config.max_values + config.tail_buckets) * 24 / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _child(case: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.tools.bench_scale", json.dumps(case)],
        capture_output=True, text=True, timeout=3600, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scale case {case} failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout))


def suite_scale(mi: dict[str, Any], size: str) -> dict[str, Any]:
    short, long = LENGTHS[size]
    horizon_s = mi["blocks"] * mi["block_ms"] / 1000.0 if mi["block_ms"] else 1.0
    event_rate = short / (1.25 * horizon_s)  # the short stream spans 1.25 horizons
    sweeps = {
        "fields": [dict(fields=f, widest=100_000, pairs=0, rows=short) for f in (10, 40, 160)],
        "cardinality": [dict(fields=40, widest=w, pairs=0, rows=short) for w in (1_000, 100_000, 10_000_000)],
        "pairs": [dict(fields=40, widest=100_000, pairs=p, rows=short) for p in (0, 8, 28)],
        "length": [dict(fields=40, widest=10_000_000, pairs=8, rows=r) for r in (short, long)],
    }
    out: dict[str, Any] = {"suite": "scale", "event_rate": event_rate, "mi": mi}
    for sweep, cases in sweeps.items():
        results = [_child({**c, "mi": mi, "event_rate": event_rate}) for c in cases]
        base = results[0]["update_rows_per_s"]
        for r in results:
            r["ratio"] = r["update_rows_per_s"] / base
        out[sweep] = results
    length = out["length"]
    out["rss_growth_long_vs_short"] = length[1]["peak_rss_mb"] / length[0]["peak_rss_mb"]
    out["ratio"] = out["fields"][1]["ratio"]  # 40 fields vs 10, the headline cost of width
    return out


if __name__ == "__main__":
    case = json.loads(sys.argv[1])
    sys.stdout.write(json.dumps(run_case(case["fields"], case["widest"], case["pairs"], case["rows"], case["mi"],
                                         case["event_rate"])))
