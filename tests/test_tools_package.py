"""The tooling (daemon.tools: bench, evaluate, generate, score) stays out of the production path.

Checked in a fresh interpreter, since this test process has imported the tools already:
`featsieve run`'s whole path (argument parsing, settings, logging, dispatch, daemon.serve and
the run loop) imports no daemon.tools module, and neither does importing any module of daemon/,
connectors/ or models/ outside daemon.tools, including modules added after this test was written.
The import-linter contract in pyproject.toml checks the same statically, for a listed set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = r"""
import importlib, json, pkgutil, sys
import daemon.serve

def serve_stand_in(*args, **kwargs):
    # the loop itself needs a broker; what is under test is what the run path imported
    return 0

daemon.serve.serve = serve_stand_in
from daemon.cli import main

rc = main(["run"])
tools = lambda: sorted(m for m in sys.modules if m == "daemon.tools" or m.startswith("daemon.tools."))
after_run = tools()
ran_loop = "daemon.runloop" in sys.modules
imported = []

def walk(package):
    # not pkgutil.walk_packages: it imports every subpackage to look inside, daemon.tools too
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."):
        if info.name == "daemon.tools":
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
        if info.ispkg:
            walk(info.name)

for package in ("daemon", "connectors", "models"):
    walk(package)
print(json.dumps({"rc": rc, "after_run": after_run, "ran_loop": ran_loop,
                  "imported": imported, "after_all": tools()}))
"""


def test_run_path_and_production_modules_import_no_tools() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0
    assert out["ran_loop"], "the probe did not go through featsieve run's path"
    assert out["after_run"] == []
    assert {"daemon.cli", "daemon.runloop", "connectors.kafka_io", "models.mi"} <= set(out["imported"])
    assert out["after_all"] == []


def test_cli_still_offers_the_tool_subcommands() -> None:
    """Moving the tools changed no command: each subcommand's --help still works from the CLI."""
    for command in ("generate", "score", "evaluate", "bench"):
        proc = subprocess.run([sys.executable, "-m", "daemon.cli", command, "--help"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"featsieve {command}" in proc.stdout or "usage:" in proc.stdout
