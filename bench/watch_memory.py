"""python -m bench.watch_memory [--streams 200] [--writes 20] [--max-watch-streams N]

Server RSS with N WatchTenantConfig streams whose client never reads, while the tenant's
config changes `--writes` times (each change ~60 KiB of settings, so each message is big):
does the server buffer one message per stream, or every revision? Prints and writes
bench/results/watch-streams-<N>.json. Loopback only; a throwaway database and prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from bench.dataset import BenchStorage, generate
from bench.scenarios import _operator_token
from bench.targets import gatehouse_target
from gatehouse_client.v1 import admin_pb2, admin_pb2_grpc, config_pb2, config_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"


async def main(streams: int, writes: int, extra: list[str]) -> dict[str, object]:
    storage = BenchStorage()
    await storage.create()
    data = generate(5, 2, 2)
    await storage.seed(data)
    token = await _operator_token(storage.dsn)
    work = Path("/tmp") / f"ghwatch-{storage.run_id}"
    work.mkdir(exist_ok=True)
    target = gatehouse_target(storage, "gh_op_unused", 1, work, workers=1, extra_args=extra)
    await target.start()
    out: dict[str, object] = {"streams": streams, "writes": writes, "server_args": extra}
    try:
        tenant_id = data.tenants[0].id
        auth = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(target.address) as admin_channel:
            admin = admin_pb2_grpc.AdminServiceStub(admin_channel)
            await asyncio.sleep(1.0)
            out["rss_idle_mb"] = round(target.rss_bytes() / 2**20, 1)
            # Each stream on its own connection (a client that never reads stalls its own
            # connection's flow-control window, not the others').
            channels = [
                grpc.aio.insecure_channel(target.address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(streams)
            ]
            request = config_pb2.WatchTenantConfigRequest(tenant_id=tenant_id)
            calls = [config_pb2_grpc.ConfigServiceStub(c).WatchTenantConfig(request) for c in channels]
            for call in calls:  # start each; the first message only, then never read again
                await call.read()
            await asyncio.sleep(1.0)
            out["rss_streams_open_mb"] = round(target.rss_bytes() / 2**20, 1)
            blob = "x" * 60_000
            for i in range(writes):
                patch = struct_pb2.Struct()
                patch.update({"blob": f"{i}{blob}"})
                await admin.PatchTenantConfig(
                    admin_pb2.PatchTenantConfigRequest(tenant_id=tenant_id, settings_patch=patch), metadata=auth
                )
            samples = []
            for _ in range(5):
                await asyncio.sleep(1.0)
                samples.append(round(target.rss_bytes() / 2**20, 1))
            out["rss_after_writes_mb"] = samples
            out["growth_mb"] = round(max(samples) - float(out["rss_idle_mb"]), 1)  # type: ignore[arg-type]
            out["per_stream_kb"] = round(1024 * out["growth_mb"] / streams, 1)  # type: ignore[operator]
            refused = 0
            for call in calls:
                if call.done() and call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused += 1
            out["refused"] = refused
            for call in calls:
                call.cancel()
            for c in channels:
                await c.close()
    finally:
        await target.stop()
        await storage.close()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--writes", type=int, default=20)
    p.add_argument("--name", default="")
    p.add_argument("--gh-arg", action="append", default=[])
    a = p.parse_args()
    t0 = time.monotonic()
    result = asyncio.run(main(a.streams, a.writes, a.gh_arg))
    result["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=1))
    name = a.name or f"watch-streams-{a.streams}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
