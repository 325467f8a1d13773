"""Failpoints (connectors/failpoints.py): the test hooks that kill or pause the process at a named step."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from connectors import failpoints
from connectors.failpoints import FailpointSpecError, parse


def test_spec_parses_and_bad_specs_are_refused() -> None:
    assert parse("snapshot_write:3") == {"snapshot_write": (3, "kill")}
    assert parse("poll:2=pause, writer_fenced:1") == {"poll": (2, "pause"), "writer_fenced": (1, "kill")}
    for bad in ("poll", "poll:x", ":1", "poll:1=explode"):
        with pytest.raises(FailpointSpecError):
            parse(bad)


def test_kill_ends_the_process_at_the_nth_hit_only() -> None:
    code = ("from connectors import failpoints\n"
            "for i in range(1, 6):\n    print(i, flush=True)\n    failpoints.hit('step')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"FEATSIEVE_FAILPOINT": "step:3", "PYTHONPATH": "."})
    assert done.returncode == 137 and done.stdout.split() == ["1", "2", "3"], (done.returncode, done.stdout)


def test_pause_holds_until_the_stop_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATSIEVE_FAILPOINT", "unit_pause:1=pause")
    monkeypatch.setattr(failpoints, "_hits", {})
    stop = threading.Event()
    t = threading.Thread(target=failpoints.hit, args=("unit_pause",), kwargs={"until": stop.is_set})
    t.start()
    t.join(0.5)
    assert t.is_alive()  # standing still
    stop.set()
    t.join(10)
    assert not t.is_alive()
    failpoints.hit("unit_pause", until=lambda: False)  # the second hit passes straight through


def test_pause_also_ends_when_the_resume_file_appears(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    resume = tmp_path / "go"
    monkeypatch.setenv("FEATSIEVE_FAILPOINT", "unit_resume:1=pause")
    monkeypatch.setenv("FEATSIEVE_FAILPOINT_RESUME", str(resume))
    monkeypatch.setattr(failpoints, "_hits", {})
    t = threading.Thread(target=failpoints.hit, args=("unit_resume",))
    t.start()
    t.join(0.5)
    assert t.is_alive()
    resume.touch()
    t.join(10)
    assert not t.is_alive()
