"""The compose stack, Prometheus and Grafana config, checked statically (no container engine here)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from dunning.codec import parse_keys
from dunning.config import Settings
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
ENGINE = ("worker", "http")
# Metric families the engine exposes on /metrics (dunning/api/metrics.py), all gauges.
ENGINE_METRICS = {
    "dunning_journeys", "dunning_card_attempts", "dunning_messages", "dunning_recovered_amount_minor_units",
    "dunning_webhook_events", "dunning_store_scrape_success",
}
# Read by modules other than Settings (the worker's SDK metrics port).
EXTRA_ENGINE_VARIABLES = {"DUNNING_WORKER_METRICS_PORT"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def depends(service: dict) -> dict:
    value = service.get("depends_on") or {}
    return {name: {"condition": "service_started"} for name in value} if isinstance(value, list) else value


def one_shot(service: dict) -> bool:
    return service.get("restart") == "no"


def test_every_service_has_an_image_and_the_engine_builds_from_the_dockerfile(services):
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"
        if ":" in service["image"] and "$" not in service["image"]:
            assert not service["image"].endswith(":latest"), f"{name}: pin the image version"
    for name in ENGINE:
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_engine_commands_run_files_the_image_contains(services):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert services["worker"]["command"] == ["python", "worker.py"]
    assert services["http"]["command"] == ["python", "deploy/serve.py"]
    for script in ("worker.py", "deploy/serve.py", "deploy/healthcheck.py"):
        assert (ROOT / script).is_file()
        name = Path(script).name
        assert re.search(rf"^COPY .*\b{re.escape(script if '/' in script else name)}\b", dockerfile, re.M), f"{script} not copied"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for needed in ("dunning/**", "workflows/**", "activities/**", "policies/**", "worker.py", "deploy/serve.py"):
        assert f"!{needed}" in ignore


def test_engine_environment_is_understood_by_settings(services):
    fields = set(Settings.model_fields)
    for name in ENGINE:
        env = services[name]["environment"]
        unknown = [key for key in env if key.lower() not in fields and key not in EXTRA_ENGINE_VARIABLES]
        assert not unknown, f"{name}: variables nothing reads: {unknown}"
        settings = Settings(**{k.lower(): v for k, v in env.items() if k.lower() in fields and not k.endswith("_FILE")})
        assert settings.temporal_target == "temporal:7233" and not settings.embedded_temporal
        assert settings.dunning_codec_required, "production refuses to run without codec keys"
        assert settings.dunning_http_host == "0.0.0.0"


def test_secrets_come_from_files_never_from_plain_values(compose, services):
    declared = compose["secrets"]
    for name, service in services.items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|DATABASE_URL", key) and not re.search(r"_FILE$|__FILE$", key):
                pytest.fail(f"{name}: {key} is set in plain text; use the *_FILE variant and a secret")
            if key.endswith("FILE") and str(value).startswith("/run/secrets/"):
                secret = str(value).removeprefix("/run/secrets/")
                assert secret in (service.get("secrets") or []), f"{name}: {secret} is not mounted"
        for secret in service.get("secrets") or []:
            assert secret in declared, f"{name}: secret {secret} is not declared"
    script = (DEPLOY / "init-secrets.sh").read_text()
    for secret, spec in declared.items():
        assert spec["file"] == f"./secrets/{secret}"
        assert f"keep_or_write {secret} " in script, f"init-secrets.sh does not create {secret}"
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text()


def test_init_secrets_creates_private_usable_secrets(tmp_path):
    shutil.copy(DEPLOY / "init-secrets.sh", tmp_path / "init-secrets.sh")
    run = subprocess.run(["sh", str(tmp_path / "init-secrets.sh")], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    secrets = tmp_path / "secrets"
    for path in secrets.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert path.read_text().strip()
    assert len(parse_keys(secrets.joinpath("dunning_codec_keys").read_text())) == 1
    url = secrets.joinpath("store_database_url").read_text().strip()
    assert url == f"postgresql+psycopg://dunning:{secrets.joinpath('store_db_password').read_text().strip()}@store-db:5432/dunning"
    before = {p.name: p.read_text() for p in secrets.iterdir()}
    subprocess.run(["sh", str(tmp_path / "init-secrets.sh")], capture_output=True, timeout=30, check=True)
    assert before == {p.name: p.read_text() for p in secrets.iterdir()}, "a second run keeps every secret"


def test_dependencies_exist_have_valid_conditions_and_no_cycles(services):
    for name, service in services.items():
        for target, spec in depends(service).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert one_shot(services[target]), f"{target} must be a one-shot job"
            else:
                assert condition == "service_started"

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join(path + (name,))}"
        for target in depends(services[name]):
            visit(target, path + (name,))

    for name in services:
        visit(name, ())
    for name in ENGINE:
        assert depends(services[name])["temporal-init"]["condition"] == "service_completed_successfully"
        assert depends(services[name])["store-db"]["condition"] == "service_healthy"


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(services):
    for name, service in services.items():
        if one_shot(service):
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped"
    assert services["http"]["healthcheck"]["test"][1:] == ["python", "deploy/healthcheck.py", "http"]
    assert services["worker"]["healthcheck"]["test"][1:] == ["python", "deploy/healthcheck.py", "worker"]


def test_published_ports_bind_loopback_and_match_the_services(services):
    published = {}
    for name, service in services.items():
        for port in service.get("ports") or []:
            host, host_port, container_port = str(port).split(":")
            assert host == "127.0.0.1", f"{name} publishes {port} on every interface"
            published[name] = int(container_port)
    assert published["http"] == int(services["http"]["environment"]["DUNNING_HTTP_PORT"])
    assert published["temporal-ui"] == int(services["temporal-ui"]["environment"]["TEMPORAL_UI_PORT"])
    assert published["temporal"] == 7233


def test_temporal_is_on_postgresql_with_its_schema_and_search_attributes(services):
    temporal = services["temporal"]
    assert temporal["environment"]["DB"] == "postgres12"
    assert temporal["environment"]["POSTGRES_SEEDS"] == "temporal-db"
    assert services["temporal-db"]["image"].startswith("postgres:")
    assert services["store-db"]["image"].startswith("postgres:")
    for mount in services["temporal-schema"]["volumes"] + services["temporal-init"]["volumes"]:
        assert (DEPLOY / mount.split(":")[0]).is_file(), mount
    schema = (DEPLOY / "temporal/setup-schema.sh").read_text()
    assert "postgresql/v12/$schema/versioned" in schema and "temporal:temporal temporal_visibility:visibility" in schema
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"


# -- Prometheus and Grafana ------------------------------------------------------------------------


def test_prometheus_scrapes_the_engine_worker_and_temporal_ports(services):
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    assert targets["dunning-http"] == [f"http:{services['http']['environment']['DUNNING_HTTP_PORT']}"]
    assert targets["dunning-worker"] == [f"worker:{services['worker']['environment']['DUNNING_WORKER_METRICS_PORT']}"]
    assert targets["temporal"] == [f"temporal:{services['temporal']['environment']['PROMETHEUS_ENDPOINT'].rsplit(':', 1)[1]}"]
    token = jobs["dunning-http"]["authorization"]["credentials_file"]
    assert token == "/run/secrets/dunning_api_token" and "dunning_api_token" in services["prometheus"]["secrets"]
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/dunning.json").read_text())
    exprs = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "prometheus"
        exprs += [target["expr"] for target in panel["targets"]]
    return exprs


def test_grafana_dashboard_is_valid_and_charts_the_engine_metrics():
    exprs = dashboard_exprs()
    used = {name for expr in exprs for name in re.findall(r"\b(dunning_[a-z_]+)", expr)}
    assert used == ENGINE_METRICS
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        assert re.search(r"\b(dunning_|temporal_)", expr), f"{expr} charts neither engine nor SDK metrics"
    labels = " ".join(exprs)
    for label in ("stage", "decline_class", "channel", "currency", "status"):
        assert f"by ({label}" in labels or f", {label})" in labels, label


def test_dashboard_metrics_and_labels_are_what_the_engine_exposes(tmp_path):
    """Scrape the engine's collector on a real store: every charted family and label exists."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from dunning.api.metrics import StoreCollector
    from dunning.store import Store

    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    store.upgrade()
    collector = StoreCollector(store)
    registry = CollectorRegistry()
    registry.register(collector)
    exposed = {family.name: family for family in text_string_to_metric_families(generate_latest(registry).decode())}
    assert ENGINE_METRICS <= set(exposed), ENGINE_METRICS - set(exposed)
    labels_of = {name: set(labels) for name, (labels, _samples) in collector._read().items()}
    charted = 0
    for expr in dashboard_exprs():
        for labels, name in re.findall(r"by \(([a-z_, ]+)\) \((?:delta\()?(dunning_[a-z_]+)", expr):
            wanted = {label.strip() for label in labels.split(",")}
            assert wanted <= labels_of[name], f"{name} has no label(s) {wanted - labels_of[name]}"
            charted += 1
    assert charted >= 5


def test_grafana_provisioning_matches_the_mounts(services):
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    [source] = datasources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dunning.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"] if m.startswith("./")}
    assert (DEPLOY / mounts[path] / "dunning.json").is_file()
    assert (DEPLOY / mounts["/etc/grafana/provisioning"] / "datasources/prometheus.yaml").is_file()
