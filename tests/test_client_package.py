"""featsieve-client as serving teams install it: `pip install ./client` into a clean virtualenv.

It must bring no torch, river, scipy, matplotlib or numpy and no top-level daemon/connectors/models,
import in under 0.5 s, and leave kafka-python's classes as they were (the daemon's connectors patch
kafka-python's socket reader; serving code importing the client must not get that).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Snapshot every attribute of every class in kafka-python's modules, import the client (and run a
# subscriber against the broker if one is given), snapshot again: the same objects must be there.
UNPATCHED = r"""
import importlib, inspect, pkgutil, sys
import kafka
for info in pkgutil.walk_packages(kafka.__path__, "kafka."):
    if any(part in info.name for part in ("vendor", "benchmarks", "__main__", ".cli")):
        continue
    try:
        importlib.import_module(info.name)
    except Exception:
        pass

def snapshot():
    out = {}
    for name, mod in list(sys.modules.items()):
        if name == "kafka" or name.startswith("kafka."):
            for cname, cls in vars(mod).items():
                if inspect.isclass(cls) and cls.__module__ == name:
                    for attr, value in vars(cls).items():
                        out[(name, cname, attr)] = value
    return out

before = snapshot()
from kafka.net.transport import KafkaTCPTransport, KafkaSSLTransport
recv = (KafkaTCPTransport._sock_recv, KafkaSSLTransport._sock_recv)
assert len(before) > 500, len(before)
import featsieve_client
from featsieve_client import MaskSubscriber
if len(sys.argv) > 1:
    with MaskSubscriber("nobody", sys.argv[1], topic="featsieve-client-test-none") as sub:
        sub.wait_ready(5)
{after_import}
after = snapshot()
changed = sorted(k for k, v in before.items() if after.get(k) is not v)
assert not changed, changed[:20]
assert (KafkaTCPTransport._sock_recv, KafkaSSLTransport._sock_recv) == recv
print("unpatched", len(before))
"""


# the clean venv sees nothing of ours: no PYTHONPATH (the tests' own may point at the repository)
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def run(python: Path | str, code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=CLEAN_ENV)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv (no system site-packages) with only `pip install ./client` in it."""
    where = tmp_path_factory.mktemp("client-venv") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           str(ROOT / "client")], capture_output=True, text=True, timeout=900, env=CLEAN_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return python


@pytest.mark.slow
def test_pip_install_client_brings_only_what_serving_needs(client_venv: Path, tmp_path: Path) -> None:
    proc = subprocess.run([str(client_venv), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                          text=True, timeout=120, check=True, env=CLEAN_ENV)
    installed = {line.split("==")[0].lower() for line in proc.stdout.split()}
    assert {"featsieve-client", "kafka-python", "orjson"} <= installed
    heavy = {"torch", "river", "scipy", "matplotlib", "numpy", "featsieve", "prometheus-client"}
    assert not installed & heavy, installed & heavy
    # run from an empty directory, so that nothing of the repository is on the path
    code = ("import importlib.util as u, featsieve_client, sys\n"
            "print([m for m in ('daemon', 'connectors', 'models', 'torch', 'numpy') if u.find_spec(m)])\n"
            "import pathlib; print(pathlib.Path(featsieve_client.__file__).parent.joinpath('py.typed').exists())")
    out = run(client_venv, code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


@pytest.mark.slow
def test_import_is_fast(client_venv: Path, tmp_path: Path) -> None:
    code = ("import sys, time; t = time.perf_counter(); import featsieve_client; "
            "print(time.perf_counter() - t, 'kafka' in sys.modules)")
    run(client_venv, code, cwd=tmp_path)  # a first run writes the .pyc files
    times = []
    for _ in range(3):
        out = run(client_venv, code, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        seconds, kafka_loaded = out.stdout.split()
        assert kafka_loaded == "False"  # kafka-python is imported when a subscriber starts
        times.append(float(seconds))
    assert min(times) < 0.5, times


@pytest.mark.slow
@pytest.mark.broker
def test_kafka_python_is_unpatched_after_import_and_use(client_venv: Path, tmp_path: Path, bootstrap: str) -> None:
    out = run(client_venv, UNPATCHED.replace("{after_import}", ""), bootstrap, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("unpatched")


def test_the_check_sees_the_daemons_patch(tmp_path: Path) -> None:
    # the same check, with the daemon's adaptations of kafka-python installed, must fail: it can see
    # a patch (importing them alone patches nothing: tests/test_kafka_compat.py)
    code = UNPATCHED.replace("{after_import}", "import connectors.kafka_compat\n"
                                               "assert connectors.kafka_compat.install_socket_reader()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and "_sock_recv" in out.stderr, out.stdout + out.stderr[-2000:]


def test_every_public_name_has_a_docstring() -> None:
    import importlib
    import inspect

    missing = []
    for name in ("featsieve_client", "featsieve_client.mask", "featsieve_client.subscriber",
                 "featsieve_client.apply"):
        module = importlib.import_module(name)  # (featsieve_client.apply the attribute is the function)
        assert module.__doc__, module.__name__
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                        continue
                    if not (member.__doc__ or "").strip():
                        missing.append(f"{module.__name__}.{name}.{attr}")
    assert not missing, missing
