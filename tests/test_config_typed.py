"""Typed settings: every setting has an annotation of its kind, so a misspelt name is a mypy error."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

from daemon.config import SETTINGS, Secret, Settings, SettingValues, _parse, load_settings

ROOT = Path(__file__).resolve().parent.parent

# the type _parse returns for each kind
KIND_TYPES: dict[str, Any] = {
    "str": str, "int": int, "float": float, "bool": bool, "list": list[str], "secret": Secret,
    "choice": str, "table": dict[str, Any], "rate": float | str,
}


def test_every_setting_and_only_settings_are_annotated() -> None:
    hints = typing.get_type_hints(SettingValues)
    assert sorted(hints) == sorted(s.name for s in SETTINGS)


def test_each_annotation_is_the_type_of_its_kind() -> None:
    hints = typing.get_type_hints(SettingValues)
    wrong = {s.name: (s.kind, hints[s.name]) for s in SETTINGS if hints[s.name] != KIND_TYPES[s.kind]}
    assert not wrong


def test_parsed_values_have_the_annotated_types() -> None:
    """The table above is what _parse really returns: each default goes through it."""
    for setting in SETTINGS:
        raw = setting.default if setting.kind != "secret" else "pw"
        value = _parse(setting, raw, "test")
        kind_type = KIND_TYPES[setting.kind]
        if isinstance(kind_type, types.UnionType):  # "rate": a number, or "auto"
            assert isinstance(value, typing.get_args(kind_type)), (setting.name, type(value))
            continue
        expected = typing.get_origin(kind_type) or kind_type
        assert type(value) is expected, (setting.name, type(value))


def test_annotations_are_not_dataclass_fields() -> None:
    assert [f.name for f in dataclasses.fields(Settings)] == ["values", "origins", "deprecations"]
    s = load_settings(env={"FEATSIEVE_GATE_WINDOW": "5000"})
    assert s.gate_window == 5000 and Settings(s.values, s.origins) == s
    assert pickle.loads(pickle.dumps(s)).gate_window == 5000
    assert s.with_overrides(gate_window=7000).gate_window == 7000


def _mypy(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    snippet = tmp_path / "snippet.py"
    snippet.write_text("from daemon.config import load_settings\n\ns = load_settings(env={})\n" + body)
    # only the snippet, with the project's configuration; imported modules are not re-reported
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--follow-imports=silent",
         str(snippet)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_a_misspelt_setting_is_a_mypy_error(tmp_path: Path) -> None:
    bad = _mypy(tmp_path, "interval: float = s.heartbeat_intervall_s\n")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert '"Settings" has no attribute "heartbeat_intervall_s"' in bad.stdout
    wrong_type = _mypy(tmp_path, "name: int = s.model_id\n")
    assert wrong_type.returncode == 1 and "incompatible types in assignment" in wrong_type.stdout.lower()
    good = _mypy(tmp_path, "interval: float = s.mask_interval_s\nname: str = s.model_id\n")
    assert good.returncode == 0, good.stdout + good.stderr


def test_the_runtime_lookup_still_refuses_unknown_names() -> None:
    s: Any = load_settings(env={})
    try:
        s.no_such_setting  # noqa: B018
    except AttributeError as exc:
        assert "no_such_setting" in str(exc)
    else:
        raise AssertionError("an unknown setting must raise AttributeError")

