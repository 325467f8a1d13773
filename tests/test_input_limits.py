"""Input limits are settings: each one, set lower than its default, dead-letters with its own reason.

tests/test_bad_input.py checks the default limits end to end on the broker; this checks that the
configured values reach the codec through settings_map (flag/env names from daemon.config).
"""

from __future__ import annotations

import orjson
import pytest

from connectors.codec import decode_many
from daemon.config import load_settings
from daemon.settings_map import limits_from

ENV = {
    "FEATSIEVE_MAX_MESSAGE_BYTES": "400",
    "FEATSIEVE_MAX_FIELDS_PER_EVENT": "5",
    "FEATSIEVE_MAX_FIELD_NAME_LEN": "8",
    "FEATSIEVE_MAX_VALUE_LEN": "16",
}


def impression(features: dict) -> bytes:
    return orjson.dumps({"type": "impression", "id": "i1", "ts": 1_700_000_000_000, "features": features})


@pytest.mark.parametrize(
    ("features", "reason"),
    [
        ({"a": "x" * 15, "b": "y" * 15, "c": "z" * 15, "d": "w" * 15, "pad": "p" * 300}, "too_large"),
        ({f"f{i}": i for i in range(6)}, "too_many_fields"),
        ({"longname1": 1}, "field_name_too_long"),
        ({"a": "v" * 17}, "value_too_long"),
    ],
)
def test_each_configured_limit_dead_letters_with_its_reason(features: dict, reason: str) -> None:
    limits = limits_from(load_settings(env=ENV))
    ok_raw = impression({f"f{i}": "v" * 16 for i in range(5)})  # exactly at every limit
    bad_raw = impression(features)
    events, bad = decode_many([ok_raw, bad_raw], limits)
    assert len(events) == 1
    assert [(i, e.reason) for i, e in bad] == [(1, reason)]
    # the same records pass under the defaults: it is the setting that made the difference
    events, bad = decode_many([ok_raw, bad_raw], limits_from(load_settings(env={})))
    assert len(events) == 2 and not bad


def test_limits_are_validated_at_start_up() -> None:
    from daemon.config import ConfigError

    with pytest.raises(ConfigError, match="max_fields_per_event"):
        load_settings(env={"FEATSIEVE_MAX_FIELDS_PER_EVENT": "0"})
    with pytest.raises(ConfigError, match="max_message_bytes"):
        load_settings(env={"FEATSIEVE_MAX_MESSAGE_BYTES": "lots"})
