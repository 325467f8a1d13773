"""A broker of the test's own: its own ports (below the ephemeral range) and runtime dir.

Tests that stop, restart or reconfigure a broker use this instead of the shared
one. ``PrivateBroker`` drives scripts/kafka with ``KAFKA_PORT`` and
``FEATSIEVE_KAFKA_HOME`` of its own; with ``sasl_users`` it also generates a
self-signed CA, a broker certificate signed by it (openssl), a PKCS12 keystore
(keytool), and opens a SASL_SSL listener with SCRAM-SHA-512 users.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "kafka"

# Below Linux's ephemeral range (32768-60999): a port picked there can be taken by any
# outgoing connection between our check and the broker's bind.
PORT_LOW, PORT_HIGH = 20000, 32000


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_rng = random.SystemRandom()


def free_ports(n: int) -> int:
    """A port p below the ephemeral range with p..p+n-1 free (drawn afresh on every call)."""
    rng = _rng
    for _ in range(200):
        port = rng.randrange(PORT_LOW, PORT_HIGH - n)
        if all(port_is_free(port + i) for i in range(n)):
            return port
    raise RuntimeError(f"no {n} consecutive free ports in {PORT_LOW}..{PORT_HIGH}")


def _run(*args: str) -> None:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {proc.stderr[-2000:]}")


def unsecured_token(subject: str, lifetime_s: float = 3600, now: float | None = None) -> str:
    """An OAUTHBEARER token that Kafka's unsecured validator accepts (header alg "none", no
    signature) until ``lifetime_s`` from ``now``; a negative lifetime gives an expired one."""
    import base64
    import json
    import time

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    issued = int(time.time() if now is None else now)
    return f'{part({"alg": "none"})}.{part({"sub": subject, "iat": issued, "exp": issued + int(lifetime_s)})}.'


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(cert))
    return cert, key


def make_broker_keystore(directory: Path, ca_cert: Path, ca_key: Path, password: str) -> Path:
    """A PKCS12 keystore with a key and a certificate for 127.0.0.1/localhost signed by the CA."""
    key, csr, cert = directory / "broker.key", directory / "broker.csr", directory / "broker.pem"
    ext = directory / "broker.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(csr))
    _run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    store = directory / "broker.p12"
    _run("openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key), "-certfile", str(ca_cert),
         "-name", "broker", "-passout", f"pass:{password}", "-out", str(store))
    return store


class PrivateBroker:
    """One single-node Kafka on free ports, for one test or module. Always call ``down()``."""

    def __init__(self, home: Path, sasl_users: dict[str, str] | None = None, oauthbearer: bool = False) -> None:
        if shutil.which("java") is None:
            raise RuntimeError("java is not installed: run scripts/install-tools")
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.sasl = sasl_users is not None
        self.port = free_ports(3 if self.sasl or oauthbearer else 2)
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.port + 1),
            "FEATSIEVE_KAFKA_HOME": str(home / "run"),
            "KAFKA_STOP_TIMEOUT": "20",
            "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
        }
        for name in ("KAFKA_RESET", "KAFKA_SASL_SSL_PORT", "KAFKA_SCRAM_USERS", "FEATSIEVE_KAFKA_EXTRA_CONFIG"):
            self.env.pop(name, None)
        self.ca: Path | None = None
        self.sasl_bootstrap = ""
        self.oauth_bootstrap = ""
        if oauthbearer:
            # a SASL_PLAINTEXT listener with OAUTHBEARER and Kafka's unsecured token validator
            # (tokens with alg "none": see unsecured_token), through the script's extra config
            p = self.port
            extra = home / "oauthbearer.properties"
            extra.write_text(
                f"listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{p + 1},SASL_PLAINTEXT://127.0.0.1:{p + 2}\n"
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{p},SASL_PLAINTEXT://127.0.0.1:{p + 2}\n"
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT\n"
                "sasl.enabled.mechanisms=OAUTHBEARER\n"
                "listener.name.sasl_plaintext.sasl.enabled.mechanisms=OAUTHBEARER\n"
                "listener.name.sasl_plaintext.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security."
                'oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";\n'
            )
            self.env["FEATSIEVE_KAFKA_EXTRA_CONFIG"] = str(extra)
            self.oauth_bootstrap = f"127.0.0.1:{p + 2}"
        if sasl_users is not None:
            pki = home / "pki"
            pki.mkdir(exist_ok=True)
            self.ca, ca_key = make_ca(pki, "featsieve-test-ca")
            store_password = "store-" + os.urandom(6).hex()
            store = make_broker_keystore(pki, self.ca, ca_key, store_password)
            self.sasl_bootstrap = f"127.0.0.1:{self.port + 2}"
            self.env.update({
                "KAFKA_SASL_SSL_PORT": str(self.port + 2),
                "KAFKA_SSL_KEYSTORE": str(store),
                "KAFKA_SSL_KEYSTORE_PASSWORD": store_password,
                "KAFKA_SCRAM_USERS": ",".join(f"{u}:{p}" for u, p in sasl_users.items()),
            })

    def script(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=ROOT)

    def up(self) -> None:
        proc = self.script("up")
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/kafka up on port {self.port} failed:\n{proc.stderr[-3000:]}")

    def down(self) -> None:
        proc = self.script("down")
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/kafka down on port {self.port} failed:\n{proc.stderr[-3000:]}")


class PrivateCluster:
    """An N-node KRaft cluster of the test's own (``scripts/kafka cluster-up``): its own free
    ports (node i: broker ``port + 2(i-1)``, controller the next) and runtime dirs. Always
    call ``down()``."""

    def __init__(self, home: Path, nodes: int = 3, replication_factor: int = 3, min_insync_replicas: int = 2) -> None:
        if shutil.which("java") is None:
            raise RuntimeError("java is not installed: run scripts/install-tools")
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.nodes = nodes
        self.port = free_ports(2 * nodes)
        self.bootstraps = [f"127.0.0.1:{self.port + 2 * i}" for i in range(nodes)]
        self.bootstrap = ",".join(self.bootstraps)
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "FEATSIEVE_KAFKA_HOME": str(home / "cluster"),
            "KAFKA_STOP_TIMEOUT": "20",
            "KAFKA_HEAP_OPTS": "-Xms128m -Xmx384m",
            "KAFKA_DEFAULT_REPLICATION_FACTOR": str(replication_factor),
            "KAFKA_MIN_INSYNC_REPLICAS": str(min_insync_replicas),
        }
        for name in ("KAFKA_RESET", "KAFKA_SASL_SSL_PORT", "KAFKA_SCRAM_USERS", "FEATSIEVE_KAFKA_EXTRA_CONFIG",
                     "KAFKA_CONTROLLER_PORT", "KAFKA_CLUSTER_NODES"):
            self.env.pop(name, None)

    def script(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=ROOT)

    def up(self) -> None:
        proc = self.script("cluster-up", str(self.nodes))
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/kafka cluster-up on port {self.port} failed:\n{proc.stderr[-3000:]}")
        if proc.stdout.strip() != self.bootstrap:
            raise RuntimeError(f"cluster-up printed {proc.stdout.strip()!r}, expected {self.bootstrap!r}")

    def node_down(self, node: int) -> None:
        """Stop one node (1-based) with the script, as ``scripts/kafka down`` on its port and dir."""
        env = {"KAFKA_PORT": str(self.port + 2 * (node - 1)), "KAFKA_CONTROLLER_PORT": str(self.port + 2 * (node - 1) + 1),
               "FEATSIEVE_KAFKA_HOME": str(self.home / "cluster" / f"node-{node}")}
        proc = self.script("down", env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/kafka down of node {node} failed:\n{proc.stderr[-3000:]}")

    def down(self) -> None:
        proc = self.script("cluster-down")
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/kafka cluster-down on port {self.port} failed:\n{proc.stderr[-3000:]}")
