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

import yaml  # a dev dependency (pyproject.toml): missing, the checks fail rather than skip

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "featsieve.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

METRIC_RE = re.compile(r"\bfeatsieve_[a-z0-9_]+")

# Families the daemon exports that no panel shows, and why. Every other family must be on the
# dashboard (test_dashboard_covers_every_metric, and tests/test_metrics_live.py against a running daemon).
NOT_ON_DASHBOARD: dict[str, str] = {
    "featsieve_mask_age_seconds": "kept for dashboards built on it (NaN before the first publish); the dashboard "
    "and alerts use time() - featsieve_last_mask_publish_timestamp_seconds, which has a value from start",
    "featsieve_checkpoint_age_seconds": "as featsieve_mask_age_seconds, for featsieve_last_checkpoint_timestamp_seconds",
    "featsieve_checkpoints_total": "the same count as featsieve_checkpoint_duration_seconds_count",
    "featsieve_duplicate_clicks_total": "the same count as featsieve_events_total{type=\"click\",outcome=\"duplicate\"}, "
    "on the Events/s panel",
    "featsieve_field_columns_total": "column admissions and reclaims (docs/internals.md) are rare events; the "
    "Untracked fields stat shows when max_fields is what limits them",
    "featsieve_field_keep": "per field, 0/1: `featsieve masks --get/--follow` shows it with the reason; the "
    "dashboard shows the counts (featsieve_fields)",
}


def _families(text: str) -> set[str]:
    """Family names in a Prometheus text exposition as queries spell them (counters with _total)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(text))
    bases = {f.name for f in families if f.type in ("counter", "histogram")}
    # prometheus_client's *_created samples (creation times) parse as families of their own
    return {f.name + ("_total" if f.type == "counter" else "") for f in families
            if f.name.startswith("featsieve_") and not (f.name.endswith("_created") and f.name[:-8] in bases)}


def _registry_exposition() -> str:
    """What daemon.metrics exports (every family, before any event)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from daemon import metrics

    registry = CollectorRegistry()
    dm = metrics.DaemonMetrics(registry)
    dm.set_instance(model="m", group="g", coordination="single")
    dm.attach(metrics.LiveGauges(lambda: {("t", 0): (0, 0.0)}, lambda: 0, lambda: 0.0, lambda: 0.0,
                                 group="g", mask_publish_timestamp=lambda: 0.0))
    return generate_latest(registry).decode()


def _known_names() -> set[str]:
    """Every sample name a query may use: daemon.metrics' families, or a live /metrics when given."""
    url = os.environ.get("FEATSIEVE_TEST_METRICS_URL")
    if url:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return _exposed_names(resp.read().decode())
    return _exposed_names(_registry_exposition())


def _dashboard_families() -> set[str]:
    """Metric families the dashboard's queries use (histogram series by their base name)."""
    used = {m for e in _dashboard_exprs() for m in METRIC_RE.findall(e)}
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}


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
    # a failure, not a skip: scripts/install-tools installs it (Debian package 'prometheus')
    assert shutil.which("promtool"), "promtool is not installed: run scripts/install-tools"
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
    assert ds["isDefault"] is True  # what the dashboard's datasource variable picks when provisioned


def _datasource_refs(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every "datasource" value anywhere in the dashboard JSON, with where it is."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append((f"{path}.{key}", value))
            found += _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _datasource_refs(value, f"{path}[{i}]")
    return found


def test_dashboard_imports_into_any_grafana() -> None:
    """No datasource uid is written into the dashboard: every query goes through the ${datasource}
    variable (of type datasource, Prometheus), and __inputs lets Grafana's import ask for one."""
    dash = json.loads(DASHBOARD.read_text())
    refs = _datasource_refs(dash)
    assert len(refs) > 60
    for where, ref in refs:
        if where.startswith(".annotations"):  # Grafana's own built-in annotation source, in every Grafana
            assert ref == {"type": "grafana", "uid": "-- Grafana --"}, (where, ref)
            continue
        assert ref == {"type": "prometheus", "uid": "${datasource}"}, (where, ref)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert [(i["name"], i["type"], i["pluginId"]) for i in dash["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")]
    text = DASHBOARD.read_text()
    # the stack's provisioned uid appears nowhere, nor any other literal uid of a Prometheus
    assert '"uid": "prometheus"' not in text
    assert {m for m in re.findall(r'"uid": "([^"]*)"', text)} == {"${datasource}", "-- Grafana --", "featsieve"}


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
    exported = _families(_registry_exposition())
    missing = exported - _dashboard_families() - set(NOT_ON_DASHBOARD)
    assert not missing, f"no dashboard panel shows {sorted(missing)}: add a panel or a reason to NOT_ON_DASHBOARD"
    assert set(NOT_ON_DASHBOARD) <= exported, sorted(set(NOT_ON_DASHBOARD) - exported)
    assert not set(NOT_ON_DASHBOARD) & _dashboard_families(), "listed as not on the dashboard, but it is"


def test_every_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    undocumented = {f for f in _families(_registry_exposition()) if f"`{f}`" not in doc}
    assert not undocumented, f"docs/metrics.md does not describe {sorted(undocumented)}"


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


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"job": "featsieve", **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _fires(at: str, alert: str, *label_sets: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": ls} for ls in label_sets]}


def _on(instance: str, severity: str = "warning") -> dict[str, str]:
    return {"severity": severity, "job": "featsieve", "instance": instance}


# One promtool unit test per alert: each fires on series that should trigger it (and with the labels
# routing needs) and stays silent on look-alikes that should not. Times are from promtool's epoch 0,
# so time() at "25m" is 1500 and a timestamp series "0+60x40" is always "now".
ALERT_TESTS: dict[str, dict[str, Any]] = {
    "FeatsieveDown": {
        "input_series": [_series("up", "0x10", instance="a"), _series("up", "1x10", instance="b")],
        "alert_rule_test": [_fires("10m", "FeatsieveDown", _on("a", "critical")), _fires("0m", "FeatsieveDown")],
    },
    "FeatsieveNotReady": {
        "input_series": [_series("featsieve_ready", "0x10", instance="a"),
                         _series("featsieve_ready", "1x10", instance="b")],
        "alert_rule_test": [_fires("10m", "FeatsieveNotReady", _on("a")), _fires("2m", "FeatsieveNotReady")],
    },
    "FeatsieveConsumerLagGrowing": {
        "input_series": [
            _series("featsieve_consumer_lag_records", "200000+10000x40", instance="a", group="g", topic="t",
                    partition="0"),
            _series("featsieve_consumer_lag_records", "200000x40", instance="b", group="g", topic="t", partition="0"),
        ],
        "alert_rule_test": [{**_fires("35m", "FeatsieveConsumerLagGrowing"),
                             "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "a"}}]},
                            _fires("5m", "FeatsieveConsumerLagGrowing")],
    },
    "FeatsieveMaskStale": {
        "input_series": [
            # a: single mode, never published; b: publishes; c: group mode, not the writer (never
            # publishes, rightly); d: group mode, the writer, never published
            *[_series("featsieve_last_mask_publish_timestamp_seconds", v, instance=i)
              for i, v in (("a", "0x40"), ("b", "0+60x40"), ("c", "0x40"), ("d", "0x40"))],
            *[_series("featsieve_mask_writer", v, instance=i) for i, v in (("a", "1x40"), ("b", "1x40"),
                                                                           ("c", "0x40"), ("d", "1x40"))],
            *[_series("featsieve_instance_info", "1x40", instance=i, model="m", group="g", coordination=c)
              for i, c in (("a", "single"), ("b", "single"), ("c", "group"), ("d", "group"))],
        ],
        "alert_rule_test": [_fires("25m", "FeatsieveMaskStale", _on("a"), _on("d")),
                            _fires("10m", "FeatsieveMaskStale")],
    },
    "FeatsieveDeadLettersSpiking": {
        "input_series": [
            _series("featsieve_dead_letters_total", "0+600x15", instance="a", reason="not_json"),
            _series("featsieve_dead_letters_total", "0+6x15", instance="a", reason="too_large"),
        ],
        "alert_rule_test": [_fires("15m", "FeatsieveDeadLettersSpiking",
                                   {"severity": "warning", "instance": "a", "reason": "not_json"}),
                            _fires("3m", "FeatsieveDeadLettersSpiking")],
    },
    "FeatsieveCheckpointStale": {
        "input_series": [_series("featsieve_last_checkpoint_timestamp_seconds", "0x40", instance="a"),
                         _series("featsieve_last_checkpoint_timestamp_seconds", "0+60x40", instance="b")],
        "alert_rule_test": [_fires("25m", "FeatsieveCheckpointStale", _on("a")),
                            _fires("10m", "FeatsieveCheckpointStale")],
    },
    "FeatsieveOrphanClicksHigh": {
        "input_series": [
            # a: half the clicks orphaned (mis-keyed); b: 1% (late clicks); c: no clicks at all
            *[_series("featsieve_events_total", v, instance=i, type="click", outcome="ok")
              for i, v in (("a", "0+600x40"), ("b", "0+600x40"), ("c", "0x40"))],
            *[_series("featsieve_orphan_clicks_total", v, instance=i)
              for i, v in (("a", "0+300x40"), ("b", "0+6x40"), ("c", "0x40"))],
        ],
        "alert_rule_test": [_fires("25m", "FeatsieveOrphanClicksHigh", _on("a")),
                            _fires("8m", "FeatsieveOrphanClicksHigh")],
    },
    "FeatsieveKafkaErrors": {
        "input_series": [
            # a: an error every minute; b: one burst (a broker restart), then nothing
            _series("featsieve_kafka_errors_total", "0+1x40", instance="a", error="KafkaTimeoutError"),
            _series("featsieve_kafka_errors_total", "0x3 5x36", instance="b", error="Disconnected"),
        ],
        "alert_rule_test": [_fires("25m", "FeatsieveKafkaErrors", _on("a")), _fires("8m", "FeatsieveKafkaErrors")],
    },
    "FeatsieveMaskWritersNotOne": {
        "input_series": [
            # group mode: m1 has one writer, m2 two, m3 none; m4 is two single-mode daemons (not counted)
            *[_series("featsieve_mask_writer", w, instance=i)
              for i, w in (("a", "1x10"), ("b", "0x10"), ("c", "1x10"), ("d", "1x10"), ("e", "0x10"),
                           ("f", "0x10"), ("g", "1x10"), ("h", "1x10"))],
            *[_series("featsieve_instance_info", "1x10", instance=i, model=m, group="g", coordination=c)
              for i, m, c in (("a", "m1", "group"), ("b", "m1", "group"), ("c", "m2", "group"),
                              ("d", "m2", "group"), ("e", "m3", "group"), ("f", "m3", "group"),
                              ("g", "m4", "single"), ("h", "m4", "single"))],
        ],
        "alert_rule_test": [_fires("5m", "FeatsieveMaskWritersNotOne", {"severity": "critical", "model": "m2"},
                                   {"severity": "critical", "model": "m3"}),
                            _fires("1m", "FeatsieveMaskWritersNotOne")],
    },
    "FeatsieveDecodeWorkerFailed": {
        "input_series": [_series("featsieve_decode_worker_failures_total", "0 0 0 1x10", instance="a"),
                         _series("featsieve_decode_worker_failures_total", "0x12", instance="b")],
        "alert_rule_test": [_fires("5m", "FeatsieveDecodeWorkerFailed", _on("a")),
                            _fires("1m", "FeatsieveDecodeWorkerFailed")],
    },
}


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    rules = {r["alert"] for g in _load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r}
    assert rules == set(ALERT_TESTS), f"untested: {sorted(rules - set(ALERT_TESTS))}"
    for alert, case in ALERT_TESTS.items():
        checks = [c for c in case["alert_rule_test"] if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in checks) and any(not c["exp_alerts"] for c in checks), alert


@pytest.mark.parametrize("alert", sorted(ALERT_TESTS))
def test_alert_fires_as_intended(alert: str, tmp_path: Path) -> None:
    """``promtool test rules`` for one alert, against the real rules file (annotations aside: promtool
    compares them too, and they are prose)."""
    groups = _load_yaml(ALERTS)["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_path = tmp_path / "alerts.yml"
    rules_path.write_text(yaml.safe_dump({"groups": groups}))
    tests = {"rule_files": [str(rules_path)], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", **ALERT_TESTS[alert]}]}
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests))
    proc = _promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_tests_can_fail(tmp_path: Path) -> None:
    """The harness is not vacuous: a case expecting the wrong instance fails."""
    groups = _load_yaml(ALERTS)["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_path = tmp_path / "alerts.yml"
    rules_path.write_text(yaml.safe_dump({"groups": groups}))
    case = {**ALERT_TESTS["FeatsieveCheckpointStale"],
            "alert_rule_test": [_fires("25m", "FeatsieveCheckpointStale", _on("b"))]}
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(rules_path)], "evaluation_interval": "1m",
                                    "tests": [{"interval": "1m", **case}]}))
    assert _promtool("test", "rules", str(path)).returncode != 0


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
