"""SASL OAUTHBEARER with a token file, against a private broker with an OAUTHBEARER listener.

The broker validates tokens with Kafka's unsecured validator (header alg "none"), which checks
the subject and the expiry as a real validator would, without an identity provider.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from connectors.kafka_io import FileTokenProvider
from daemon.config import ConfigError, load_settings
from tests.conftest import BIN, ROOT, featsieve
from tests.private_broker import PrivateBroker, unsecured_token


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path_factory.mktemp("oauth"), oauthbearer=True)
    try:
        broker.up()
        yield broker
    finally:
        broker.down()


def _oauth_env(token_file: Path) -> dict[str, str]:
    return {"FEATSIEVE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FEATSIEVE_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "FEATSIEVE_KAFKA_SASL_OAUTH_TOKEN_FILE": str(token_file)}


@pytest.mark.broker
@pytest.mark.slow
def test_daemon_logs_in_with_the_token_file_and_follows_its_refresh(broker: PrivateBroker, unique: str,
                                                                     tmp_path: Path) -> None:
    """An expired token: the daemon cannot log in and retries; once the file holds a fresh
    token, its next attempt logs in (no restart) and it publishes. generate and masks log in
    with the same settings."""
    token_file = tmp_path / "token"
    token_file.write_text(unsecured_token("featsieve") + "\n")
    env = _oauth_env(token_file)
    topics = f"{unique}.impressions,{unique}.clicks"
    featsieve("generate", "--bootstrap", broker.oauth_bootstrap, "--preset", "small", "--impressions", "3000",
              "--input-topics", topics, env=env)

    expired = unsecured_token("featsieve", lifetime_s=-3600, now=time.time() - 7200)
    token_file.write_text(expired)
    args = ["run", "--bootstrap", broker.oauth_bootstrap, "--input-topics", topics, "--group-id", unique,
            "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
            "--state-dir", str(tmp_path / "state"), "--metrics-port", "0", "--exit-at-end",
            "--gates", "false", "--decode-process", "false"]
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "featsieve"), *args], cwd=ROOT, env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while "cannot connect to Kafka" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
            assert "cannot connect to Kafka" in log.read_text()
            fresh = unsecured_token("featsieve")
            token_file.write_text(fresh)
            assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert "mask published" in text
    assert expired not in text and fresh not in text  # tokens are never logged

    got = featsieve("masks", "--bootstrap", broker.oauth_bootstrap, "--mask-topic", f"{unique}.masks",
                    "--get", unique, "--json", env=env)
    assert orjson.loads(got.stdout)["model_id"] == unique


def test_token_file_is_read_at_every_login(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    provider = FileTokenProvider(str(token_file))
    assert provider.token() == "first-token"
    token_file.write_text("second-token")
    assert provider.token() == "second-token"
    assert "token" not in repr(provider).replace(str(token_file), "")


def test_oauthbearer_settings_are_checked(tmp_path: Path) -> None:
    base = {"FEATSIEVE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "FEATSIEVE_KAFKA_SASL_MECHANISM": "OAUTHBEARER"}
    with pytest.raises(ConfigError, match="kafka_sasl_oauth_token_file: required when kafka_sasl_mechanism is OAUTHBEARER"):
        load_settings(env=base)
    with pytest.raises(ConfigError, match="kafka_sasl_oauth_token_file: .* is not a readable file"):
        load_settings(env={**base, "FEATSIEVE_KAFKA_SASL_OAUTH_TOKEN_FILE": str(tmp_path / "absent")})
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-value")
    settings = load_settings(env={**base, "FEATSIEVE_KAFKA_SASL_OAUTH_TOKEN_FILE": str(token_file)})
    from daemon.settings_map import endpoint_from

    opts = endpoint_from(settings).options()
    assert opts["sasl_mechanism"] == "OAUTHBEARER" and "sasl_plain_username" not in opts
    assert opts["sasl_oauth_token_provider"].token() == "t0ken-value"
