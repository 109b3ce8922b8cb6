"""The Helm chart and the Dockerfile, checked offline (`make helm` runs the same checks).

The chart is rendered by Helm's own Go SDK (helm-python-sdk), its manifests are validated
strictly against Kubernetes' schemas (kubernetes-validate), its Envoy configuration is compared
with `qrmesh envoy-config --kubernetes` and checked by the real Envoy binary.
"""

from __future__ import annotations

import copy
import json
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.descriptors import DESCRIPTOR_SET_PATH
from qrmesh.edge import static_files, validate_config
from qrmesh.identity.config import IdentityConfig
from qrmesh.mesh import SERVICES
from qrmesh.platform.settings import Settings
from qrmesh.redirect.config import RedirectConfig
from tools import dockerfile_check, helm_check

pytestmark = pytest.mark.e2e

Manifest = dict[str, Any]
SCENARIOS = sorted(helm_check.scenarios())
WORKLOADS = ("Deployment", "StatefulSet", "Job")


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_check.load_chart() as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered(chart: helm_python.Chart) -> dict[str, list[Manifest]]:
    return {name: helm_check.render(chart, values) for name, values in helm_check.scenarios().items()}


def values_of(name: str, **changes: Any) -> dict[str, Any]:
    return helm_check.merge(helm_check.scenarios()[name], changes)


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def kinds(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest, name: str) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"] + pod_spec(workload).get("initContainers", [])
    return next(c for c in containers if c["name"] == name)


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in spec.get("env", [])}


def edge_config(manifests: list[Manifest], release: str = "qrmesh") -> str:
    config: str = find(manifests, "ConfigMap", f"{release}-edge")["data"]["envoy.yaml"]
    return config


# --- The Envoy configuration stays what `qrmesh envoy-config --kubernetes` prints ---------------


def test_the_charts_envoy_file_is_what_the_command_prints() -> None:
    assert helm_check.ENVOY_FILE.read_text() == helm_check.qrmesh_envoy_config("qrmesh")
    assert helm_check.envoy_file_errors() == []


@pytest.mark.parametrize("release", ["qrmesh", "prod-eu"])
def test_the_rendered_envoy_config_is_the_commands_for_the_release(chart: helm_python.Chart, release: str) -> None:
    manifests = helm_check.render(chart, values_of("default"), release=release)
    assert edge_config(manifests, release) == helm_check.qrmesh_envoy_config(release)
    # The edge reaches exactly the Services the chart creates.
    services = {m["metadata"]["name"] for m in kinds(manifests, "Service")}
    clusters = yaml.safe_load(edge_config(manifests, release))["static_resources"]["clusters"]
    addresses = {
        endpoint["endpoint"]["address"]["socket_address"]["address"]
        for cluster in clusters
        for group in cluster["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
    }
    assert addresses == {f"{release}-{name}" for name in SERVICES}
    assert addresses <= services


def test_cors_origins_render_as_the_command_renders_them(chart: helm_python.Chart) -> None:
    origins = ["https://app.example.com", "https://admin.my-company.example:8443", "http://[::1]:3000"]
    manifests = helm_check.render(chart, values_of("default", edge={"corsOrigins": origins}))
    assert edge_config(manifests) == helm_check.qrmesh_envoy_config("qrmesh", cors_origins=origins)
    assert "localhost" not in edge_config(manifests)


def test_trusted_hops_change_only_the_forwarded_for_line(chart: helm_python.Chart) -> None:
    command = helm_check.qrmesh_envoy_config("qrmesh")
    assert command.count("xff_num_trusted_hops: 0\n") == 1
    manifests = helm_check.render(chart, values_of("default", edge={"trustedHops": 2}))
    assert edge_config(manifests) == command.replace("xff_num_trusted_hops: 0\n", "xff_num_trusted_hops: 2\n")


def test_the_real_envoy_accepts_the_rendered_config(rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    # The production scenario's (CORS origins, a trusted hop), with the image's paths pointed
    # at this machine's copies of the same files.
    static = tmp_path / "static"
    static.mkdir()
    for item in static_files():
        shutil.copyfile(item.filename, static / Path(item.filename).name)
    config = (
        edge_config(rendered["production"])
        .replace("/etc/envoy/qrmesh.binpb", str(DESCRIPTOR_SET_PATH))
        .replace("/etc/envoy/static/", f"{static}/")
    )
    assert "/etc/envoy" not in config
    validate_config(config)


def test_a_drifted_envoy_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    drifted = tmp_path / "envoy.yaml"
    drifted.write_text(helm_check.ENVOY_FILE.read_text().replace("port_value: 50051", "port_value: 50099"))
    monkeypatch.setattr(helm_check, "ENVOY_FILE", drifted)
    monkeypatch.setattr(helm_check, "ROOT", tmp_path)
    assert helm_check.envoy_file_errors() == [
        "envoy.yaml differs from `qrmesh envoy-config --kubernetes --release qrmesh`: "
        "run `make helm` and commit the result"
    ]


# --- Values: the schema, lint, and what Kubernetes accepts ----------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_values_files_pass_the_schema(chart: helm_python.Chart, scenario: str) -> None:
    assert helm_check.schema_errors(chart, helm_check.scenarios()[scenario]) == []


@pytest.mark.parametrize("why", sorted(helm_check.INVALID_VALUES))
def test_the_schema_rejects_invalid_values(chart: helm_python.Chart, why: str) -> None:
    errors = helm_check.schema_errors(chart, helm_check.invalid_values()[why])
    assert {error.split(":", 1)[0] for error in errors} == {"helm", "jsonschema"}, errors


def test_an_invalid_values_file_stops_helm_before_rendering(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="replicaCont"):
        chart.validate_schema(helm_check.invalid_values()["a misspelt key in a service"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario: str) -> None:
    for version in helm_check.KUBERNETES_VERSIONS:
        assert helm_check.lint_errors(helm_check.scenarios()[scenario], version) == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_kubernetes(rendered: dict[str, list[Manifest]], scenario: str) -> None:
    manifests = rendered[scenario]
    assert len(manifests) >= 10
    for version in helm_check.KUBERNETES_VERSIONS:
        assert helm_check.manifest_errors(manifests, version) == []


def test_the_manifest_validation_rejects_what_kubernetes_would(rendered: dict[str, list[Manifest]]) -> None:
    deployment = copy.deepcopy(find(rendered["default"], "Deployment", "qrmesh-qr"))
    deployment["spec"]["replica"] = 2
    service = copy.deepcopy(find(rendered["default"], "Service", "qrmesh-qr"))
    service["spec"]["ports"][0]["port"] = "grpc"
    errors = helm_check.manifest_errors([deployment, service], "1.37.0")
    assert len(errors) == 2
    assert "Deployment/qrmesh-qr" in errors[0]
    assert "replica" in errors[0]
    assert "Service/qrmesh-qr" in errors[1]


def test_missing_secrets_fail_with_what_to_set(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"secrets\.databaseUrl is required"):
        helm_check.render(chart, {})


def test_autoscaling_bounds_are_checked(chart: helm_python.Chart) -> None:
    values = values_of(
        "default",
        services={"qr": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
    )
    with pytest.raises(helm_python.HelmRenderError, match=r"qr: autoscaling.minReplicas \(5\) is above maxReplicas"):
        helm_check.render(chart, values)


def test_the_services_are_those_of_the_mesh(chart: helm_python.Chart) -> None:
    services = chart.values["services"]
    assert sorted(services) == sorted(SERVICES)
    schema = json.loads((helm_check.CHART / "values.schema.json").read_text())["properties"]["services"]
    for name, entry in SERVICES.items():
        assert services[name]["grpcPort"] == entry.default_port
        assert schema["properties"][name]["properties"]["grpcPort"]["const"] == entry.default_port
        assert services[name].get("httpPort") == entry.http_port


def test_the_chart_ships_the_version_of_the_package(chart: helm_python.Chart) -> None:
    project = tomllib.loads((helm_check.ROOT / "pyproject.toml").read_text())["project"]
    assert chart.metadata["appVersion"] == project["version"]


# --- What the default release runs ----------------------------------------------------------------


def test_each_service_runs_with_grpc_probes_behind_a_headless_service(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["default"]
    for name, entry in SERVICES.items():
        workload = find(manifests, "Deployment", f"qrmesh-{name}")
        assert workload["spec"]["replicas"] == 2
        main = container(workload, name)
        assert [*main["command"], *main["args"]] == ["qrmesh", "serve", name]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert main[probe]["grpc"] == {"port": entry.default_port}, probe
        assert main["startupProbe"]["failureThreshold"] * main["startupProbe"]["periodSeconds"] >= 300
        assert main["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
        ports = {port["name"]: port["containerPort"] for port in main["ports"]}
        assert ports["grpc"] == entry.default_port
        assert ports["metrics"] == 9464
        assert ports.get("http") == entry.http_port
        env = env_of(main)
        assert env["QRMESH_GRPC_PORT"] == str(entry.default_port)
        assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "qrmesh-secrets", "key": "DATABASE_URL"}}
        assert env.get("QRMESH_IDENTITY_ADDR") == (None if name == "identity" else "qrmesh-identity:50052")
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "9464"
        assert pod_spec(workload)["enableServiceLinks"] is False

        service = find(manifests, "Service", f"qrmesh-{name}")
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        assert {port["name"]: port["port"] for port in service["spec"]["ports"]} == ports


def test_the_redirect_finds_qr_and_spools_to_its_volume(rendered: dict[str, list[Manifest]]) -> None:
    redirect = find(rendered["default"], "Deployment", "qrmesh-redirect")
    main = container(redirect, "redirect")
    env = env_of(main)
    assert env["QRMESH_REDIRECT_QR_ADDR"] == "qrmesh-qr:50051"
    assert env["QRMESH_REDIRECT_HTTP_PORT"] == "8081"
    assert env["QRMESH_REDIRECT_VISITOR_SECRET"]["secretKeyRef"]["optional"] is True
    mounts = {mount["name"]: mount["mountPath"] for mount in main["volumeMounts"]}
    assert mounts["spool"] == env["QRMESH_REDIRECT_SPOOL_DIR"] == "/var/lib/qrmesh/spool"
    volumes = {volume["name"]: volume for volume in pod_spec(redirect)["volumes"]}
    assert volumes["spool"]["emptyDir"] == {"sizeLimit": "1Gi"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_service_reads_its_settings_from_what_the_chart_gives_it(
    rendered: dict[str, list[Manifest]], scenario: str
) -> None:
    manifests = rendered[scenario]
    shared = find(manifests, "ConfigMap", "qrmesh-config")["data"]
    secret = {
        "DATABASE_URL": "postgresql://qrmesh@db:5432/qrmesh",
        "REDIS_URL": "redis://redis:6379/0",
        "QRMESH_SERVICE_SECRET": "s" * 32,
    }
    for name in SERVICES:
        workload = next(m for m in manifests if m["kind"] in WORKLOADS and m["metadata"]["name"] == f"qrmesh-{name}")
        main = container(workload, name)
        assert [source["configMapRef"]["name"] for source in main["envFrom"]] == ["qrmesh-config"]
        environ = dict(shared)
        for key, value in env_of(main).items():
            if isinstance(value, str):
                environ[key] = value
            elif key in secret:
                environ[key] = secret[key]
            else:
                assert value["secretKeyRef"]["optional"] is True, key
        settings = Settings.from_env(name, environ, port=0)
        assert settings.port == SERVICES[name].default_port
        metrics = {port["name"]: port["containerPort"] for port in main["ports"]}.get("metrics")
        assert metrics is None or str(metrics) == environ["QRMESH_METRICS_PORT"]
        assert settings.host == "0.0.0.0"
        if name == "redirect":
            config = RedirectConfig.from_settings(settings)
            assert config.qr_address == "qrmesh-qr:50051"
            assert config.http_port == 8081
            assert str(config.spool_dir) == "/var/lib/qrmesh/spool"
        if name == "analytics":
            assert AnalyticsConfig.from_settings(settings).qr_address == "qrmesh-qr:50051"
        if name == "identity":
            IdentityConfig.from_settings(settings)


def test_the_config_map_carries_the_shared_settings(rendered: dict[str, list[Manifest]]) -> None:
    data = find(rendered["default"], "ConfigMap", "qrmesh-config")["data"]
    assert data == {
        "QRMESH_GRPC_HOST": "0.0.0.0",
        "QRMESH_PUBLIC_BASE_URL": "http://qrmesh.local",
        "QRMESH_LOG_LEVEL": "info",
        "QRMESH_LOG_FORMAT": "json",
        "QRMESH_METRICS_PORT": "9464",
    }
    secret = find(rendered["default"], "Secret", "qrmesh-secrets")
    assert sorted(secret["data"]) == ["DATABASE_URL", "QRMESH_SERVICE_SECRET", "REDIS_URL"]


def test_the_edge_mounts_its_config_and_is_the_only_way_in(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["default"]
    edge = find(manifests, "Deployment", "qrmesh-edge")
    envoy = container(edge, "envoy")
    assert envoy["args"][:2] == ["--config-path", dockerfile_check.EDGE_CONFIG_PATH]
    mounts = {mount["name"]: mount["mountPath"] for mount in envoy["volumeMounts"]}
    assert mounts["config"] == str(Path(dockerfile_check.EDGE_CONFIG_PATH).parent)
    assert pod_spec(edge)["securityContext"]["runAsUser"] == 65532
    assert find(manifests, "Service", "qrmesh-edge")["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    # Only the edge's Service is reachable without the headless in-cluster DNS names.
    assert [s["metadata"]["name"] for s in kinds(manifests, "Service") if s["spec"].get("clusterIP") != "None"] == [
        "qrmesh-edge"
    ]


def test_the_migration_job_is_a_hook_before_install_and_upgrade(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["default"]
    job = find(manifests, "Job", "qrmesh-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    spec = pod_spec(job)
    steps = [*spec.get("initContainers", []), *spec["containers"]]
    assert [step["args"] for step in steps] == [["migrate", name] for name in sorted(SERVICES)]
    # On a first install the chart's Secret does not exist yet: the Job has a hook Secret of its own.
    hook_secret = find(manifests, "Secret", "qrmesh-migrate")
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert sorted(hook_secret["data"]) == ["DATABASE_URL", "REDIS_URL"]
    assert {env_of(step)["DATABASE_URL"]["secretKeyRef"]["name"] for step in steps} == {"qrmesh-migrate"}
    assert spec["serviceAccountName"] == "default"
    assert spec["restartPolicy"] == "Never"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_hardened(rendered: dict[str, list[Manifest]], scenario: str) -> None:
    workloads = [m for m in rendered[scenario] if m["kind"] in WORKLOADS]
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        where = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], where
        for item in spec["containers"] + spec.get("initContainers", []):
            context = item["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["runAsNonRoot"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert {"name": "tmp", "mountPath": "/tmp"} in item["volumeMounts"], where
            assert item["resources"]["requests"]["cpu"], where
            assert item["resources"]["limits"]["memory"], where


# --- Network policies -----------------------------------------------------------------------------


def test_network_policies_let_in_only_the_edge(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["default"]
    policies = {p["metadata"]["name"]: p["spec"] for p in kinds(manifests, "NetworkPolicy")}
    assert sorted(policies) == ["qrmesh-edge", "qrmesh-migrate", "qrmesh-services", "qrmesh-webhook-deliveries"]

    # Every pod the chart runs is selected by a policy.
    for workload in (m for m in manifests if m["kind"] in WORKLOADS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selected = [n for n, p in policies.items() if p["podSelector"]["matchLabels"].items() <= labels.items()]
        assert selected, workload["metadata"]["name"]

    services = policies["qrmesh-services"]
    tiers = [
        peer["podSelector"]["matchLabels"].get("qrmesh.dev/tier")
        for rule in services["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer
    ]
    assert tiers == ["edge", "service"]
    assert all(rule["from"] for rule in services["ingress"])  # no rule open to everyone
    from_edge = {port["port"] for port in services["ingress"][0]["ports"]}
    assert from_edge == {entry.default_port for entry in SERVICES.values()} | {8081}
    metrics = services["ingress"][2]
    assert metrics == {"from": [{"namespaceSelector": {}}], "ports": [{"port": 9464, "protocol": "TCP"}]}
    egress_ports = {port["port"] for rule in services["egress"] for port in rule.get("ports", [])}
    assert {5432, 6379, 53} <= egress_ports

    edge = policies["qrmesh-edge"]
    assert edge["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]  # from anywhere
    assert {port["port"] for port in edge["egress"][0]["ports"]} == from_edge

    migrate = policies["qrmesh-migrate"]
    assert "ingress" not in migrate
    assert migrate["policyTypes"] == ["Ingress", "Egress"]

    # Webhook deliveries reach the internet from the webhooks pods only, never private or metadata ranges.
    deliveries = policies["qrmesh-webhook-deliveries"]
    assert deliveries["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "webhooks"
    assert deliveries["policyTypes"] == ["Egress"]
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"]) for peer in deliveries["egress"][0]["to"]}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"} <= blocks["0.0.0.0/0"]
    assert {"fc00::/7", "fe80::/10"} <= blocks["::/0"]
    assert {port["port"] for port in deliveries["egress"][0]["ports"]} == {80, 443}


# --- Production-like and minimal releases ---------------------------------------------------------


def test_production_scales_keeps_its_spool_and_uses_its_own_secret(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["production"]
    redirect = find(manifests, "StatefulSet", "qrmesh-redirect")
    assert "replicas" not in redirect["spec"]
    assert redirect["spec"]["serviceName"] == "qrmesh-redirect"
    claim = redirect["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert "spool" not in {volume["name"] for volume in pod_spec(redirect)["volumes"]}

    targets = {
        (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])
        for hpa in kinds(manifests, "HorizontalPodAutoscaler")
    }
    assert targets == {
        ("Deployment", "qrmesh-identity"),
        ("Deployment", "qrmesh-qr"),
        ("StatefulSet", "qrmesh-redirect"),
        ("Deployment", "qrmesh-edge"),
    }
    for kind, name in targets:
        assert "replicas" not in find(manifests, kind, name)["spec"]

    assert kinds(manifests, "Secret") == []
    for workload in (m for m in manifests if m["kind"] in WORKLOADS):
        for item in pod_spec(workload)["containers"] + pod_spec(workload).get("initContainers", []):
            for value in env_of(item).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    assert value["secretKeyRef"]["name"] == "qrmesh-production"

    qr = find(manifests, "Deployment", "qrmesh-qr")
    assert container(qr, "qr")["image"] == (
        "registry.example.com/qrmesh/qrmesh@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert env_of(container(find(manifests, "Deployment", "qrmesh-identity"), "identity"))[
        "QRMESH_IDENTITY_ACCESS_TOKEN_TTL"
    ] == ("600")
    budget = find(manifests, "PodDisruptionBudget", "qrmesh-redirect")
    assert budget["spec"]["maxUnavailable"] == "25%"
    pod_labels = redirect["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    edge_service = find(manifests, "Service", "qrmesh-edge")["spec"]
    assert (edge_service["type"], edge_service["externalTrafficPolicy"]) == ("LoadBalancer", "Local")


def test_production_sends_traces_to_its_collector(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["production"]
    assert find(manifests, "ConfigMap", "qrmesh-config")["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
        "http://qrmesh-otelcol:4317"
    )
    collector = find(manifests, "Deployment", "qrmesh-otelcol")
    assert container(collector, "otelcol")["image"] == "otel/opentelemetry-collector:0.149.0"
    config = yaml.safe_load(find(manifests, "ConfigMap", "qrmesh-otelcol")["data"]["config.yaml"])
    assert config["exporters"] == {"otlp": {"endpoint": "tempo.observability:4317", "tls": {"insecure": True}}}
    assert config["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "batch"],
        "exporters": ["otlp"],
    }
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert find(manifests, "Service", "qrmesh-otelcol")["spec"]["ports"][0]["port"] == 4317
    policy = find(manifests, "NetworkPolicy", "qrmesh-otelcol")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    services_egress = find(manifests, "NetworkPolicy", "qrmesh-services")["spec"]["egress"]
    assert any(
        rule.get("to", [{}])[0].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        == "otelcol"
        for rule in services_egress
    )


def test_the_minimal_release_runs_just_the_pods(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["minimal"]
    assert sorted({m["kind"] for m in manifests}) == ["ConfigMap", "Deployment", "Service"]
    for workload in kinds(manifests, "Deployment"):
        assert workload["spec"]["replicas"] == 1
        assert pod_spec(workload)["serviceAccountName"] == "default"
        assert "topologySpreadConstraints" not in pod_spec(workload)
        for item in pod_spec(workload)["containers"]:
            assert "lifecycle" not in item
            assert "metrics" not in {port["name"] for port in item["ports"]}
    assert "QRMESH_METRICS_PORT" not in find(manifests, "ConfigMap", "qrmesh-config")["data"]


# --- The Dockerfile -------------------------------------------------------------------------------


def test_the_dockerfile_passes_its_checks() -> None:
    assert dockerfile_check.problems() == []
    stages = {stage.name: stage for stage in dockerfile_check.stages()}
    assert stages["service"].last("ENTRYPOINT") == '["qrmesh"]'
    assert stages["edge"].base.startswith("envoyproxy/envoy:distroless-v")


def test_the_dockerfile_checks_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest AS service\n"
        "ADD https://example.com/tool.tar.gz /opt/\n"
        "COPY no-such-dir /src\n"
        "USER root\n"
        'CMD ["qrmesh"]\n'
        "FROM envoyproxy/envoy:distroless-v1.10.0 AS edge\n"
        "USER 65532\n"
        'CMD ["-c", "/etc/envoy/envoy.yaml"]\n'
    )
    found = "\n".join(dockerfile_check.problems(bad))
    assert "hadolint:" in found
    assert "python:latest: give the base image an explicit tag" in found
    assert "ADD https://example.com/tool.tar.gz" in found
    assert "COPY no-such-dir: no such file" in found
    assert "service: end with a numeric non-root USER" in found
    assert "distroless-v1.10.0: use Envoy" in found
    assert "reads /etc/envoy/qrmesh.binpb, which no COPY provides" in found
    assert f"CMD must read the configuration the chart mounts at {dockerfile_check.EDGE_CONFIG_PATH}" in found


@pytest.mark.parametrize(
    ("path", "kept_out"),
    [
        ("gen/qrmesh/descriptors/qrmesh.binpb", False),
        ("services/qrmesh/cli.py", False),
        ("services/qrmesh/__pycache__/cli.cpython-311.pyc", True),
        ("services/qrmesh/cli.pyc", True),
        (".venv/bin/python", True),
        ("tests/conftest.py", True),
        ("helm/qrmesh/values.yaml", True),
    ],
)
def test_dockerignore_lets_in_only_the_build_inputs(path: str, kept_out: bool) -> None:
    assert dockerfile_check.ignored(path, dockerfile_check.dockerignore_rules()) is kept_out


def test_traces_go_to_the_debug_exporter_or_an_endpoint_of_your_own(chart: helm_python.Chart) -> None:
    manifests = helm_check.render(chart, values_of("default", otel={"collector": {"enabled": True}}))
    config = yaml.safe_load(find(manifests, "ConfigMap", "qrmesh-otelcol")["data"]["config.yaml"])
    assert config["exporters"] == {"debug": {"verbosity": "basic"}}
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["debug"]

    manifests = helm_check.render(chart, values_of("default", otel={"endpoint": "http://otel.observability:4317"}))
    config_map = find(manifests, "ConfigMap", "qrmesh-config")["data"]
    assert config_map["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.observability:4317"
    assert not [m for m in manifests if m["metadata"]["name"] == "qrmesh-otelcol"]
