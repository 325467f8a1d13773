"""scripts/test and the no-skip rule: what `make test` and CI count as passing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _script(*args: str, bootstrap: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    port = bootstrap.rsplit(":", 1)[1]  # the running test broker: scripts/test then starts none
    return subprocess.run([str(ROOT / "scripts" / "test"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "FEATSIEVE_TEST_KAFKA_PORT": port, **(env or {})})


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.parametrize("selection", [["-m", "no_such_marker"], ["-k", "no_such_test_name"],
                                       ["tests/test_codec.py::no_such_test"]])
def test_a_selection_that_collects_nothing_fails(selection: list[str], bootstrap: str) -> None:
    done = _script(*selection, bootstrap=bootstrap)
    assert done.returncode != 0, done.stdout[-2000:]
    if selection[0] in ("-m", "-k"):
        assert done.returncode == 5 and "no tests collected for the selection" in done.stderr, done.stderr[-2000:]


@pytest.mark.broker
@pytest.mark.slow
def test_the_whole_suite_collecting_nothing_is_not_a_failure(bootstrap: str) -> None:
    # no arguments (the deselection comes through pytest's environment): exit 5 is no failure
    done = _script(bootstrap=bootstrap, env={"PYTEST_ADDOPTS": "-m no_such_marker"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "deselected" in done.stdout


def _probe(tmp_path: Path, no_skip: bool) -> subprocess.CompletedProcess[str]:
    """pytest on a tree of skipping tests that uses our conftest's hooks."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_needs_a_tool():\n    pytest.skip('no such tool')\n\n"
        "@pytest.mark.xfail(strict=True)\ndef test_known_bug():\n    assert False\n")
    (tmp_path / "test_module_skip.py").write_text(
        "import pytest\n\npytest.importorskip('no_such_module_anywhere')\n\ndef test_x():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATSIEVE_NO_SKIP": "1" if no_skip else ""}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", "--continue-on-collection-errors",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def test_a_skip_is_a_failure_under_featsieve_no_skip(tmp_path: Path) -> None:
    quiet = _probe(tmp_path, no_skip=False)
    assert quiet.returncode == 0 and "2 skipped" in quiet.stdout, quiet.stdout
    strict = _probe(tmp_path, no_skip=True)
    assert strict.returncode == 1, strict.stdout
    assert "1 failed" in strict.stdout and "1 error" in strict.stdout and "skipped" not in strict.stdout.splitlines()[-1]
    assert "FEATSIEVE_NO_SKIP forbids skips" in strict.stdout and "no such tool" in strict.stdout
    assert "1 xfailed" in strict.stdout  # an expected failure is not a skip


def test_allowed_skips_name_real_tests_and_say_why() -> None:
    from tests.conftest import ALLOWED_SKIPS

    for nodeid, why in ALLOWED_SKIPS.items():
        path, _, name = nodeid.partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), nodeid
        assert len(why) > 20, nodeid
