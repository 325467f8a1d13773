"""scripts/kafka against its own broker on an alternate port and runtime dir.

It never touches the suite's main test broker: the port defaults to 19092 (or
FEATSIEVE_TEST_SCRIPT_KAFKA_PORT, or a free pair if that one is taken) and the
runtime dir is a pytest temporary directory. The jars come from the shared
cache in ~/.cache/featsieve.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.private_broker import port_is_free

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "kafka"




def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _free_ports(wanted: int, n: int = 2) -> int:
    """A port p with p..p+n-1 free (broker, controller, optional SASL_SSL); `wanted` if possible."""
    if all(port_is_free(wanted + i) for i in range(n)):
        return wanted
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + n <= 65536 and all(port_is_free(port + i) for i in range(1, n)):
            return port
    raise RuntimeError(f"no {n} consecutive free ports for the script's broker")


class KafkaScript:
    """Runs scripts/kafka with a fixed port and runtime dir."""

    def __init__(self, port: int, home: Path) -> None:
        self.port = port
        self.home = home
        self.pid_file = home / "kafka.pid"
        self.bootstrap = f"127.0.0.1:{port}"

    def __call__(
        self, *args: str, timeout: float = 180, env_extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "FEATSIEVE_KAFKA_HOME": str(self.home),
            "KAFKA_STOP_TIMEOUT": "30",
        }
        env.pop("KAFKA_CONTROLLER_PORT", None)
        env.pop("KAFKA_RESET", None)
        env.pop("KAFKA_SASL_SSL_PORT", None)
        env.pop("KAFKA_SCRAM_USERS", None)
        env.update(env_extra or {})
        return subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )

    def pid(self) -> int:
        return int(self.pid_file.read_text().strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _kcat(*args: str, data: str | None = None) -> str:
    proc = subprocess.run(["kcat", *args], input=data, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaScript]:
    if shutil.which("java") is None:
        pytest.fail("java is not installed: run scripts/install-tools")
    wanted = int(os.environ.get("FEATSIEVE_TEST_SCRIPT_KAFKA_PORT", "19092"))
    script = KafkaScript(_free_ports(wanted), tmp_path_factory.mktemp("kafka-run"))
    yield script
    script("down")


@pytest.mark.broker
def test_up_is_idempotent_and_status_tracks_it(kafka: KafkaScript) -> None:
    before = kafka("status")
    assert before.returncode == 1 and "stopped" in before.stdout

    first = kafka("up")
    assert first.returncode == 0, first.stderr
    pid = kafka.pid()
    assert _alive(pid)

    status = kafka("status")
    assert status.returncode == 0 and "running" in status.stdout and str(pid) in status.stdout

    again = kafka("up")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert kafka.pid() == pid

    assert kafka("wait").returncode == 0
    assert kafka("logs").returncode == 0


@pytest.mark.broker
def test_produce_consume_round_trip_with_kcat(kafka: KafkaScript) -> None:
    assert kafka("up").returncode == 0
    topic = "script-" + uuid.uuid4().hex[:8]
    messages = [f"message-{i}" for i in range(20)]
    _kcat("-b", kafka.bootstrap, "-P", "-t", topic, data="\n".join(messages) + "\n")
    out = _kcat("-b", kafka.bootstrap, "-C", "-t", topic, "-e", "-q")
    assert out.split() == messages


@pytest.mark.broker
def test_stale_pid_file_is_cleaned_and_never_kills_a_stranger(kafka: KafkaScript) -> None:
    assert kafka("down").returncode == 0
    assert not kafka.pid_file.exists()
    # A live process that is not our broker, as after a crash and pid reuse.
    stranger = subprocess.Popen(["sleep", "120"])
    try:
        kafka.pid_file.write_text(f"{stranger.pid}\n")
        assert kafka("status").returncode == 1
        assert kafka("down").returncode == 0
        assert _alive(stranger.pid)

        kafka.pid_file.write_text(f"{stranger.pid}\n")
        up = kafka("up")
        assert up.returncode == 0, up.stderr
        assert "stale pid file" in up.stderr
        assert kafka.pid() != stranger.pid
        assert kafka("status").returncode == 0
        assert _alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.broker
def test_restart_after_a_hard_kill_keeps_the_data(kafka: KafkaScript) -> None:
    assert kafka("up").returncode == 0
    topic = "durable-" + uuid.uuid4().hex[:8]
    _kcat("-b", kafka.bootstrap, "-P", "-t", topic, "-X", "acks=all", data="kept\n")

    pid = kafka.pid()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _alive(pid) and not _listening(kafka.port), 30, "the killed broker to be gone")
    assert kafka("status").returncode == 1

    up = kafka("up")
    assert up.returncode == 0, up.stderr
    assert kafka.pid() != pid
    assert _kcat("-b", kafka.bootstrap, "-C", "-t", topic, "-e", "-q").split() == ["kept"]


@pytest.mark.broker
def test_down_stops_our_broker(kafka: KafkaScript) -> None:
    assert kafka("up").returncode == 0
    pid = kafka.pid()
    down = kafka("down")
    assert down.returncode == 0, down.stderr
    assert not _alive(pid)
    assert not kafka.pid_file.exists()
    assert kafka("status").returncode == 1
    assert kafka("down").returncode == 0  # already down: still a success


def test_up_refuses_a_port_held_by_another_process(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        script = KafkaScript(holder.getsockname()[1], tmp_path)
        up = script("up", timeout=60, env_extra={"KAFKA_PORT_WAIT": "1"})
    assert up.returncode != 0
    assert "already in use" in up.stderr
    assert not script.pid_file.exists()


def test_usage_error_exits_2() -> None:
    proc = subprocess.run([str(SCRIPT), "bogus"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


@pytest.mark.broker
def test_sasl_ssl_listener_with_scram_users(tmp_path: Path) -> None:
    """KAFKA_SASL_SSL_PORT adds a SCRAM-SHA-512 listener; users come from env and scram-user.

    Checked with kafka-python: Debian's kcat (librdkafka 2.0) cannot do SCRAM
    against Kafka 4.x brokers (fixed in librdkafka 2.6.1).
    """
    assert shutil.which("keytool"), "keytool (from the JDK scripts/install-tools installs) makes the test keystore"
    import ssl

    import kafka as kafka_python

    keystore, cert = tmp_path / "broker.p12", tmp_path / "ca.pem"
    common = ["-alias", "broker", "-keystore", str(keystore), "-storepass", "test-pass"]
    subprocess.run(
        [
            "keytool",
            "-genkeypair",
            *common,
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-validity",
            "2",
            "-dname",
            "CN=localhost",
            "-ext",
            "SAN=ip:127.0.0.1,dns:localhost",
            "-storetype",
            "PKCS12",
            "-keypass",
            "test-pass",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        ["keytool", "-exportcert", "-rfc", *common, "-file", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )

    port = _free_ports(int(os.environ.get("FEATSIEVE_TEST_SCRIPT_KAFKA_PORT", "19092")) + 10, n=3)
    script = KafkaScript(port, tmp_path / "run")
    sasl = {
        "KAFKA_SASL_SSL_PORT": str(port + 2),
        "KAFKA_SSL_KEYSTORE": str(keystore),
        "KAFKA_SSL_KEYSTORE_PASSWORD": "test-pass",
        "KAFKA_SCRAM_USERS": "alice:alice-secret",
    }
    try:
        up = script("up", env_extra=sasl)
        assert up.returncode == 0, up.stderr
        assert "SASL_SSL" in up.stderr
        added = script("scram-user", "bob", "bob-secret", env_extra=sasl)
        assert added.returncode == 0, added.stderr

        context = ssl.create_default_context(cafile=str(cert))

        def login(user: str, password: str) -> bool:
            try:
                admin = kafka_python.KafkaAdminClient(
                    bootstrap_servers=f"127.0.0.1:{port + 2}",
                    security_protocol="SASL_SSL",
                    sasl_mechanism="SCRAM-SHA-512",
                    sasl_plain_username=user,
                    sasl_plain_password=password,
                    ssl_context=context,
                    request_timeout_ms=5000,
                    bootstrap_timeout_ms=8000,
                )
            except kafka_python.errors.KafkaError:
                return False
            try:
                return bool(admin.describe_cluster()["brokers"])
            finally:
                admin.close()

        assert login("alice", "alice-secret")
        assert login("bob", "bob-secret")
        assert not login("alice", "wrong")
    finally:
        script("down")


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["cluster-up", "0"], {}, "N must be 1..9"),
        (["cluster-up", "3"], {"KAFKA_MIN_INSYNC_REPLICAS": "4"}, "KAFKA_MIN_INSYNC_REPLICAS must be 1..3"),
        (["cluster-up", "2"], {"KAFKA_DEFAULT_REPLICATION_FACTOR": "3"}, "KAFKA_DEFAULT_REPLICATION_FACTOR must be 1..2"),
        (["cluster-up"], {"KAFKA_SASL_SSL_PORT": "29999"}, "not supported by cluster-up"),
    ],
)
def test_cluster_up_refuses_impossible_settings_before_starting_anything(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    script = KafkaScript(_free_ports(29400, n=6), tmp_path / "cluster")
    proc = script(*args, timeout=60, env_extra=env)
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
    assert not list((tmp_path / "cluster").glob("node-*"))
