"""Static checks of the deployment files (no container engine is needed).

docker-compose.yml, the Dockerfile, the Prometheus config and alerts and the
Grafana dashboard must agree with each other and with the metrics the daemon
exports. The metric names are a fixture list below; one test checks the list
against what daemon.metrics really exposes, and FEATSIEVE_TEST_METRICS_URL
(a live /metrics) replaces the list when set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip(
    "yaml", reason="PyYAML is needed to parse the compose and Prometheus files"
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "featsieve.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

# Sample names as they appear on /metrics (counters with _total, histograms by
# their base name; _bucket/_sum/_count are derived).
METRIC_NAMES = frozenset(
    {
        "featsieve_events_total",
        "featsieve_consumer_lag_records",
        "featsieve_consumer_lag_seconds",
        "featsieve_batch_duration_seconds",
        "featsieve_join_buffer_impressions",
        "featsieve_orphan_clicks_total",
        "featsieve_dead_letters_total",
        "featsieve_checkpoint_age_seconds",
        "featsieve_checkpoint_duration_seconds",
        "featsieve_state_bytes",
        "featsieve_mask_version",
        "featsieve_mask_age_seconds",
        "featsieve_mask_publishes_total",
        "featsieve_fields",
        "featsieve_field_score",
        "featsieve_field_gate_open",
        "featsieve_gate_examples_total",
        "featsieve_gate_sampling_rate",
        "featsieve_online_auc",
        "featsieve_online_logloss",
        "featsieve_rebalances_total",
        "featsieve_ready",
        "featsieve_examples_total",
        "featsieve_event_time_lag_seconds",
        "featsieve_dead_letters_waiting",
    }
)
HISTOGRAMS = frozenset(
    {"featsieve_batch_duration_seconds", "featsieve_checkpoint_duration_seconds"}
)
METRIC_RE = re.compile(r"\bfeatsieve_[a-z0-9_]+")


def _known_names() -> set[str]:
    """Every sample name a query may use: the fixture list, or a live /metrics when given."""
    url = os.environ.get("FEATSIEVE_TEST_METRICS_URL")
    if url:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return _exposed_names(resp.read().decode())
    names = set(METRIC_NAMES)
    for h in HISTOGRAMS:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


def _exposed_names(text: str) -> set[str]:
    """Sample names in a Prometheus text exposition, including families that have no samples yet."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["", "_bucket", "_sum", "_count"]}.get(
            family.type, [""]
        )
        names |= {family.name + s for s in suffixes}
        names |= {s.name for s in family.samples}
    return names


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _compose() -> dict[str, Any]:
    doc = _load_yaml(COMPOSE)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), (
        "docker-compose.yml has no services"
    )
    return doc


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for p in items:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            panels(p.get("panels", []))

    panels(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        exprs.append(q.get("query", "") if isinstance(q, dict) else str(q or ""))
    return exprs


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip(
            "promtool is not installed (Debian package 'prometheus'; run scripts/install-tools)"
        )
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- compose


def test_compose_services_have_an_image_or_a_build() -> None:
    services = _compose()["services"]
    assert {"kafka", "featsieve", "generator", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"


def test_compose_featsieve_runs_hardened_against_kafka() -> None:
    services = _compose()["services"]
    svc = services["featsieve"]
    env = _env(svc)
    assert env["FEATSIEVE_BOOTSTRAP"] == "kafka:9092"
    assert "kafka:9092" in _env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert env["FEATSIEVE_METRICS_ADDR"] == "0.0.0.0"
    assert svc["read_only"] is True
    assert any(str(t).startswith("/tmp") for t in svc["tmpfs"])
    state_dir = env["FEATSIEVE_STATE_DIR"]
    assert any(str(v).split(":")[1] == state_dir for v in svc["volumes"]), (
        "the state dir must be a volume"
    )
    assert str(svc["user"]).split(":")[0] not in ("0", "root")
    assert "healthz" in " ".join(svc["healthcheck"]["test"])
    assert "kafka" in svc["depends_on"]


def test_compose_generator_is_demo_only() -> None:
    gen = _compose()["services"]["generator"]
    assert gen["profiles"] == ["demo"]
    cmd = gen["command"]
    assert cmd[0] == "generate" and "kafka:9092" in cmd


def test_prometheus_scrapes_the_featsieve_service_on_its_metrics_port() -> None:
    services = _compose()["services"]
    port = _env(services["featsieve"])["FEATSIEVE_METRICS_PORT"]
    jobs = {job["job_name"]: job for job in _load_yaml(PROMETHEUS)["scrape_configs"]}
    targets = [t for sc in jobs["featsieve"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"featsieve:{port}"]
    published = [str(p) for p in services["featsieve"].get("ports", [])]
    assert any(p.endswith(f":{port}") or p == port for p in published)


def test_prometheus_and_grafana_mount_the_deploy_files() -> None:
    services = _compose()["services"]

    def sources(name: str) -> set[str]:
        return {str(v).split(":")[0] for v in services[name].get("volumes", [])}

    for src in sources("prometheus") | sources("grafana"):
        if src.startswith("./"):
            assert (ROOT / src).exists(), f"compose mounts {src}, which does not exist"
    assert "./deploy/prometheus/alerts.yml" in sources("prometheus")
    assert "./deploy/grafana/dashboards" in sources("grafana")
    env = _env(services["grafana"])
    assert (
        env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    )


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_dir() -> None:
    ds = _load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = _load_yaml(GRAFANA_PROVISIONING / "dashboards" / "featsieve.yml")["providers"][0]
    mounts = [str(v) for v in _compose()["services"]["grafana"]["volumes"]]
    assert any(
        m.split(":")[1] == provider["options"]["path"]
        for m in mounts
        if m.startswith("./deploy/grafana/dashboards")
    )
    dash = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    assert uids == {ds["uid"]}


# ---------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    instr = _dockerfile_instructions()
    users = [rest for word, rest in instr if word == "USER"]
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0")
    health = [rest for word, rest in instr if word == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1]
    assert ("ENTRYPOINT", '["featsieve"]') in instr
    assert ("CMD", '["run"]') in instr
    assert any(word == "EXPOSE" and "9400" in rest for word, rest in instr)
    assert any(word == "VOLUME" and "/var/lib/featsieve" in rest for word, rest in instr)
    assert any(word == "ENV" and "FEATSIEVE_METRICS_ADDR=0.0.0.0" in rest for word, rest in instr)
    assert instr[0][0] == "FROM" and instr[0][1].startswith("python:3.11-slim")


def test_dockerfile_user_matches_compose_user() -> None:
    user = [rest for word, rest in _dockerfile_instructions() if word == "USER"][-1]
    assert str(_compose()["services"]["featsieve"]["user"]).split(":")[0] == user.split(":")[0]


# ---------------------------------------------------------------- metric names


def test_dashboard_parses_and_uses_only_known_metrics() -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) > 20
    used = {m for e in exprs for m in METRIC_RE.findall(e)}
    unknown = used - _known_names()
    assert not unknown, (
        f"the dashboard queries metrics the daemon does not export: {sorted(unknown)}"
    )


def test_dashboard_covers_every_metric() -> None:
    used = {m for e in _dashboard_exprs() for m in METRIC_RE.findall(e)}
    used = {
        re.sub(r"_(bucket|sum|count)$", "", m) if m.endswith(("_bucket", "_sum", "_count")) else m
        for m in used
    }
    missing = METRIC_NAMES - used
    assert not missing, f"no dashboard panel shows {sorted(missing)}"


def test_alerts_use_only_known_metrics() -> None:
    rules = [r for g in _load_yaml(ALERTS)["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "FeatsieveConsumerLagGrowing",
        "FeatsieveMaskStale",
        "FeatsieveDeadLettersSpiking",
        "FeatsieveNotReady",
        "FeatsieveDown",
    } <= names
    used = {m for r in rules for m in METRIC_RE.findall(r["expr"])}
    assert not used - _known_names(), sorted(used - _known_names())


def test_fixture_names_are_exported_by_daemon_metrics() -> None:
    """The fixture list is not wishful: daemon.metrics registers every name in it."""
    metrics = pytest.importorskip("daemon.metrics")
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    dm = metrics.DaemonMetrics(registry)
    dm.attach(metrics.LiveGauges(lambda: {("t", 0): (0, 0.0)}, lambda: 0, lambda: 0.0, lambda: 0.0))
    exposed = _exposed_names(generate_latest(registry).decode())
    missing = METRIC_NAMES - exposed
    assert not missing, f"daemon.metrics does not export {sorted(missing)}"


# ---------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config() -> None:
    proc = _promtool("check", "config", str(PROMETHEUS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, parses as a recording rule."""
    rules = []
    for i, expr in enumerate(e for e in _dashboard_exprs() if not e.startswith("label_values(")):
        expr = (
            expr.replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$field", ".*")
        )
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_fire_as_intended(tmp_path: Path) -> None:
    """promtool unit tests: each alert fires on a series that should trigger it, and only then."""
    # Annotations are compared too by promtool; they are prose, so test the rules without them.
    groups = _load_yaml(ALERTS)["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_path = tmp_path / "alerts.yml"
    rules_path.write_text(yaml.safe_dump({"groups": groups}))
    tests = {
        "rule_files": [str(rules_path)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'up{job="featsieve", instance="a:9400"}', "values": "0x10"},
                    {"series": 'featsieve_ready{instance="a:9400"}', "values": "0x10"},
                    {
                        "series": 'featsieve_mask_age_seconds{instance="a:9400"}',
                        "values": "1000+60x10",
                    },
                    {
                        "series": 'featsieve_dead_letters_total{instance="a:9400", reason="decode"}',
                        "values": "0+600x15",
                    },
                    {
                        "series": 'featsieve_consumer_lag_records{instance="a:9400", topic="t", partition="0"}',
                        "values": "200000+10000x40",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "FeatsieveDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "featsieve",
                                    "instance": "a:9400",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "FeatsieveNotReady",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "warning", "instance": "a:9400"}}
                        ],
                    },
                    {"eval_time": "2m", "alertname": "FeatsieveNotReady", "exp_alerts": []},
                    {
                        "eval_time": "10m",
                        "alertname": "FeatsieveMaskStale",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "warning", "instance": "a:9400"}}
                        ],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "FeatsieveDeadLettersSpiking",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "instance": "a:9400",
                                    "reason": "decode",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "35m",
                        "alertname": "FeatsieveConsumerLagGrowing",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "warning", "instance": "a:9400"}}
                        ],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "FeatsieveConsumerLagGrowing",
                        "exp_alerts": [],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests))
    proc = _promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_writes_only_to_the_state_volume_and_tmp() -> None:
    """With a read-only root (compose read_only + tmpfs /tmp + the state volume) every path the
    process writes to must lie on one of the two writable mounts, owned by the runtime user."""
    instr = _dockerfile_instructions()
    final = instr[max(i for i, (w, _) in enumerate(instr) if w == "FROM"):]
    env: dict[str, str] = {}
    for word, rest in final:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    writable = ("/tmp", "/var/lib/featsieve")
    for key in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "MPLCONFIGDIR", "FEATSIEVE_STATE_DIR"):
        assert key in env, f"the image does not set {key}"
        assert env[key].startswith(writable), f"{key}={env[key]} is not on a writable mount"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # no .pyc writes into the read-only site-packages
    run = " ".join(rest for word, rest in final if word == "RUN")
    assert "chown featsieve:featsieve /var/lib/featsieve" in run
    svc = _compose()["services"]["featsieve"]
    mounts = [str(v).split(":")[1] for v in svc["volumes"]] + [str(t).split(":")[0] for t in svc["tmpfs"]]
    assert sorted(mounts) == sorted(writable), mounts
