"""Reading deploy/kubernetes and deploy/compose: the documents, and the Gatehouse
containers in them with the command and environment each one runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yaml"
YAMLLINT_CONFIG = ROOT / "deploy" / ".yamllint.yaml"
SECRETS_EXAMPLE = KUBERNETES / "secrets.example.yaml"
# Other Kubernetes manifests under deploy/ that run Gatehouse (the Istio example: its
# Istio kinds have no schema here, its Deployment does).
OTHER_MANIFESTS = [ROOT / "deploy" / "istio" / "gatehouse.yaml"]
# The image name the manifests use (kustomization.yaml's `images:` maps it to a registry).
GATEHOUSE_IMAGE = "gatehouse"
COMPOSE_IMAGE = "gatehouse:dev"


def kubernetes_files() -> list[Path]:
    """Every Kubernetes manifest (not the kustomizations, which are kustomize's own kind)."""
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomizations() -> list[Path]:
    return sorted(KUBERNETES.rglob("kustomization.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@dataclass(frozen=True)
class Container:
    """One Gatehouse container: where it is defined, its argv after the `gatehouse`
    entrypoint, and its environment (a Secret reference as ("secret", name, key))."""

    where: str
    args: list[str]
    env: dict[str, str | tuple[str, str, str]]
    spec: dict[str, Any] = field(default_factory=dict)
    pod: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return self.args[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def kubernetes_containers(paths: list[Path] | None = None) -> Iterator[Container]:
    """The Gatehouse containers of deploy/kubernetes (or of `paths`)."""
    for path in kubernetes_files() if paths is None else paths:
        for doc in documents(path):
            spec = pod_spec(doc)
            if spec is None:
                continue
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                if c["image"].split(":")[0] != GATEHOUSE_IMAGE:
                    continue
                env: dict[str, str | tuple[str, str, str]] = {}
                for item in c.get("env", []):
                    if "value" in item:
                        env[item["name"]] = str(item["value"])
                    else:
                        ref = item["valueFrom"]["secretKeyRef"]
                        env[item["name"]] = ("secret", ref["name"], ref["key"])
                where = f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']}, container {c['name']}"
                # No `command:`: the image's ENTRYPOINT (`gatehouse`) runs the args.
                assert "command" not in c, f"{where}: set args, not command (the image's entrypoint is gatehouse)"
                yield Container(where, list(c["args"]), env, c, spec)


def compose_containers() -> Iterator[Container]:
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        if service.get("image") != COMPOSE_IMAGE:
            continue
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        yield Container(f"{COMPOSE.relative_to(ROOT)}: service {name}", list(service["command"]), dict(env), service)
