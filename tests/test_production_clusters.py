"""Production clusters: replicated internal topics, required topic configs, client properties.

The cluster test starts its own 3-node KRaft cluster (``scripts/kafka cluster-up``, every node a
broker and a controller) with ``min.insync.replicas=2``; the other broker tests use the suite's
shared single broker.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from daemon.config import ConfigError, load_settings
from tests.conftest import BIN, ROOT, featsieve
from tests.private_broker import PrivateCluster


def _topic_info(admin: KafkaAdminClient, topics: list[str]) -> dict[str, dict]:
    return {t["name"]: t for t in admin.describe_topics(topics)}


def _topic_configs(admin: KafkaAdminClient, topic: str, names: list[str]) -> dict[str, dict]:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=dict.fromkeys(names))
    return admin.describe_configs([resource], config_filter="all")["topic"][topic]


def _masks(bootstrap: str, topic: str, model: str) -> list[dict]:
    """Committed masks of ``model``, read with featsieve's own reader (read_committed)."""
    got = featsieve("masks", "--bootstrap-server", bootstrap, "--mask-topic", topic, "--get", model, "--json")
    return [orjson.loads(got.stdout)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    cluster = PrivateCluster(tmp_path_factory.mktemp("cluster"), nodes=3, replication_factor=3, min_insync_replicas=2)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.mark.broker
@pytest.mark.slow
def test_daemon_writes_masks_on_three_brokers_with_min_isr_2(cluster: PrivateCluster, unique: str, tmp_path: Path) -> None:
    """Group mode makes all four internal topics; each gets 3 replicas and min.insync.replicas 2,
    and the transactional mask writer publishes with acks=all, also with one broker stopped."""
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstraps)
    try:
        broker = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1",
                                                        configs={"min.insync.replicas": None})],
                                        config_filter="all")["broker"]["1"]
        assert broker["min.insync.replicas"]["value"] == "2"  # the script's cluster setting

        topics = f"{unique}.impressions,{unique}.clicks"
        featsieve("generate", "--bootstrap-server", cluster.bootstrap, "--preset", "small",
                  "--impressions", "20000", "--input-topics", topics, "--seed", "5")
        internal = {"mask": f"{unique}.masks", "dlq": f"{unique}.dlq", "stats": f"{unique}.stats",
                    "control": f"{unique}.control"}
        run_args = [
            "run", "--bootstrap-server", cluster.bootstrap, "--input-topics", topics, "--group-id", unique,
            "--model-id", unique, "--mask-topic", internal["mask"], "--dlq-topic", internal["dlq"],
            "--stats-topic", internal["stats"], "--control-topic", internal["control"],
            "--coordination", "group", "--state-dir", str(tmp_path / "state"), "--metrics-port", "0",
            "--exit-at-end", "--gates", "false", "--decode-process", "false",
            "--topic-replication-factor", "3", "--topic-min-insync-replicas", "2",
        ]
        run = featsieve(*run_args)
        assert "mask published" in run.stderr

        info = _topic_info(admin, list(internal.values()))
        for name in internal.values():
            for partition in info[name]["partitions"]:
                assert len(partition["replica_nodes"]) == 3, (name, partition)
                assert len(partition["isr_nodes"]) == 3, (name, partition)
            isr = _topic_configs(admin, name, ["min.insync.replicas"])["min.insync.replicas"]
            # set on the topic by topic_min_insync_replicas, not inherited from the broker
            assert isr["value"] == "2" and isr["config_source"] == "DYNAMIC_TOPIC_CONFIG", (name, isr)
        for name in (internal["mask"], internal["stats"]):
            assert _topic_configs(admin, name, ["cleanup.policy"])["cleanup.policy"]["value"] == "compact"

        first = _masks(cluster.bootstrap, internal["mask"], unique)[-1]
        assert first["model_id"] == unique and first["fields"]

        # One broker gone: every partition keeps 2 in-sync replicas, enough for acks=all under
        # min.insync.replicas=2, so the next writer (a new epoch) still publishes.
        cluster.node_down(3)
        featsieve("generate", "--bootstrap", ",".join(cluster.bootstraps[:2]), "--preset", "small",
                  "--impressions", "2000", "--input-topics", topics, "--seed", "6")
        again = featsieve(*[a if a != cluster.bootstrap else ",".join(cluster.bootstraps[:2]) for a in run_args])
        assert "mask published" in again.stderr
        latest = _masks(",".join(cluster.bootstraps[:2]), internal["mask"], unique)[-1]
        assert (latest["epoch"], latest["version"]) > (first["epoch"], first["version"])
    finally:
        admin.close()


def _run_args(bootstrap: str, unique: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--bootstrap", bootstrap, "--input-topics", f"{unique}.impressions,{unique}.clicks",
            "--group-id", unique, "--model-id", unique, "--mask-topic", f"{unique}.masks",
            "--dlq-topic", f"{unique}.dlq", "--stats-topic", f"{unique}.stats", "--control-topic", f"{unique}.control",
            "--state-dir", str(tmp_path / "state"), "--metrics-port", "0", "--exit-at-end", "--gates", "false",
            "--decode-process", "false", *extra]


@pytest.mark.broker
@pytest.mark.parametrize(("which", "mode"), [("masks", "single"), ("stats", "group")])
def test_daemon_refuses_an_existing_topic_that_is_not_compacted(bootstrap: str, unique: str, tmp_path: Path,
                                                                which: str, mode: str) -> None:
    topic = f"{unique}.{which}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "delete"})])
        run = featsieve(*_run_args(bootstrap, unique, tmp_path, "--coordination", mode), check=False, timeout=120)
        assert run.returncode == 2, run.stderr
        line = run.stderr.strip().splitlines()[-1]
        assert line.startswith("featsieve run: invalid setting ") and "Traceback" not in run.stderr
        assert topic in line and "cleanup.policy=delete" in line and "compact" in line
        assert "kafka-configs.sh" in line  # how to fix it
        # the operator's topic is left as it was
        assert _topic_configs(admin, topic, ["cleanup.policy"])["cleanup.policy"]["value"] == "delete"
    finally:
        admin.close()


@pytest.mark.broker
def test_compact_delete_policy_is_accepted_and_not_altered(bootstrap: str, unique: str, tmp_path: Path) -> None:
    """``compact,delete`` compacts (and also expires): featsieve starts and leaves the policy alone."""
    topic = f"{unique}.masks"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact,delete"})])
        featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "2000",
                  "--input-topics", f"{unique}.impressions,{unique}.clicks")
        run = featsieve(*_run_args(bootstrap, unique, tmp_path), timeout=180)
        assert "mask published" in run.stderr
        assert _topic_configs(admin, topic, ["cleanup.policy"])["cleanup.policy"]["value"] == "compact,delete"
    finally:
        admin.close()


@pytest.mark.broker
def test_more_replicas_than_brokers_stops_start_up_naming_the_setting(bootstrap: str, unique: str, tmp_path: Path) -> None:
    run = featsieve(*_run_args(bootstrap, unique, tmp_path, "--topic-replication-factor", "3"), check=False, timeout=120)
    assert run.returncode == 2, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert "topic_replication_factor" in line and "replication factor 3" in line and "broker" in line
    assert "Traceback" not in run.stderr


@pytest.mark.broker
def test_client_properties_reach_every_client(bootstrap: str, unique: str) -> None:
    """Each client gets the properties its class knows: client.rack only the consumer."""
    from connectors.kafka_io import make_admin, make_consumer, make_producer
    from daemon.settings_map import endpoint_from

    settings = load_settings(env={
        "FEATSIEVE_BOOTSTRAP": bootstrap,
        "FEATSIEVE_KAFKA_CLIENT_PROPERTIES": orjson.dumps(
            {"client.id": unique, "client.rack": "rack-a", "linger_ms": 7, "request.timeout.ms": 20000}).decode(),
    })
    endpoint = endpoint_from(settings)
    consumer = make_consumer(endpoint, group_id=None)
    producer = make_producer(endpoint)
    admin = make_admin(endpoint)
    try:
        assert consumer.config["client_rack"] == "rack-a"
        for client in (consumer, producer, admin):
            assert client.config["client_id"] == unique
            assert client.config["request_timeout_ms"] == 20000
        assert producer.config["linger_ms"] == 7
        assert "client_rack" not in producer.config and "client_rack" not in admin.config
        # a component's own need wins over a property (the DLQ producer's linger, say)
        assert make_producer(endpoint, linger_ms=20).config["linger_ms"] == 20
        assert consumer.topics() is not None  # and the clients work with them
    finally:
        consumer.close()
        producer.close()
        admin.close()


@pytest.mark.broker
@pytest.mark.slow
def test_daemon_consumer_shows_the_client_id_from_properties(bootstrap: str, unique: str, tmp_path: Path) -> None:
    """The broker sees the group member under the client.id given in the TOML table."""
    toml = tmp_path / "featsieve.toml"
    toml.write_text(f'[kafka_client_properties]\n"client.id" = "{unique}-client"\n"client.rack" = "rack-a"\n')
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "small", "--impressions", "1000",
              "--input-topics", f"{unique}.impressions,{unique}.clicks")
    args = [a for a in _run_args(bootstrap, unique, tmp_path) if a != "--exit-at-end"]
    proc = subprocess.Popen([str(BIN / "featsieve"), *args, "--config", str(toml)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        members: list = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            members = admin.describe_groups([unique])[unique].get("members") or []
            if members:
                break
            time.sleep(1)
        client_ids = {m["client_id"] for m in members}
        assert client_ids == {f"{unique}-client"}, (client_ids, proc.poll())
    finally:
        admin.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]


def test_misspelt_client_property_stops_start_up_naming_it(tmp_path: Path) -> None:
    toml = tmp_path / "featsieve.toml"
    toml.write_text('[kafka_client_properties]\n"client.rak" = "rack-a"\n')
    run = featsieve("run", "--config", str(toml), "--metrics-port", "0", check=False, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    line = run.stderr.strip()
    assert line.count("\n") == 0 and "kafka_client_properties" in line and "'client.rak'" in line
    assert "did you mean client.rack?" in line


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"bootstrap.servers": "x:1"}, "set by the setting bootstrap"),
        ({"sasl_plain_password": "hunter22"}, "set by the setting kafka_sasl_password_file"),
        ({"security.protocol": "SSL"}, "set by the setting kafka_security_protocol"),
        ({"enable.idempotence": False}, "fixed by featsieve"),
        ({"isolation_level": "read_uncommitted"}, "fixed by featsieve"),
        ({"sasl_oauth_token_provider": "x"}, "set by the setting kafka_sasl_oauth_token_file"),
        ({"ssl_context": "x"}, "Python object"),
        ({"request_timeout_ms": "soon"}, "expected a whole number"),
        ({"check_crcs": 1}, "expected true or false"),
        ({"client.rack": ["a"]}, "a string, a number or a boolean"),
        ({"client.id": "a", "client_id": "b"}, "given twice"),
    ],
)
def test_client_properties_refused_with_the_reason(table: dict, needle: str) -> None:
    env = {"FEATSIEVE_KAFKA_CLIENT_PROPERTIES": orjson.dumps(table).decode()}
    with pytest.raises(ConfigError, match="kafka_client_properties") as info:
        load_settings(env=env)
    assert needle in str(info.value)
    assert "hunter22" not in str(info.value)


def test_secret_client_properties_are_never_shown() -> None:
    settings = load_settings(env={"FEATSIEVE_KAFKA_CLIENT_PROPERTIES": '{"ssl_password": "k3y-pass", "client.rack": "r"}'})
    shown = settings.describe()["kafka_client_properties"]
    assert shown == {"ssl_password": "***", "client.rack": "r"}
    with pytest.raises(ConfigError) as info:
        load_settings(env={"FEATSIEVE_KAFKA_CLIENT_PROPERTIES": '{"ssl_password": 12345678}'})
    assert "12345678" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(env={"FEATSIEVE_KAFKA_CLIENT_PROPERTIES": '{"ssl_password": "k3y-pass",'})
    assert "k3y-pass" not in str(info.value)


@pytest.mark.broker
def test_a_value_kafka_python_refuses_stops_start_up_naming_the_setting(bootstrap: str, unique: str,
                                                                        tmp_path: Path) -> None:
    """Keys and types are checked with the settings; kafka-python checks some values only when it
    builds a client (a compression codec): that too is one line and exit 2, not a traceback."""
    env = {"FEATSIEVE_KAFKA_CLIENT_PROPERTIES": '{"compression.type": "gzp"}'}
    run = featsieve(*_run_args(bootstrap, unique, tmp_path), env=env, check=False, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("featsieve run: invalid setting kafka_client_properties")]
    assert len(lines) == 1, run.stderr
    assert "gzp" in lines[0] and "compression_type" in lines[0]


@pytest.mark.broker
def test_a_written_topic_with_fewer_replicas_than_its_min_isr_stops_start_up(bootstrap: str, unique: str,
                                                                            tmp_path: Path) -> None:
    """A dead-letter topic made with one replica where two must acknowledge (as the old hard-coded
    replication factor 1 left topics on clusters requiring 2): no write could succeed."""
    topic = f"{unique}.dlq"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"min.insync.replicas": "2"})])
        run = featsieve(*_run_args(bootstrap, unique, tmp_path), check=False, timeout=120)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        lines = [ln for ln in run.stderr.splitlines() if ln.startswith("featsieve run: invalid setting dlq_topic: ")]
        assert len(lines) == 1, run.stderr
        assert f"topic {topic} has 1 replica(s) but min.insync.replicas=2" in lines[0]
    finally:
        admin.close()
