"""End to end on the real broker: generate → daemon → mask, read back by kcat (an independent client)."""

from __future__ import annotations

import json

import orjson
import pytest

from tests.conftest import featsieve, kcat_read

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_generated_stream_gives_the_ground_truth_mask(bootstrap: str, unique: str, tmp_path) -> None:
    topics = f"{unique}.impressions,{unique}.clicks"
    truth_path = tmp_path / "truth.json"
    featsieve(
        "generate", "--bootstrap", bootstrap, "--preset", "default", "--impressions", "60000",
        "--event-rate", "5", "--input-topics", topics, "--ground-truth", str(truth_path), "--seed", "3",
    )
    run = featsieve(
        "run", "--bootstrap", bootstrap, "--input-topics", topics, "--group-id", unique,
        "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
        "--state-dir", str(tmp_path / "state"), "--metrics-port", "0", "--exit-at-end", "--gates", "false",
    )
    assert "mask published" in run.stderr

    lines = kcat_read(bootstrap, f"{unique}.masks")
    masks = [orjson.loads(line.split("\t", 1)[1]) for line in lines if line.startswith(unique + "\t")]
    assert masks, "kcat read no mask for the model"
    versions = [m["version"] for m in masks]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    mask = masks[-1]
    assert mask["schema"] == 1 and mask["model_id"] == unique

    truth = json.loads(truth_path.read_text())
    fields = mask["fields"]
    # gates off: MI alone decides (docs/policy.md, mode budget). Informative fields are kept; ID-like
    # fields go; a noise field is dropped, or kept only as under-powered (its pairs with the wide
    # informative fields cannot be counted exactly, so MI cannot rule out an interaction) - never
    # as a field shown to be worth keeping
    assert mask["policy"]["mode"] == "budget" and mask["policy"]["gate_evidence"] == "none"
    for name in truth["informative"]:
        assert fields[name]["keep"], (name, fields[name])
    for name in truth["id_like"]:
        assert (fields[name]["keep"], fields[name]["reason"]) == (False, "id_like"), (name, fields[name])
    for name in truth["noise"]:
        assert not fields[name]["keep"] or fields[name]["reason"] == "insufficient_evidence", (name, fields[name])

    got = featsieve("masks", "--bootstrap", bootstrap, "--mask-topic", f"{unique}.masks", "--get", unique, "--json")
    assert orjson.loads(got.stdout)["version"] == mask["version"]
