"""The layer rules (README "Architecture"), read off the imports of every module:

- engine/ (the pure decision) imports no other layer, and nothing of grpc, asyncio,
  asyncpg or redis: importing it in a fresh interpreter loads none of them;
- declarative/ (the state file, its diff and plan) is as pure: it imports the engine only,
  and nothing of grpc, asyncio, asyncpg or redis; the calls it plans are made in server/;
- store/ never imports cache/ or server/; cache/ never imports server/;
- the neutral modules in gatehouse/ (errors, events, settings, ...) import no layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"engine": ROOT / "engine", "declarative": ROOT / "declarative", "store": ROOT / "store", "cache": ROOT / "cache", "server": ROOT / "server"}
NEUTRAL = ROOT / "gatehouse"
# layer -> the layers it must not import
FORBIDDEN = {
    "engine": {"store", "cache", "server", "declarative"},
    "declarative": {"store", "cache", "server"},
    "store": {"cache", "server"},
    "cache": {"server"},
    "neutral": {"engine", "store", "cache", "server", "declarative"},
}
IMPURE = ("grpc", "asyncio", "asyncpg", "redis", "google.protobuf", "uvloop")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules_of(layer: str) -> list[Path]:
    if layer == "neutral":
        return [p for p in NEUTRAL.glob("*.py")]
    return sorted(LAYERS[layer].rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_follow_the_rules(layer: str) -> None:
    broken = []
    for path in modules_of(layer):
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "gatehouse" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                broken.append(f"{path.relative_to(ROOT)} imports {module}")
            if layer in ("engine", "declarative") and module.startswith(IMPURE):
                broken.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("layer", ["engine", "declarative"])
def test_importing_the_engine_loads_no_io_or_transport(layer: str) -> None:
    probe = (
        f"import sys, importlib, pkgutil, gatehouse.{layer} as e\n"
        f"for m in pkgutil.iter_modules(e.__path__): importlib.import_module('gatehouse.{layer}.' + m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'grpc','asyncpg','redis','uvloop'} or m == 'asyncio'))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded
