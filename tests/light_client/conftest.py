"""Fixtures shared by the light client's suites."""

from __future__ import annotations

import secrets

import pytest

from tests.processes import sidecar_env


@pytest.fixture
def env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    """The environment of a `gatehouse serve` process on this run's database and Redis."""
    return sidecar_env(database_url, redis_url, redis_prefix, "gh_op_" + secrets.token_urlsafe(24))
