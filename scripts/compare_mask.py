"""Print a published mask next to the generator's ground truth; exit 1 if they disagree."""

from __future__ import annotations

import sys

import orjson


def main(mask_path: str, truth_path: str) -> int:
    mask = orjson.loads(open(mask_path, "rb").read())
    truth = orjson.loads(open(truth_path, "rb").read())
    fields = mask["fields"]
    informative = list(truth["informative"])
    noise = list(truth["noise"])
    id_like = set(truth.get("id_like", []))
    print(f"\n{'field':<24}{'truth':<14}{'mask':<8}{'score':>12}  reason")
    wrong = []
    for name in informative + noise:
        kind = "informative" if name in informative else ("noise (ID)" if name in id_like else "noise")
        entry = fields.get(name)
        if entry is None:
            print(f"{name:<24}{kind:<14}{'-':<8}{'':>12}  not in mask")
            continue
        keep = "keep" if entry["keep"] else "drop"
        ok = entry["keep"] == (name in informative)
        if not ok:
            wrong.append(name)
        print(f"{name:<24}{kind:<14}{keep:<8}{entry['score']:>12.6f}  {entry['reason']}{'' if ok else '   <-- differs'}")
    kept_inf = sum(1 for n in informative if fields.get(n, {}).get("keep"))
    dropped_noise = sum(1 for n in noise if n in fields and not fields[n]["keep"])
    print(f"\ninformative kept: {kept_inf}/{len(informative)}   noise dropped: {dropped_noise}/{len(noise)}"
          f"   (mask version {mask['version']}, epoch {mask['epoch']})")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
