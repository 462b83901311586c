"""The checked-in protobuf code in clients/python/gatehouse_client/v1 must be what protos/ generates today.

`./dev protos` (scripts/genproto.py) regenerates it; this test fails the suite when
someone edits a .proto and forgets to, or edits generated code by hand.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

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
