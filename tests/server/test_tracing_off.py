"""Tracing off (no OTEL_TRACES_EXPORTER): the sidecar has no SDK and no tracing link in
its chain, so no call pays for tracing (README "Traces"; on: tests/e2e/test_traces.py)."""

from __future__ import annotations

import os

import pytest

from gatehouse.server.app import Sidecar
from gatehouse.server.tracing import TraceInterceptor


@pytest.mark.skipif(bool(os.environ.get("OTEL_TRACES_EXPORTER")), reason="this environment turns tracing on")
async def test_the_chain_has_no_tracing_link(sidecar: Sidecar) -> None:
    assert sidecar.tracing is None
    assert sidecar.chain.interceptors
    assert not any(isinstance(link, TraceInterceptor) for link in sidecar.chain.interceptors)
