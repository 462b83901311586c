"""clients/python installs on its own: into a fresh venv, from the package index `./dev
setup` uses (pip's own configuration), it brings grpcio, protobuf and
googleapis-common-protos, and none of the server's dependencies (~25 s)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
SERVER_ONLY = ("asyncpg", "redis", "uvloop", "cachetools", "argon2-cffi", "prometheus-client", "PyYAML")


@pytest.mark.slow
def test_the_client_distribution_needs_only_grpcio_and_protobuf(tmp_path: Path) -> None:
    # A copy: pip builds in the source tree, which is not this test's to litter.
    source = shutil.copytree(CLIENT, tmp_path / "source", ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    run = lambda *args: subprocess.run([python, *args], capture_output=True, text=True, timeout=300)  # noqa: E731

    installed = run("-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source))
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = run("-m", "pip", "list", "--format=freeze", "--disable-pip-version-check")
    names = {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.split()}
    assert {"gatehouse-client", "grpcio", "protobuf", "googleapis-common-protos"} <= names
    assert not names & {name.lower() for name in SERVER_ONLY}, names
    assert names <= {"gatehouse-client", "grpcio", "protobuf", "googleapis-common-protos", "typing-extensions",
                      "pip", "setuptools"}, names

    # It imports and works as far as it can without a server, loading nothing of the server's.
    probe = run("-c", "import sys, grpc; from gatehouse_client import Client, GatehouseError\n"
                      "c = Client('127.0.0.1:9', key='k', retries=0, timeout=1)\n"
                      "try: c.check('t', 'user:a', 'x.read')\n"
                      "except GatehouseError as e: print(e.code.name)\n"
                      "print(sorted({m.split('.')[0] for m in sys.modules} & {'asyncpg', 'redis', 'uvloop', 'gatehouse'}))")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["UNAVAILABLE", "[]"]
