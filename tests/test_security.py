"""Kafka security end to end on a broker of the test's own with a SASL_SSL (SCRAM-SHA-512) listener.

The CA and the broker's certificate are generated here (openssl), the SCRAM user
by the broker's own tools (scripts/kafka). The daemon, `featsieve generate`,
`featsieve masks` and the MaskSubscriber all connect over SASL_SSL; wrong
credentials, an untrusted CA and an unreachable broker each give one clear log
line naming the cause, never the password, and the daemon stays up, not ready,
retrying with backoff.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.codec import REASONS
from connectors.join import REJECT_REASON
from connectors.kafka_io import KafkaEndpoint, KafkaSecurity
from connectors.subscriber import MaskSubscriber
from daemon.tools.generate import _with_bad
from daemon.tools.synthetic import GeneratorConfig, generate
from tests.conftest import BIN, ROOT, featsieve, http_get, metric_samples, read_records, wait_until
from tests.private_broker import PrivateBroker, free_ports, make_ca

pytestmark = [pytest.mark.broker, pytest.mark.slow]

USER = "featsieve-svc"
PASSWORD = "pw-" + os.urandom(8).hex()  # a value that cannot occur in any output by chance


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path_factory.mktemp("sasl-broker"), sasl_users={USER: PASSWORD})
    b.up()
    try:
        yield b
    finally:
        b.down()


DLQ_REASONS = REASONS | {REJECT_REASON}  # the bounded vocabulary a dead letter's reason comes from


def sasl_env(broker: PrivateBroker, tmp_path: Path, password: str = PASSWORD, cafile: Path | None = None) -> dict[str, str]:
    secret = tmp_path / f"password-{abs(hash(password))}"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return {
        "FEATSIEVE_BOOTSTRAP": broker.sasl_bootstrap,
        "FEATSIEVE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FEATSIEVE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FEATSIEVE_KAFKA_SASL_USERNAME": USER,
        "FEATSIEVE_KAFKA_SASL_PASSWORD_FILE": str(secret),
        "FEATSIEVE_KAFKA_SSL_CAFILE": str(cafile or broker.ca),
    }


def run_args(unique: str, state: Path, port: int) -> list[str]:
    return [
        str(BIN / "featsieve"), "run", "--input-topics", f"{unique}.impressions,{unique}.clicks",
        "--group-id", unique, "--model-id", unique, "--mask-topic", f"{unique}.masks",
        "--dlq-topic", f"{unique}.dlq", "--state-dir", str(state), "--metrics-port", str(port),
        "--min-examples", "200", "--mask-interval-s", "0.5",  # gates on: the default configuration
    ]


def http(port: int, path: str) -> tuple[int, str]:
    return http_get(f"http://127.0.0.1:{port}{path}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_daemon_generate_masks_and_subscriber_work_over_sasl_ssl(broker: PrivateBroker, unique: str, tmp_path: Path) -> None:
    env = sasl_env(broker, tmp_path)
    featsieve("generate", "--preset", "small", "--impressions", "4000", "--event-rate", "10", "--seed", "3",
              "--input-topics", f"{unique}.impressions,{unique}.clicks", "--bad-fraction", "0.01", env=env)
    # the malformed events generate mixed in, replayed from its seed: the dead letters to expect
    bad = [value for _, key, value in _with_bad(generate(GeneratorConfig(seed=3, n_impressions=4000, preset="small",
                                                                         event_rate=10)), 0.01, 3) if key == b"bad"]
    assert bad
    port = free_ports(1)
    proc = subprocess.Popen(run_args(unique, tmp_path / "state", port), cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def ready() -> bool:
            assert proc.poll() is None, "the daemon exited"
            return http(port, "/readyz")[0] == 200

        wait_until(ready, 90, "/readyz 200 over SASL_SSL", interval=0.5)

        def dead_letters_counted() -> float:
            return sum(metric_samples(http(port, "/metrics")[1], "featsieve_dead_letters_total").values())

        wait_until(lambda: dead_letters_counted() >= len(bad), 120, f"{len(bad)} dead letters counted")
        _, metrics = http(port, "/metrics")

        got = featsieve("masks", "--mask-topic", f"{unique}.masks", "--get", unique, "--json", env=env)
        assert f'"model_id":"{unique}"' in got.stdout.replace(" ", "")

        security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", USER, PASSWORD, cafile=str(broker.ca))
        sub = MaskSubscriber(unique, broker.sasl_bootstrap, topic=f"{unique}.masks", security=security).start()
        try:
            assert sub.wait_ready(60), "the subscriber did not read the mask topic over SASL_SSL"
            mask = sub.current()
            assert mask is not None and mask.model_id == unique and mask.fields
        finally:
            sub.stop()
        help_text = featsieve("run", "--help", env=env).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    # the DLQ producer worked over SASL_SSL too: every malformed event is on the dead-letter
    # topic (read back over SASL_SSL), once, untouched, with headers saying why and where from
    assert sum(metric_samples(metrics, "featsieve_dead_letters_total").values()) == len(bad)
    security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", USER, PASSWORD, cafile=str(broker.ca))
    letters = read_records(KafkaEndpoint(bootstrap=(broker.sasl_bootstrap,), security=security), f"{unique}.dlq")
    assert sorted(letter.value for letter in letters) == sorted(bad)
    sources = {(h["featsieve.source.topic"], h["featsieve.source.partition"], h["featsieve.source.offset"])
               for h in (letter.headers for letter in letters)}
    assert len(sources) == len(bad) and {t for t, _, _ in sources} == {f"{unique}.impressions"}
    written = {(r.partition, r.offset): r.value for r in read_records(
        KafkaEndpoint(bootstrap=(broker.sasl_bootstrap,), security=security), f"{unique}.impressions")}
    for letter in letters:
        source = (int(letter.headers["featsieve.source.partition"]), int(letter.headers["featsieve.source.offset"]))
        assert written[source] == letter.value, source  # the headers point at the record itself
        assert letter.key == b"bad" and letter.headers["featsieve.original.key"] == "bad"
        assert letter.headers["featsieve.reason"] in DLQ_REASONS, letter.headers
    for text in (err, metrics, got.stdout, got.stderr, help_text):
        assert PASSWORD not in text


def test_group_mode_stats_and_control_clients_work_over_sasl_ssl(broker: PrivateBroker, unique: str, tmp_path: Path) -> None:
    env = sasl_env(broker, tmp_path)
    featsieve("generate", "--preset", "small", "--impressions", "3000", "--event-rate", "10",
              "--input-topics", f"{unique}.impressions,{unique}.clicks", env=env)
    args = run_args(unique, tmp_path / "state", 0) + [
        "--coordination", "group", "--stats-topic", f"{unique}.stats", "--control-topic", f"{unique}.control",
        "--exit-at-end",
    ]
    done = subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "became the mask writer" in done.stderr, done.stderr[-3000:]
    got = featsieve("masks", "--mask-topic", f"{unique}.masks", "--get", unique, "--json", env=env)
    assert f'"model_id":"{unique}"' in got.stdout.replace(" ", "")
    # the shard state went through the stats topic, over SASL_SSL as well
    from kafka import TopicPartition

    from connectors.kafka_io import make_consumer

    security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", USER, PASSWORD, cafile=str(broker.ca))
    consumer = make_consumer(KafkaEndpoint(bootstrap=(broker.sasl_bootstrap,), security=security), group_id=None)
    try:
        tp = TopicPartition(f"{unique}.stats", 0)
        assert consumer.end_offsets([tp])[tp] > 0
    finally:
        consumer.close()
    assert PASSWORD not in done.stderr + got.stdout + got.stderr


def test_wrong_password_is_not_ready_one_clear_line_no_secret_no_spin(broker: PrivateBroker, unique: str, tmp_path: Path) -> None:
    wrong = "wrong-" + os.urandom(8).hex()
    env = sasl_env(broker, tmp_path, password=wrong)
    port = free_ports(1)
    proc = subprocess.Popen(run_args(unique, tmp_path / "state", port), cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        code, body = wait_until(lambda: http(port, "/readyz")[0] and http(port, "/readyz"), 30, "/readyz to answer")
        assert code == 503, (code, body)

        def failed_attempts() -> float:
            return sum(metric_samples(http(port, "/metrics")[1], "featsieve_kafka_errors_total").values())

        # over three failed logins (and the waits between them) the daemon stays up and nearly idle
        first = wait_until(failed_attempts, 60, "a first failed login")
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        wait_until(lambda: failed_attempts() >= first + 2, 90, "two more failed logins")
        cpu = cpu_seconds(proc.pid) - cpu0
        wall = time.monotonic() - t0
        assert proc.poll() is None, "the daemon exited on a wrong password"
        assert cpu < 0.25 * wall, f"{cpu:.2f} s CPU in {wall:.1f} s: it spins"
        code, body = http(port, "/readyz")
        _, metrics = http(port, "/metrics")
        assert code == 503 and "authentication failed" in body, body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if "cannot connect to Kafka" in line]
    assert len(lines) >= 3, err[-3000:]
    assert all("authentication failed" in line for line in lines), lines
    waits = [int(m) for m in re.findall(r"retrying in (\d+) s", "\n".join(lines))]
    assert waits == [min(2**i, 30) for i in range(len(waits))], waits  # backoff: 1, 2, 4 ... s, at most 30
    assert len(err.splitlines()) <= 3 * len(lines) + 10, err[-3000:]  # kafka-python's per-attempt noise is gone
    for text in (err, body, metrics):
        assert wrong not in text and PASSWORD not in text


@pytest.mark.parametrize("fault", ["untrusted_ca", "unreachable"])
def test_connection_faults_name_their_cause(broker: PrivateBroker, unique: str, tmp_path: Path, fault: str) -> None:
    if fault == "untrusted_ca":
        other_ca, _ = make_ca(tmp_path, "some-other-ca")
        env = sasl_env(broker, tmp_path, cafile=other_ca)
        expected = "untrusted broker certificate"
    else:
        env = {**sasl_env(broker, tmp_path), "FEATSIEVE_BOOTSTRAP": f"127.0.0.1:{free_ports(1)}"}
        expected = "broker unreachable"
    port = free_ports(1)
    proc = subprocess.Popen(run_args(unique, tmp_path / "state", port), cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        code, body = wait_until(lambda: (r := http(port, "/readyz"))[0] == 503 and expected in r[1] and r,
                                60, f"/readyz to name the cause ({expected})")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert code == 503 and expected in body, (code, body)
    lines = [line for line in err.splitlines() if "cannot connect to Kafka" in line]
    assert lines and all(expected in line for line in lines), err[-3000:]
    assert PASSWORD not in err


def test_help_and_config_errors_never_show_secrets(tmp_path: Path) -> None:
    secret = "s3cr3t-" + os.urandom(6).hex()
    env = {"FEATSIEVE_KAFKA_SASL_PASSWORD": secret, "FEATSIEVE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    for args in (["--help"], ["run", "--help"], ["masks", "--help"], ["generate", "--help"]):
        out = featsieve(*args, env=env)
        assert secret not in out.stdout + out.stderr
    # a config error (SASL without a username) names the setting, not the secret
    bad = featsieve("masks", "--get", "x", env=env, check=False)
    assert bad.returncode == 2 and "kafka_sasl_username" in bad.stderr and secret not in bad.stderr + bad.stdout
    # a secret given in TOML with a wrong type is not echoed
    toml = tmp_path / "c.toml"
    toml.write_text('kafka_sasl_password = 12345678\n')
    bad = featsieve("masks", "--get", "x", "--config", str(toml), check=False)
    assert bad.returncode == 2 and "12345678" not in bad.stderr


def test_every_kafka_client_is_built_from_the_endpoint_with_its_security() -> None:
    """No client is constructed directly: all go through connectors.kafka_io, which adds the settings."""
    import re

    for path in list((ROOT / "daemon").glob("*.py")) + list((ROOT / "connectors").glob("*.py")):
        if path.name == "kafka_io.py":
            continue
        text = path.read_text()
        assert not re.search(r"\bKafka(Consumer|Producer|AdminClient)\(", text), f"{path.name} builds a client directly"
        for call in re.finditer(r"\bmake_(consumer|producer|admin)\(\s*([\w.]+(?:\([^)]*\))?)", text):
            assert "endpoint" in call.group(2), f"{path.name}: {call.group(0)} is not given an endpoint"

    from daemon.config import load_settings
    from daemon.settings_map import endpoint_from

    ca = ROOT / "README.md"  # any readable file stands in for a CA bundle here
    settings = load_settings(env={
        "FEATSIEVE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "FEATSIEVE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FEATSIEVE_KAFKA_SASL_USERNAME": "u", "FEATSIEVE_KAFKA_SASL_PASSWORD": "p4ssw0rd",
        "FEATSIEVE_KAFKA_SSL_CAFILE": str(ca), "FEATSIEVE_KAFKA_SSL_CHECK_HOSTNAME": "false",
    })
    endpoint = endpoint_from(settings)
    opts = endpoint.options()
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "u" and opts["sasl_plain_password"] == "p4ssw0rd"
    assert opts["ssl_cafile"] == str(ca) and opts["ssl_check_hostname"] is False
    assert "p4ssw0rd" not in repr(endpoint) + repr(settings.describe())
