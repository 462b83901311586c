"""README's "Try it" runs, twice in a row, against a real server: its shell block (the
`gatehouse` CLI) and its Python block (the light client), as a reader would paste them,
from a directory holding `.gatehouse/operator-key` as `./dev serve` leaves it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.served import Served

ROOT = Path(__file__).resolve().parents[2]


def try_it_blocks() -> tuple[str, str]:
    section = (ROOT / "README.md").read_text().split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert shell and python, "README's Try it lost its sh or python block"
    return shell.group(1), python.group(1)


def test_try_it_runs_twice_in_a_row(served: Served, tmp_path: Path) -> None:
    shell, python = try_it_blocks()
    state = tmp_path / ".gatehouse"
    state.mkdir(mode=0o700)
    (state / "operator-key").write_text(served.bootstrap + "\n")
    env = {
        **{k: v for k, v in os.environ.items() if k != "GATEHOUSE_KEY"},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "GATEHOUSE_SERVER": served.address,
    }
    # The Python block reads GATEHOUSE_KEY, which the shell block exported: run it after.
    script = f"set -euo pipefail\n{shell}\n{sys.executable} - <<'PY'\n{python}PY\n"
    outputs = []
    for _ in range(2):
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    for out in outputs:
        assert "explanation:      role 'accountant' held at scope 'emea/de' grants it" in out
        assert "denied, exit 1" in out
        assert "Decision(allowed=True, reason='ALLOWED', revision=5, granted_by_role='accountant'" in out
        assert "theme: dark" in out and "beta: true" in out
    assert (state / "my-key").stat().st_mode & 0o777 == 0o600
