"""deploy/istio: the files parse, the route mapping in its ConfigMap loads as Gatehouse
loads it at start, and the CUSTOM policy names the provider the mesh config registers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gatehouse.server.ext_authz_routes import parse

ISTIO = Path(__file__).resolve().parent.parent.parent / "deploy" / "istio"


def documents(name: str) -> list[dict[str, Any]]:
    with open(ISTIO / name) as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def test_the_mapping_in_the_configmap_loads() -> None:
    [config_map] = [d for d in documents("gatehouse.yaml") if d["kind"] == "ConfigMap"]
    mapping = parse(config_map["data"]["gatehouse-routes.yaml"], "gatehouse.yaml ConfigMap")
    found = mapping.route("GET", "/v1/invoices/42")
    assert found is not None and found[0].permission == "invoice.read"
    [deployment] = [d for d in documents("gatehouse.yaml") if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    mount = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
    assert args[args.index("--ext-authz-config") + 1] == f"{mount}/gatehouse-routes.yaml"


def test_the_custom_policy_names_the_registered_provider() -> None:
    [mesh] = documents("mesh-config.yaml")
    providers = {p["name"]: p for p in mesh["spec"]["meshConfig"]["extensionProviders"]}
    custom = [d for d in documents("authorization-policy.yaml") if d["spec"].get("action") == "CUSTOM"]
    assert custom and all(d["spec"]["provider"]["name"] in providers for d in custom)
    grpc = providers["gatehouse"]["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False  # fail closed
    [service] = [d for d in documents("gatehouse.yaml") if d["kind"] == "Service"]
    assert grpc["service"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert grpc["port"] == service["spec"]["ports"][0]["port"]
