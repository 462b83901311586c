"""`./dev typecheck`: mypy --strict over the whole `gatehouse` package.

The card keeps the source folders at the top level (`engine/`, `server/`, `cache/`,
`store/`) and pyproject.toml's package-dir mapping installs them as `gatehouse.engine`,
... . mypy (like any tool that reads paths) cannot see that mapping, so this builds the
package as Python sees it, `.typecheck/gatehouse/`, out of symlinks (each top-level folder
linked under its package name, each file of `gatehouse/` linked beside them), and checks
that. Errors are reported under `.typecheck/gatehouse/<layer>/...`: the same files.
Settings: [tool.mypy] in pyproject.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".typecheck"
LAYERS = ("engine", "declarative", "server", "cache", "store")


def build_tree() -> Path:
    shutil.rmtree(TREE, ignore_errors=True)
    package = TREE / "gatehouse"
    package.mkdir(parents=True)
    for entry in (ROOT / "gatehouse").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for layer in LAYERS:
        (package / layer).symlink_to(ROOT / layer)
    return package


def main() -> int:
    build_tree()
    # The light client (clients/python, on mypy_path) is checked too: the server imports
    # its generated stubs, and the CLI is built on it.
    return subprocess.call([sys.executable, "-m", "mypy", "-p", "gatehouse", "-p", "gatehouse_client"], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
