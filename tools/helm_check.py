"""Check the Helm chart in helm/qrmesh offline, without a helm binary or a cluster (`make helm`).

1. The chart's Envoy configuration, helm/qrmesh/files/envoy.yaml, is the output of
   `qrmesh envoy-config --kubernetes --release qrmesh` (`--write` regenerates it).
2. Every values file in helm/qrmesh/ci/ passes values.schema.json (Helm's own validator and
   the `jsonschema` package, on the values merged with the chart's defaults), and so that
   the schema stays strict, each of INVALID_VALUES is rejected.
3. `helm lint --strict` (helm-python-sdk, Helm's Go SDK in a shared library) finds nothing
   above info level for each values file.
4. The chart renders with each values file, and every manifest (hooks included) validates
   strictly (no unknown fields) with kubernetes-validate against the oldest Kubernetes the
   chart supports and the newest the package knows.

tests/e2e/test_helm.py runs the same functions and more assertions on what was rendered.

Usage: python tools/helm_check.py [--write]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "qrmesh"
ENVOY_FILE = CHART / "files" / "envoy.yaml"
CI_VALUES = CHART / "ci"
ENVOY_RELEASE = "qrmesh"
"""The release name files/envoy.yaml is generated for; the chart substitutes the real one."""
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""The chart's kubeVersion floor (Chart.yaml) and the newest Kubernetes kubernetes-validate knows."""
LINT_WARNING = 2
"""helm lint severities: 1 info, 2 warning, 3 error."""

Manifest = dict[str, Any]


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base`, mappings key by key (as Helm merges values files)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a values file must be a mapping")
    return loaded


def scenarios() -> dict[str, dict[str, Any]]:
    """The values files the chart is checked with, by name (ci/<name>-values.yaml)."""
    return {
        path.name.removesuffix("-values.yaml"): _load_yaml(path) for path in sorted(CI_VALUES.glob("*-values.yaml"))
    }


def _default() -> dict[str, Any]:
    return scenarios()["default"]


# Values the schema must reject, each on top of the default scenario, with why.
INVALID_VALUES: dict[str, dict[str, Any]] = {
    "an unknown top-level key": {"replicas": 3},
    "a misspelt key in a service": {"services": {"qr": {"replicaCont": 3}}},
    "a service the edge does not know": {"services": {"payments": {"grpcPort": 50060}}},
    "a port the edge does not use": {"services": {"identity": {"grpcPort": 50099}}},
    "a redirect-only key on another service": {"services": {"identity": {"httpPort": 8081}}},
    "a wrong type": {"services": {"qr": {"replicaCount": "three"}}},
    "a CORS origin with a path": {"edge": {"corsOrigins": ["https://app.example.com/login"]}},
    "a root pod": {"podSecurityContext": {"runAsNonRoot": False}},
    "a writable root filesystem": {"securityContext": {"readOnlyRootFilesystem": False}},
    "kept capabilities": {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
    "a short service secret": {"secrets": {"serviceSecret": "secret"}},
    "a database URL that is not PostgreSQL": {"secrets": {"databaseUrl": "mysql://db/qrmesh"}},
    "an external traffic policy on a ClusterIP Service": {"edge": {"service": {"externalTrafficPolicy": "Local"}}},
    "an image digest that is not sha256": {"image": {"digest": "latest"}},
    "an exporter configured with a string": {"otel": {"collector": {"exporters": {"otlp": "tempo:4317"}}}},
}


def invalid_values() -> dict[str, dict[str, Any]]:
    """INVALID_VALUES, each merged over the default scenario."""
    return {why: merge(_default(), change) for why, change in INVALID_VALUES.items()}


def qrmesh_envoy_config(release: str, *, cors_origins: Sequence[str] = ()) -> str:
    """What `qrmesh envoy-config --kubernetes --release <release>` prints (CORS from QRMESH_CORS_ORIGINS)."""
    script = Path(sys.executable).with_name("qrmesh")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "qrmesh.cli"]
    env = {key: value for key, value in os.environ.items() if key != "QRMESH_CORS_ORIGINS"}
    if cors_origins:
        env["QRMESH_CORS_ORIGINS"] = ",".join(cors_origins)
    result = subprocess.run(  # noqa: S603 - our own command line, no shell
        [*command, "envoy-config", "--kubernetes", "--release", release],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return result.stdout


def write_envoy_file() -> bool:
    """Regenerate helm/qrmesh/files/envoy.yaml; whether it changed."""
    config = qrmesh_envoy_config(ENVOY_RELEASE)
    if ENVOY_FILE.exists() and ENVOY_FILE.read_text() == config:
        return False
    ENVOY_FILE.parent.mkdir(parents=True, exist_ok=True)
    ENVOY_FILE.write_text(config)
    return True


def envoy_file_errors() -> list[str]:
    """A problem if files/envoy.yaml is not what `qrmesh envoy-config --kubernetes` prints now."""
    if not ENVOY_FILE.exists():
        return [f"{ENVOY_FILE.relative_to(ROOT)} is missing: run `make helm`"]
    if ENVOY_FILE.read_text() != qrmesh_envoy_config(ENVOY_RELEASE):
        return [
            f"{ENVOY_FILE.relative_to(ROOT)} differs from `qrmesh envoy-config --kubernetes --release "
            f"{ENVOY_RELEASE}`: run `make helm` and commit the result"
        ]
    return []


@contextmanager
def load_chart() -> Iterator[helm_python.Chart]:
    """The chart, loaded by Helm's Go SDK."""
    with helm_python.Chart.load(CHART) as chart:
        yield chart


def schema_errors(chart: helm_python.Chart, values: Mapping[str, Any]) -> list[str]:
    """Why `values` fail values.schema.json, by Helm's validator and by `jsonschema` (empty if they pass)."""
    errors = []
    try:
        chart.validate_schema(dict(values))
    except helm_python.HelmValuesError as exc:
        errors.append(f"helm: {exc}")
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    merged = chart.merge_values(dict(values))
    for error in sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(part) for part in error.absolute_path) or "(top)"
        errors.append(f"jsonschema: {where}: {error.message}")
    return errors


def lint_errors(values: Mapping[str, Any], kube_version: str) -> list[str]:
    """`helm lint --strict` findings of warning level and above."""
    report = helm_python.lint(CHART, dict(values), strict=True, kube_version=f"v{kube_version}")
    problems = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= LINT_WARNING]
    return problems + [str(error) for error in report["errors"]]


def render(
    chart: helm_python.Chart,
    values: Mapping[str, Any],
    *,
    release: str = "qrmesh",
    namespace: str = "qrmesh",
) -> list[Manifest]:
    """Every object the chart renders (hooks included), in template order."""
    rendered = chart.render(dict(values), name=release, namespace=namespace, is_install=True)
    manifests = []
    for template in sorted(rendered):
        if not template.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(rendered[template]):
            if document is not None:
                manifests.append(document)
    return manifests


def manifest_errors(manifests: Sequence[Manifest], kube_version: str) -> list[str]:
    """Manifests that fail kubernetes-validate's strict schemas for `kube_version`."""
    errors = []
    for manifest in manifests:
        name = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            errors.append(f"{name} (Kubernetes {kube_version}): {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name} (Kubernetes {kube_version}): {exc.message}")
    return errors


def check() -> list[str]:
    """Every problem with the chart, as lines to print."""
    problems = envoy_file_errors()
    with load_chart() as chart:
        for name, values in scenarios().items():
            problems += [f"{name}: {error}" for error in schema_errors(chart, values)]
            for version in KUBERNETES_VERSIONS:
                problems += [f"{name}: lint: {error}" for error in lint_errors(values, version)]
            try:
                manifests = render(chart, values)
            except helm_python.HelmError as exc:
                problems.append(f"{name}: render: {exc}")
                continue
            for version in KUBERNETES_VERSIONS:
                problems += [f"{name}: {error}" for error in manifest_errors(manifests, version)]
            print(f"{name}: {len(manifests)} manifests valid for Kubernetes {', '.join(KUBERNETES_VERSIONS)}")
        for why, values in invalid_values().items():
            rejected_by = {error.split(":", 1)[0] for error in schema_errors(chart, values)}
            for validator in sorted({"helm", "jsonschema"} - rejected_by):
                problems.append(f"values.schema.json accepts {why} ({validator})")
        print(f"values.schema.json rejects all {len(INVALID_VALUES)} invalid values files")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="regenerate helm/qrmesh/files/envoy.yaml first")
    args = parser.parse_args()
    if args.write and write_envoy_file():
        print(f"wrote {ENVOY_FILE.relative_to(ROOT)}")
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"helm chart: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("helm chart: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
