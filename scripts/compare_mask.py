"""Print a published mask next to the generator's ground truth; exit 1 if they disagree.

A noise field the policy keeps as ``insufficient_evidence`` (under-powered: MI cannot rule out its
interaction with a wide informative field, and the gates have no vote yet) is marked, not counted
as a disagreement: the default policy keeps what it cannot show to be cheap (docs/policy.md).

The table is the mask's keep decision per field against the truth. It ends with one line per kind
of evidence, which the demo's test reads:

    MI: 8/8 kept, 24/24 dropped (mask version 4, epoch 1)
    gates: 5/8 informative open, 24/24 noise closed (last gate window)
    closed values: ad_cat [ad22]; device [de2, de3]

* MI: the mask's decisions (policy_mode "budget": MI, pairs and, once they have earned a vote, the
  gates); the exit status is 1 when one of them differs from the truth other than by caution.
* gates: the field gates of the last completed gate window (``gate_open`` at or above
  ``--gate-enter``, 0.5 by default, is open); "no window completed" when the stream was shorter than
  ``gate_window``; and, where the mask records it, whether the gates earned a vote in the policy
  (``policy.gate_evidence``). Not part of the exit status: a young gate model's first windows are
  unreliable.
* closed values: the values the value gates closed, per kept field (low-cardinality fields only).
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson


def _under_powered(entry: dict[str, Any] | None) -> bool:
    """A noise field the policy keeps because the evidence cannot show it is cheap to drop."""
    return bool(entry) and entry["keep"] and entry["reason"] == "insufficient_evidence"  # type: ignore[index]


def evidence_lines(mask: dict[str, Any], truth: dict[str, Any], gate_enter: float = 0.5) -> list[str]:
    """The closing lines, one per kind of evidence."""
    fields = mask["fields"]
    informative, noise = list(truth["informative"]), list(truth["noise"])
    kept = sum(1 for n in informative if fields.get(n, {}).get("keep"))
    dropped = sum(1 for n in noise if n in fields and not fields[n]["keep"])
    held = sum(1 for n in noise if _under_powered(fields.get(n)))
    lines = [f"MI: {kept}/{len(informative)} kept, {dropped}/{len(noise)} dropped"
             + (f", {held} kept as under-powered" if held else "")
             + f" (mask version {mask['version']}, epoch {mask['epoch']})"]
    # how much say the policy gave the gates (masks of writers that record it: none, weak or strong)
    strength = (mask.get("policy") or {}).get("gate_evidence")
    gated = [n for n in informative + noise if fields.get(n, {}).get("gate_open") is not None]
    if gated:
        opened = sum(1 for n in informative if n in gated and fields[n]["gate_open"] >= gate_enter)
        closed = sum(1 for n in noise if n in gated and fields[n]["gate_open"] < gate_enter)
        vote = f"; gate evidence {strength}" + ("" if strength == "strong" else ": no vote in the mask") \
            if strength else ""
        lines.append(f"gates: {opened}/{len(informative)} informative open, {closed}/{len(noise)} noise closed"
                     f" (last gate window{vote})")
    else:
        lines.append("gates: no window completed (the stream is shorter than gate_window)")
    closed_values = [(n, f["closed_values"]) for n, f in sorted(fields.items()) if f.get("keep") and f.get("closed_values")]
    if closed_values:
        lines.append("closed values: " + "; ".join(f"{n} [{', '.join(map(str, v))}]" for n, v in closed_values))
    elif gated and strength and strength != "strong":
        lines.append("closed values: none (published only once the gates have earned a vote, docs/policy.md)")
    else:
        lines.append("closed values: none")
    return lines


def main(mask_path: str, truth_path: str, gate_enter: float = 0.5) -> int:
    mask = orjson.loads(open(mask_path, "rb").read())
    truth = orjson.loads(open(truth_path, "rb").read())
    fields = mask["fields"]
    informative = list(truth["informative"])
    noise = list(truth["noise"])
    id_like = set(truth.get("id_like", []))
    print(f"\n{'field':<24}{'truth':<14}{'mask':<8}{'score':>12}{'gate':>7}  reason")
    wrong = []
    for name in informative + noise:
        kind = "informative" if name in informative else ("noise (ID)" if name in id_like else "noise")
        entry = fields.get(name)
        if entry is None:
            print(f"{name:<24}{kind:<14}{'-':<8}{'':>12}{'':>7}  not in mask")
            continue
        keep = "keep" if entry["keep"] else "drop"
        gate = "-" if entry.get("gate_open") is None else f"{entry['gate_open']:.2f}"
        ok = entry["keep"] == (name in informative)
        # the default policy keeps what the evidence cannot show to be cheap (docs/policy.md): a noise
        # field kept as under-powered is the policy's caution, not a wrong decision
        cautious = not ok and name not in informative and _under_powered(entry)
        if not ok and not cautious:
            wrong.append(name)
        mark = "" if ok else ("   (kept: under-powered)" if cautious else "   <-- differs")
        print(f"{name:<24}{kind:<14}{keep:<8}{entry['score']:>12.6f}{gate:>7}  {entry['reason']}{mark}")
    print()
    for line in evidence_lines(mask, truth, gate_enter):
        print(line)
    return 1 if wrong else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mask", help="the mask as `featsieve masks --get MODEL --json` prints it")
    ap.add_argument("truth", help="the generator's ground truth (`featsieve generate --ground-truth`)")
    ap.add_argument("--gate-enter", type=float, default=0.5, help="gate_open at or above which a gate counts as open")
    args = ap.parse_args()
    raise SystemExit(main(args.mask, args.truth, args.gate_enter))
