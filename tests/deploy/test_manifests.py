"""deploy/kubernetes and deploy/compose cannot rot: every manifest is valid against the
Kubernetes schemas (kubernetes-validate, schemas bundled in the pinned release, strict:
an unknown field fails), the compose file against the compose-spec schema (vendored by
check-jsonschema; docker does not run here), all of it passes yamllint
(deploy/.yamllint.yaml), and what the Gatehouse containers run is real: every
`GATEHOUSE_*` variable is a setting the command reads (gatehouse/settings.py), every
subcommand and flag is one `gatehouse` accepts, every Secret reference has its key in
secrets.example.yaml, and the probes, socket and ports agree with each other.
tests/deploy/test_sequence.py runs the commands themselves."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from gatehouse.server import cli
from gatehouse.server.health import LIVENESS
from gatehouse.settings import RELAY_SETTINGS, Settings
from tests.deploy.manifests import (
    COMPOSE,
    KUBERNETES,
    OTHER_MANIFESTS,
    ROOT,
    SECRETS_EXAMPLE,
    YAMLLINT_CONFIG,
    Container,
    compose_containers,
    documents,
    kubernetes_containers,
    kubernetes_files,
    kustomizations,
    pod_spec,
)

# The oldest Kubernetes the examples claim (grpc probes GA in 1.27, policy/v1 PDBs in
# 1.21) and the newest kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

SERVE_ENV = {f"GATEHOUSE_{f.name.upper()}" for f in fields(Settings)}
RELAY_ENV = {f"GATEHOUSE_{name.upper()}" for name in RELAY_SETTINGS}
# `gatehouse migrate` (gatehouse/settings.py MigrateSettings); GATEHOUSE_DATABASE_URL
# names the runtime role when GATEHOUSE_RUNTIME_ROLE does not.
MIGRATE_ENV = {"GATEHOUSE_MIGRATE_DATABASE_URL", "GATEHOUSE_RUNTIME_ROLE", "GATEHOUSE_DATABASE_URL"}
ENV_BY_COMMAND = {"serve": SERVE_ENV, "relay": RELAY_ENV, "migrate": MIGRATE_ENV}


def all_containers() -> list[Container]:
    return [*kubernetes_containers(), *kubernetes_containers(OTHER_MANIFESTS), *compose_containers()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", [*kubernetes_files(), *OTHER_MANIFESTS], ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path}: no documents"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_refuses_a_misspelled_field() -> None:
    """The check above can fail: a probe field the schema does not know is refused."""
    doc = copy.deepcopy(documents(KUBERNETES / "example-app.yaml")[0])
    gatehouse = next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "gatehouse")
    gatehouse["readinessProbe"]["grpc"]["servce"] = "liveness"
    with pytest.raises(kubernetes_validate.ValidationError, match="servce"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomizations_list_every_manifest_but_the_secrets_example() -> None:
    listed: set[Path] = set()
    for kustomization in kustomizations():
        doc = yaml.safe_load(kustomization.read_text())
        assert doc["kind"] == "Kustomization"
        for resource in doc["resources"]:
            path = (kustomization.parent / resource).resolve()
            assert path.is_file(), f"{kustomization.relative_to(ROOT)} lists {resource}, which does not exist"
            listed.add(path)
        assert [image["name"] for image in doc["images"]] == ["gatehouse"]
    # Applying the kustomization must never overwrite real Secrets with placeholders.
    assert set(kubernetes_files()) - listed == {SECRETS_EXAMPLE}
    tags = {json.dumps(yaml.safe_load(k.read_text())["images"]) for k in kustomizations()}
    assert len(tags) == 1, "the migration Job must run the image the sidecars run"


@pytest.mark.parametrize("path", [*kubernetes_files(), *kustomizations(), COMPOSE], ids=lambda p: str(p.relative_to(ROOT)))
def test_yamllint(path: Path) -> None:
    config = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    problems = [f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.desc} ({p.rule})" for p in linter.run(path.read_text(), config, str(path))]
    assert not problems, "\n".join(problems)


def compose_schema() -> dict[str, Any]:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    assert compose_errors(yaml.safe_load(COMPOSE.read_text())) == []


def test_compose_schema_check_refuses_a_wrong_condition() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    compose["services"]["gatehouse"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert compose_errors(compose), "the compose-spec schema accepted an unknown depends_on condition"


def test_compose_runs_migrate_before_serve_and_relay() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("gatehouse", "relay"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_there_are_gatehouse_containers_for_every_command() -> None:
    commands = [(c.where.split(":")[0], c.command) for c in all_containers()]
    for source in ("deploy/kubernetes/example-app.yaml", "deploy/kubernetes/relay.yaml", "deploy/kubernetes/migrate/job.yaml"):
        assert any(where == source for where, _ in commands), source
    assert sorted(command for where, command in commands if where.startswith("deploy/compose")) == ["migrate", "relay", "serve"]


@pytest.mark.parametrize("container", all_containers(), ids=lambda c: c.where)
def test_environment_names_are_settings_the_command_reads(container: Container) -> None:
    known = ENV_BY_COMMAND[container.command]
    unknown = sorted(name for name in container.env if name not in known)
    assert not unknown, f"{container.where}: `gatehouse {container.command}` reads no {unknown}"


@pytest.mark.parametrize("container", all_containers(), ids=lambda c: c.where)
def test_command_and_flags_are_ones_gatehouse_accepts(container: Container) -> None:
    """Parsed by the real `gatehouse` parser: `--help` lists the flags of the subcommand,
    and parsing the args with `--help` appended would stop at the help, so each flag is
    looked up in that listing."""
    commands = re.search(r"\{([^}]*)\}", help_text([]))
    assert commands and container.command in commands.group(1).split(","), f"{container.where}: no `gatehouse {container.command}`"
    listing = help_text([container.command])
    for word in container.args[1:]:
        if word.startswith("--"):
            assert re.search(rf"(^|\s){re.escape(word.split('=')[0])}\b", listing, re.M), (
                f"{container.where}: `gatehouse {container.command}` has no {word}"
            )
        elif container.command == "migrate":
            assert word in ("up", "down", "version"), f"{container.where}: migrate {word}?"


def help_text(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--help"])
    assert exit_.value.code == 0
    return out.getvalue()


def test_secret_references_have_their_key_in_the_example() -> None:
    example = {(d["metadata"]["name"], key) for d in documents(SECRETS_EXAMPLE) for key in d["stringData"]}
    referenced = {(v[1], v[2]) for c in kubernetes_containers() for v in c.env.values() if isinstance(v, tuple)}
    assert referenced, "no Secret references found"
    assert referenced <= example, f"not in secrets.example.yaml: {sorted(referenced - example)}"
    assert referenced == example, f"unused in the manifests: {sorted(example - referenced)}"


def test_owner_credential_only_in_the_migration_job() -> None:
    for c in kubernetes_containers():
        owner = ("secret", "gatehouse-db", "owner-url")
        assert (owner in c.env.values()) == (c.command == "migrate"), c.where
        if c.command != "migrate":
            assert c.env["GATEHOUSE_DATABASE_URL"] == ("secret", "gatehouse-db", "runtime-url"), c.where


def test_relay_metrics_port_and_annotations_agree() -> None:
    """The relay's /metrics (GATEHOUSE_METRICS_LISTEN: `gatehouse relay` serves none
    without it) on the pod's address, at the port the annotations name and the network
    policy lets the monitoring namespace reach."""
    (deployment,) = [d for d in documents(KUBERNETES / "relay.yaml") if d["kind"] == "Deployment"]
    (relay,) = [c for c in kubernetes_containers() if c.command == "relay"]
    ports = {p["name"]: p["containerPort"] for p in relay.spec["ports"]}
    listen = str(relay.env["GATEHOUSE_METRICS_LISTEN"])
    assert not listen.startswith(("127.", "localhost", "[::1]")), "Prometheus scrapes the pod's address"
    assert ports["gh-metrics"] == int(listen.rsplit(":", 1)[1])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["gh-metrics"])
    (policy,) = [
        d for d in documents(KUBERNETES / "networkpolicy.yaml")
        if d["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    ]
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["gh-metrics"]


def test_sidecar_probes_socket_and_ports_agree() -> None:
    (deployment,) = [d for d in documents(KUBERNETES / "example-app.yaml") if d["kind"] == "Deployment"]
    spec = pod_spec(deployment)
    assert spec is not None
    (sidecar,) = [c for c in kubernetes_containers() if c.command == "serve"]
    ports = {p["name"]: p["containerPort"] for p in sidecar.spec["ports"]}
    grpc_port = int(str(sidecar.env["GATEHOUSE_LISTEN"]).rsplit(":", 1)[1])
    assert ports["gh-grpc"] == grpc_port
    assert ports["gh-metrics"] == int(str(sidecar.env["GATEHOUSE_METRICS_LISTEN"]).rsplit(":", 1)[1])
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["gh-metrics"])
    readiness, liveness = sidecar.spec["readinessProbe"]["grpc"], sidecar.spec["livenessProbe"]["grpc"]
    assert readiness["port"] == liveness["port"] == grpc_port
    assert readiness.get("service", "") == ""  # the overall status
    assert liveness["service"] == LIVENESS
    # The kubelet dials the pod's address: a loopback-only listener would fail every probe.
    assert not str(sidecar.env["GATEHOUSE_LISTEN"]).startswith(("127.", "localhost", "[::1]"))
    assert sidecar.env["GATEHOUSE_RELAY"] == "0"
    # The socket lies in an emptyDir that the app container mounts too, at the path it dials.
    socket = Path(str(sidecar.env["GATEHOUSE_UNIX_SOCKET"]))
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in sidecar.spec["volumeMounts"] if m["mountPath"] == str(socket.parent)]
    assert "emptyDir" in volumes[mount["name"]]
    (app,) = [c for c in spec["containers"] if c["name"] == "app"]
    assert any(m["name"] == mount["name"] and m["mountPath"] == str(socket.parent) for m in app["volumeMounts"])
    target = {e["name"]: e.get("value") for e in app["env"]}["GATEHOUSE_TARGET"]
    assert target == f"unix://{socket}"
    # The socket is srwxr-xr-x (umask 022): the app must run as Gatehouse's user to connect.
    assert spec["securityContext"]["runAsUser"] == 10001
    assert "runAsUser" not in app.get("securityContext", {})
