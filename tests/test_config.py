"""Settings: precedence, the contract names operators use, and clear errors for bad values."""

from __future__ import annotations

import argparse

import pytest

from daemon.config import SETTINGS, ConfigError, Secret, add_setting_flags, load_settings

CONTRACT = {
    "bootstrap": ("FEATSIEVE_BOOTSTRAP", "--bootstrap", ["127.0.0.1:9092"]),
    "input_topics": ("FEATSIEVE_INPUT_TOPICS", "--input-topics", ["ad.impressions", "ad.clicks"]),
    "mask_topic": ("FEATSIEVE_MASK_TOPIC", "--mask-topic", "featsieve.masks"),
    "dlq_topic": ("FEATSIEVE_DLQ_TOPIC", "--dlq-topic", "featsieve.dlq"),
    "model_id": ("FEATSIEVE_MODEL_ID", "--model-id", "default"),
    "group_id": ("FEATSIEVE_GROUP_ID", "--group-id", "featsieve"),
    "state_dir": ("FEATSIEVE_STATE_DIR", "--state-dir", "./featsieve-state"),
    "metrics_port": ("FEATSIEVE_METRICS_PORT", "--metrics-port", 9400),
    "attribution_window_s": ("FEATSIEVE_ATTRIBUTION_WINDOW_S", "--attribution-window-s", 1800),
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_setting_flags(p)
    return p.parse_args(argv)


def test_contract_names_and_defaults() -> None:
    by_name = {s.name: s for s in SETTINGS}
    settings = load_settings(parse([]), env={})
    for name, (env, flag, default) in CONTRACT.items():
        assert by_name[name].env == env
        assert by_name[name].flag == flag
        assert getattr(settings, name) == default


def test_precedence_flag_over_env_over_toml(tmp_path) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text('model_id = "from-toml"\ngroup_id = "g-toml"\nmetrics_port = 1111\n')
    env = {"FEATSIEVE_MODEL_ID": "from-env", "FEATSIEVE_METRICS_PORT": "2222"}
    s = load_settings(parse(["--config", str(toml), "--model-id", "from-flag"]), env=env)
    assert s.model_id == "from-flag"
    assert s.metrics_port == 2222
    assert s.group_id == "g-toml"
    assert s.origins["model_id"] == "from --model-id"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FEATSIEVE_METRICS_PORT": "abc"}, "metrics_port"),
        ({"FEATSIEVE_METRICS_PORT": "70000"}, "metrics_port"),
        ({"FEATSIEVE_BOOTSTRAP": "nohostport"}, "bootstrap"),
        ({"FEATSIEVE_INPUT_TOPICS": "bad topic!"}, "input_topics"),
        ({"FEATSIEVE_POLICY_MODE": "sometimes"}, "policy_mode"),
        ({"FEATSIEVE_GATES": "maybe"}, "gates"),
        ({"FEATSIEVE_ATTRIBUTION_WINDOW_S": "nan"}, "attribution_window_s"),
        ({"FEATSIEVE_EXIT_THRESHOLD": "1", "FEATSIEVE_ENTER_THRESHOLD": "0.5"}, "exit_threshold"),
        ({"FEATSIEVE_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "kafka_ssl_cafile"),
        ({"FEATSIEVE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "kafka_sasl_username"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(parse([]), env=env)


def test_choice_error_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match="mi, gates, both, either"):
        load_settings(parse([]), env={"FEATSIEVE_POLICY_MODE": "x"})


def test_unknown_toml_key_is_an_error(tmp_path) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text("bootstrapp = 'x:1'\n")
    with pytest.raises(ConfigError, match="bootstrapp"):
        load_settings(parse(["--config", str(toml)]), env={})


def test_secret_never_printed(tmp_path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("hunter2-very-secret\n")
    s = load_settings(
        parse([]),
        env={
            "FEATSIEVE_KAFKA_SASL_PASSWORD": "s3cr3t-value",
            "FEATSIEVE_KAFKA_SASL_USERNAME": "u",
            "FEATSIEVE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        },
    )
    assert "s3cr3t-value" not in repr(s) and "s3cr3t-value" not in str(s.describe())
    assert isinstance(s.kafka_sasl_password, Secret) and s.sasl_password().reveal() == "s3cr3t-value"
    s2 = s.with_overrides(kafka_sasl_password_file=str(secret_file))
    assert s2.sasl_password().reveal() == "hunter2-very-secret"
    with pytest.raises(ConfigError) as info:
        load_settings(parse([]), env={"FEATSIEVE_KAFKA_SASL_PASSWORD": "", "FEATSIEVE_MIN_Z": "s3cr3t"})
    assert "min_z" in str(info.value)


def test_secrets_are_not_flags() -> None:
    p = argparse.ArgumentParser()
    add_setting_flags(p)
    assert "--kafka-sasl-password " not in p.format_help()


def test_settings_survive_pickling() -> None:
    """The bench hands settings to each pass's own process by pickle."""
    import pickle

    s = load_settings(env={"FEATSIEVE_GROUP_ID": "g1", "FEATSIEVE_KAFKA_SASL_PASSWORD": "pw"})
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back.group_id == "g1" and back.kafka_sasl_password.reveal() == "pw"
    with pytest.raises(AttributeError):
        back.no_such_setting  # noqa: B018


def test_bootstrap_server_is_an_alias_of_bootstrap() -> None:
    assert load_settings(parse(["--bootstrap-server", "k1:9092,k2:9092"]), env={}).bootstrap == ["k1:9092", "k2:9092"]
    assert load_settings(parse(["--bootstrap", "k3:9092"]), env={}).bootstrap == ["k3:9092"]
    with pytest.raises(ConfigError, match="invalid setting bootstrap"):
        load_settings(parse(["--bootstrap-server", "nohostport"]), env={})


def test_topic_replication_settings(tmp_path) -> None:
    defaults = load_settings(parse([]), env={})
    assert defaults.topic_replication_factor == -1 and defaults.topic_min_insync_replicas == -1  # the broker's
    toml = tmp_path / "f.toml"
    toml.write_text("topic_replication_factor = 3\ntopic_min_insync_replicas = 2\n")
    s = load_settings(parse(["--config", str(toml)]), env={})
    assert (s.topic_replication_factor, s.topic_min_insync_replicas) == (3, 2)
    for env, needle in (
        ({"FEATSIEVE_TOPIC_REPLICATION_FACTOR": "0"}, "topic_replication_factor .*-1 .*or 1 or more"),
        ({"FEATSIEVE_TOPIC_MIN_INSYNC_REPLICAS": "-2"}, "topic_min_insync_replicas"),
        ({"FEATSIEVE_TOPIC_REPLICATION_FACTOR": "2", "FEATSIEVE_TOPIC_MIN_INSYNC_REPLICAS": "3"},
         "topic_min_insync_replicas: 3 exceeds topic_replication_factor"),
    ):
        with pytest.raises(ConfigError, match=needle):
            load_settings(parse([]), env=env)


def test_client_properties_from_toml_env_and_flag(tmp_path) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text('[kafka_client_properties]\n"client.rack" = "eu-1a"\nrequest_timeout_ms = 40000\n')
    assert load_settings(parse(["--config", str(toml)]), env={}).kafka_client_properties == {
        "client.rack": "eu-1a", "request_timeout_ms": 40000}
    env = {"FEATSIEVE_KAFKA_CLIENT_PROPERTIES": '{"client.rack": "eu-1b"}'}
    assert load_settings(parse(["--config", str(toml)]), env=env).kafka_client_properties == {"client.rack": "eu-1b"}
    flag = load_settings(parse(["--kafka-client-properties", '{"client_id": "x"}']), env=env)
    assert flag.kafka_client_properties == {"client_id": "x"}
    with pytest.raises(ConfigError, match="kafka_client_properties .*expected a JSON object"):
        load_settings(parse([]), env={"FEATSIEVE_KAFKA_CLIENT_PROPERTIES": "client.rack=x"})
