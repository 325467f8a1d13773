"""Renamed settings (config.RENAMED): the old spelling still works everywhere, with a warning."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from daemon.config import RENAMED, SETTINGS_BY_NAME, ConfigError, add_setting_flags, load_settings
from tests.conftest import featsieve

NEW = "mask_republish_interval_s"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_setting_flags(p)
    return p.parse_args(argv)


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "featsieve.toml"
    path.write_text(text)
    return str(path)


def test_the_table_maps_old_names_to_settings() -> None:
    assert RENAMED["heartbeat_interval_s"] == NEW
    for old, new in RENAMED.items():
        assert new in SETTINGS_BY_NAME and old not in SETTINGS_BY_NAME


def test_the_new_name_works_without_a_warning(tmp_path: Path) -> None:
    assert load_settings(env={}).mask_republish_interval_s == 300.0
    for s in (load_settings(env={"FEATSIEVE_MASK_REPUBLISH_INTERVAL_S": "60"}),
              load_settings(parse(["--mask-republish-interval-s", "60"]), env={}),
              load_settings(env={}, config_path=toml(tmp_path, f"{NEW} = 60\n"))):
        assert s.mask_republish_interval_s == 60.0 and s.deprecations == ()


@pytest.mark.parametrize("source", ["toml", "env", "flag"])
def test_the_old_name_still_sets_the_value_and_warns(tmp_path: Path, source: str) -> None:
    if source == "toml":
        s = load_settings(env={}, config_path=toml(tmp_path, "heartbeat_interval_s = 60\n"))
        old = "heartbeat_interval_s"
    elif source == "env":
        s = load_settings(env={"FEATSIEVE_HEARTBEAT_INTERVAL_S": "60"})
        old = "FEATSIEVE_HEARTBEAT_INTERVAL_S"
    else:
        s = load_settings(parse(["--heartbeat-interval-s", "60"]), env={})
        old = "--heartbeat-interval-s"
    assert s.mask_republish_interval_s == 60.0
    assert "heartbeat_interval_s" not in s.values
    (warning,) = s.deprecations
    new = {"toml": NEW, "env": "FEATSIEVE_MASK_REPUBLISH_INTERVAL_S", "flag": "--mask-republish-interval-s"}[source]
    assert old in warning and new in warning and "deprecated" in warning and "\n" not in warning


@pytest.mark.parametrize("source", ["toml", "env", "flag"])
def test_both_names_in_one_source_is_an_error_naming_both(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError) as err:
        if source == "toml":
            load_settings(env={}, config_path=toml(tmp_path, f"heartbeat_interval_s = 60\n{NEW} = 30\n"))
        elif source == "env":
            load_settings(env={"FEATSIEVE_HEARTBEAT_INTERVAL_S": "60", "FEATSIEVE_MASK_REPUBLISH_INTERVAL_S": "30"})
        else:
            load_settings(parse(["--heartbeat-interval-s", "60", "--mask-republish-interval-s", "30"]), env={})
    old, new = {"toml": ("heartbeat_interval_s", NEW),
                "env": ("FEATSIEVE_HEARTBEAT_INTERVAL_S", "FEATSIEVE_MASK_REPUBLISH_INTERVAL_S"),
                "flag": ("--heartbeat-interval-s", "--mask-republish-interval-s")}[source]
    assert old in str(err.value) and new in str(err.value)


def test_sources_keep_their_precedence_across_spellings(tmp_path: Path) -> None:
    s = load_settings(parse(["--mask-republish-interval-s", "30"]), env={"FEATSIEVE_HEARTBEAT_INTERVAL_S": "60"},
                      config_path=toml(tmp_path, "heartbeat_interval_s = 90\n"))
    assert s.mask_republish_interval_s == 30.0 and s.origins[NEW] == "from --mask-republish-interval-s"
    assert len(s.deprecations) == 2  # each old spelling used is reported


def test_the_old_value_is_validated_under_the_new_name() -> None:
    with pytest.raises(ConfigError, match="invalid setting mask_republish_interval_s .*FEATSIEVE_HEARTBEAT_INTERVAL_S"):
        load_settings(env={"FEATSIEVE_HEARTBEAT_INTERVAL_S": "0"})


def test_the_old_flag_is_hidden_from_help() -> None:
    p = argparse.ArgumentParser()
    add_setting_flags(p)
    assert "--mask-republish-interval-s" in p.format_help()
    assert "--heartbeat-interval-s" not in p.format_help()


def test_the_cli_logs_one_warning_line(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("f,clicked\n" + "".join(f"v{i % 3},{i % 2}\n" for i in range(200)))
    proc = featsieve("score", "--input", str(data), "--label", "clicked", "--workers", "1",
                     env={"FEATSIEVE_HEARTBEAT_INTERVAL_S": "60"})
    lines = [line for line in proc.stderr.splitlines() if "FEATSIEVE_HEARTBEAT_INTERVAL_S" in line]
    assert len(lines) == 1 and "FEATSIEVE_MASK_REPUBLISH_INTERVAL_S" in lines[0] and "WARNING" in lines[0], proc.stderr
