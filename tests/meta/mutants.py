"""Targeted fault injection: each formerly unfalsifiable test must fail on a deliberately broken build.

A :class:`Mutant` is one small, named change to the product code (an exact text replaced in one
file) and the test that must catch it. :func:`run` copies the repository's files to a temporary
directory, applies the change there (the working tree is never touched), runs that one test
against the copy and reports whether it failed at the assertion named by ``expect``. A mutant
that survives (the test passes), or a test that errors, or fails elsewhere, is a finding.

Run them all with ``make mutants`` or ``python -m tests.meta.mutants [NAME ...]``; the suite
runs each as ``tests/test_mutants.py`` (slow, broker). Each takes one test's time: a few minutes
for all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    """``old`` (exactly once in ``path``) becomes ``new``; ``test`` must then fail at ``expect``."""

    name: str
    path: str
    old: str
    new: str
    test: str  # a pytest node id
    expect: str  # text of the failing assertion's line, as pytest prints it
    why: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "dlq-empties-values", "connectors/dead_letters.py",
        '        return Letter(key, value, headers)\n    cut = "value"', '        return Letter(key, b"", headers)\n    cut = "value"',
        "tests/test_security.py::test_daemon_generate_masks_and_subscriber_work_over_sasl_ssl",
        "assert sorted(letter.value for letter in letters) == sorted(bad)",
        "the SASL_SSL test only saw the metric's HELP line, never a dead letter",
    ),
    Mutant(
        "dlq-offset-off-by-one", "connectors/dead_letters.py",
        '("featsieve.source.offset", str(offset).encode())', '("featsieve.source.offset", str(offset + 1).encode())',
        "tests/test_bad_input.py::test_malformed_events_go_to_the_dlq_and_good_ones_count_once",
        "assert (origin.key, origin.value) == (r.key, r.value), h",
        "no header but the reason was checked",
    ),
    Mutant(
        "dlq-drops-original-key", "connectors/dead_letters.py",
        "        if key is not None:\n            out.append", "        if False:\n            out.append",
        "tests/test_bad_input.py::test_malformed_events_go_to_the_dlq_and_good_ones_count_once",
        'assert h.get("featsieve.original.key") ==',
        "no header but the reason was checked",
    ),
    Mutant(
        "metrics-addr-ignored", "daemon/serve.py",
        "host=settings.metrics_addr,", 'host="127.0.0.1",',
        "tests/test_http_limits.py::test_metrics_addr_defaults_to_loopback_and_is_configurable[127.0.0.2]",
        "assert got == {want}, got",
        "the test asserted the address it passed to the server itself",
    ),
    Mutant(
        "decode-bad-index-shifted", "connectors/decode_worker.py",
        "bad += [(start + i, err.reason, err.detail)", "bad += [(start + i + 1, err.reason, err.detail)",
        "tests/test_decode_worker.py::test_the_worker_decodes_exactly_like_the_loop",
        "assert [(i, e.reason) for i, e in got[1][1]] ==",
        "`assert [len(b) ...] and ...`: a non-empty list is always true",
    ),
    Mutant(
        "mi-scores-numpy-scalars", "models/mi.py",
        "positives=int(table[:, 1].sum())", "positives=table[:, 1].sum()",
        "tests/test_decode_worker.py::test_the_daemon_ends_in_the_same_state_with_or_without_the_worker",
        "assert {type(x) for v in in_loop.values() for x in v} <= {int, float}, in_loop",
        "`assert orjson.dumps(...)`: non-empty bytes are always true",
    ),
    Mutant(
        "ground-truth-ignores-seed", "daemon/tools/synthetic.py",
        "    model = _Model(config)\n    mi, xor_mi = model.true_mi()",
        "    model = _Model(replace(config, seed=0))\n    mi, xor_mi = model.true_mi()",
        "tests/test_synthetic.py::test_same_config_same_bytes_other_seed_other_bytes",
        'assert one["true_mi"] != other["true_mi"]',
        "the truth was compared with itself",
    ),
    Mutant(
        "record-bytes-miscounted", "connectors/kafka_compat.py",
        "self.bytes_read += size\n", "self.bytes_read += size + 1\n",
        "tests/test_record_reader.py::test_plain_batches_give_the_same_records_offsets_and_counts",
        "assert (fast.records_read, fast.bytes_read) == (slow.records_read, slow.bytes_read) ==",
        "`== (200, slow.bytes_read)` compared a value with itself",
    ),
    Mutant(
        "gates-split-compares-with-itself", "daemon/tools/bench_gates_split.py",
        '"auc_gated_diff": _diff(m["auc_gated"], b["auc_gated"])', '"auc_gated_diff": _diff(m["auc_gated"], m["auc_gated"])',
        "tests/test_bench_gates_split.py::test_tiny_suite_shape_and_its_single_instance_equals_a_direct_run",
        'assert vs["auc_gated_diff"] == m["auc_gated"] - b["auc_gated"]',
        "only the single run's difference with itself (0) was checked",
    ),
)


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    killed: bool  # the test failed, at the expected assertion
    detail: str


def copy_repo(dest: Path) -> None:
    """The repository's files as they are now (tracked and new, not ignored) under ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def apply(mutant: Mutant, tree: Path) -> None:
    path = tree / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise ValueError(f"mutant {mutant.name}: the text to change occurs {count} times in {mutant.path}, not once")
    path.write_text(text.replace(mutant.old, mutant.new))


def run(mutant: Mutant, timeout: float = 900) -> Outcome:
    """Apply ``mutant`` to a copy of the repository and run its test there."""
    with tempfile.TemporaryDirectory(prefix=f"featsieve-mutant-{mutant.name}-") as tmp:
        tree = Path(tmp)
        copy_repo(tree)
        apply(mutant, tree)
        env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy's code, not the installed one
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=", mutant.test],
            cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    if proc.returncode == 0:
        return Outcome(mutant, False, f"survived: the test passed ({summary})")
    failed_at = [line for line in out.splitlines() if line.startswith(">")]
    if proc.returncode != 1 or " failed" not in summary or " error" in summary:
        return Outcome(mutant, False, f"the test did not fail cleanly (exit {proc.returncode}): {summary}\n{out[-3000:]}")
    if not any(mutant.expect in line for line in failed_at) and mutant.expect not in out:
        return Outcome(mutant, False, f"failed, but not at `{mutant.expect}`:\n{out[-3000:]}")
    return Outcome(mutant, True, summary)


def main(argv: list[str]) -> int:
    by_name = {m.name: m for m in MUTANTS}
    unknown = [n for n in argv if n not in by_name]
    if unknown:
        print(f"unknown mutant(s): {', '.join(unknown)}; known: {', '.join(by_name)}", file=sys.stderr)
        return 2
    survivors = 0
    for mutant in [by_name[n] for n in argv] or list(MUTANTS):
        outcome = run(mutant)
        survivors += not outcome.killed
        print(f"{'killed ' if outcome.killed else 'SURVIVED'} {mutant.name}: {mutant.test}"
              + ("" if outcome.killed else f"\n{outcome.detail}"), flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
