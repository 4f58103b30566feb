"""Kubernetes manifests and Temporal Helm values, checked statically."""

from __future__ import annotations

import re

import pytest
import yaml

from dunning.api.app import create_app
from dunning.config import TASK_QUEUE, Settings
from dunning.store import Store
from tests.support import ROOT

K8S = ROOT / "deploy" / "k8s"
EXTRA_ENGINE_VARIABLES = {"DUNNING_WORKER_METRICS_PORT"}  # read by dunning/api/metrics.py
HEALTHCHECK_MODES = {"http", "tcp", "worker"}


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = []
    for resource in kustomization["resources"]:
        found += [doc for doc in yaml.safe_load_all((K8S / resource).read_text()) if doc]
    listed = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(kustomization["resources"]), "every manifest is part of the kustomization"
    return found


def of_kind(objects, kind) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def test_every_object_is_well_formed(objects):
    for obj in objects:
        assert {"apiVersion", "kind", "metadata"} <= set(obj), obj
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject"} <= kinds


def test_every_container_has_probes_and_resources(objects):
    deployments = of_kind(objects, "Deployment")
    assert set(deployments) == {"dunning-worker", "dunning-http"}
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for container in containers(deployment):
            assert container.get("livenessProbe") and container.get("readinessProbe"), f"{name}: probes"
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) >= {"cpu", "memory"}, f"{name}: {kind}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_probes_check_what_exists(objects, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    app = create_app(Settings(dunning_data_dir=tmp_path, dunning_api_token="t"), store)
    from fastapi.routing import iter_route_contexts

    paths = {context.path for context in iter_route_contexts(app.routes)}
    for deployment in of_kind(objects, "Deployment").values():
        for container in containers(deployment):
            ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = container.get(probe_name)
                if not probe:
                    continue
                if "httpGet" in probe:
                    assert probe["httpGet"]["path"] in paths and probe["httpGet"]["port"] in ports
                elif "tcpSocket" in probe:
                    assert probe["tcpSocket"]["port"] in ports
                else:
                    command = probe["exec"]["command"]
                    assert command[:2] == ["python", "deploy/healthcheck.py"] and command[2] in HEALTHCHECK_MODES
                    assert probe["timeoutSeconds"] >= 20, "the worker check connects to Temporal: give it time"
    worker = containers(of_kind(objects, "Deployment")["dunning-worker"])[0]
    assert worker["livenessProbe"]["exec"]["command"][2:] == ["worker"]
    assert worker["readinessProbe"]["exec"]["command"][2:] == ["worker", "--strict"]
    http = containers(of_kind(objects, "Deployment")["dunning-http"])[0]
    assert http["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert http["ports"][0]["containerPort"] == 8000


def test_commands_and_images(objects):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    image_names = {image["name"] for image in kustomization["images"]}
    commands = {}
    for name, deployment in of_kind(objects, "Deployment").items():
        [container] = containers(deployment)
        assert container["image"] in image_names
        commands[name] = container["command"]
        assert (ROOT / container["command"][1]).is_file()
    assert commands == {"dunning-worker": ["python", "worker.py"], "dunning-http": ["python", "deploy/serve.py"]}


def test_configuration_is_understood_by_settings_and_secrets_are_files(objects):
    config = of_kind(objects, "ConfigMap")["dunning-config"]["data"]
    fields = set(Settings.model_fields)
    unknown = [key for key in config if key.lower() not in fields and key not in EXTRA_ENGINE_VARIABLES]
    assert not unknown, unknown
    for key, value in config.items():
        if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|DATABASE_URL|CODEC_KEYS$", key):
            assert key.endswith("_FILE"), f"{key} must come from a Secret file"
        if key.endswith("_FILE"):
            assert value.startswith("/etc/dunning/secrets/")
    assert config["DUNNING_CODEC_REQUIRED"] == "true"
    for deployment in of_kind(objects, "Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        [container] = spec["containers"]
        assert {"configMapRef": {"name": "dunning-config"}} in container["envFrom"]
        assert "env" not in container or not any("value" in e for e in container["env"] if re.search("TOKEN|KEY|SECRET", e["name"]))
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert mounts["secrets"] == "/etc/dunning/secrets" and volumes["secrets"]["secret"]["secretName"] == "dunning-secrets"
        assert volumes["temporal-tls"]["secret"]["optional"] is True


def test_scaling_objects_target_real_workloads(objects):
    deployments = of_kind(objects, "Deployment")
    for pdb in of_kind(objects, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values())
    [hpa] = of_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "dunning-http" and hpa["spec"]["minReplicas"] >= 2
    [scaled] = of_kind(objects, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dunning-worker"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "temporal" and trigger["metadata"]["taskQueue"] == TASK_QUEUE
    assert trigger["metadata"]["endpointFromEnv"] in of_kind(objects, "ConfigMap")["dunning-config"]["data"]
    assert int(trigger["metadata"]["targetQueueSize"]) > 0
    assert scaled["spec"]["minReplicaCount"] >= 2 <= scaled["spec"]["maxReplicaCount"]
    [service] = of_kind(objects, "Service").values()
    assert service["spec"]["selector"] == deployments["dunning-http"]["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_temporal_helm_values_use_postgresql_and_no_bundled_databases():
    values = yaml.safe_load((ROOT / "deploy/helm/temporal-values.yaml").read_text())
    persistence = values["server"]["config"]["persistence"]
    for store in ("default", "visibility"):
        assert persistence[store]["driver"] == "sql"
        assert persistence[store]["sql"]["driver"] == "postgres12"
        assert persistence[store]["sql"]["existingSecret"] and "password" not in persistence[store]["sql"]
    assert {persistence["default"]["sql"]["database"], persistence["visibility"]["sql"]["database"]} == {"temporal", "temporal_visibility"}
    for bundled in ("cassandra", "mysql", "postgresql", "elasticsearch", "prometheus", "grafana"):
        assert values[bundled]["enabled"] is False
    env = {e["name"]: e["value"] for e in values["web"]["additionalEnv"]}
    assert env["TEMPORAL_CODEC_ENDPOINT"].endswith("/codec")
