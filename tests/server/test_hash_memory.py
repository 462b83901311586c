"""Argon2id's 19 MiB per verification goes back to the OS (the soak's one-time RSS step)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import threading
from gatehouse.server.admin_auth import HASHER, return_hash_memory_to_the_os
{setup}
stored = HASHER.hash("secret")

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

before = rss_mb()
for _ in range(3):
    worker = threading.Thread(target=HASHER.verify, args=(stored, "secret"))
    worker.start()
    worker.join()
print(rss_mb() - before)
"""


def grown_mb(setup: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(setup=setup)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_verifying_in_threads_leaves_no_hash_memory_behind() -> None:
    # Without the setting a hashing thread keeps ~19 MiB (the test would see it);
    # with it, the RSS after three verifications is where it was before them.
    assert grown_mb("") > 10
    assert grown_mb("return_hash_memory_to_the_os()") < 5
