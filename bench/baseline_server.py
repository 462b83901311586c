"""The empty-handler baseline: the same services as Gatehouse, constant answers.

    python -m bench.baseline_server --listen 127.0.0.1:PORT [--workers N]

A grpc.aio server on uvloop (as `gatehouse serve` runs) with the generated
AccessService and ConfigService servicers, so requests are parsed and answers serialized
by the same protobuf runtime; the handlers do nothing else. With `--workers N` it forks N
processes sharing the port through SO_REUSEPORT, mirroring `gatehouse serve --workers N`.
What Gatehouse costs beyond gRPC itself is Gatehouse ÷ this.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import grpc

from gatehouse_client.v1 import access_pb2, access_pb2_grpc, common_pb2, config_pb2, config_pb2_grpc

_ALLOWED = access_pb2.CheckAccessResponse(
    allowed=True,
    reason=access_pb2.DECISION_REASON_ALLOWED,
    revision=1,
    granted_by_role="accountant",
    granted_at_scope="emea/de",
)
_CONFIG = config_pb2.TenantConfig(
    id="00000000-0000-4000-8000-000000000000",
    slug="bench-00000",
    name="Bench tenant bench-00000",
    status=common_pb2.TENANT_STATUS_ACTIVE,
    plan="bench",
    region="eu-west",
    feature_flags={"reports": True, "exports": False},
    quotas={"seats": 50, "projects": 20, "api_calls_per_day": 1_000_000},
    rate_limits={"check_per_second": 1000, "admin_per_second": 10},
    revision=1,
)
_CONFIG.settings.update({"theme": "dark", "locale": "en", "retention_days": 30})


class ConstantAccess(access_pb2_grpc.AccessServiceServicer):
    async def CheckAccess(self, request, context):  # type: ignore[no-untyped-def]
        return _ALLOWED

    async def CheckAccessBatch(self, request, context):  # type: ignore[no-untyped-def]
        return access_pb2.CheckAccessBatchResponse(results=[_ALLOWED] * len(request.checks))


class ConstantConfig(config_pb2_grpc.ConfigServiceServicer):
    async def GetTenantConfig(self, request, context):  # type: ignore[no-untyped-def]
        return _CONFIG


async def serve(listen: str, reuseport: bool, max_pending: int = 0) -> None:
    options: list[tuple[str, int]] = [("grpc.so_reuseport", 1 if reuseport else 0)]
    if max_pending:  # as server/app.py's pending_call_bound, which this module does not import
        options += [
            ("grpc.server.max_pending_requests", max_pending),
            ("grpc.server.max_pending_requests_hard_limit", 2 * max_pending),
        ]
    server = grpc.aio.server(options=options)
    access_pb2_grpc.add_AccessServiceServicer_to_server(ConstantAccess(), server)
    config_pb2_grpc.add_ConfigServiceServicer_to_server(ConstantConfig(), server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"baseline: cannot listen on {listen}")
    await server.start()
    print(f"baseline: serving on {listen} (pid {os.getpid()})", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(0.5)


def _run(listen: str, reuseport: bool, max_pending: int) -> None:
    import uvloop

    uvloop.run(serve(listen, reuseport, max_pending))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_server", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50061")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--max-pending", type=int, default=0,
        help="grpc core's pending-call bound, as Gatehouse's GATEHOUSE_MAX_PENDING_CALLS (0 = none)",
    )
    args = parser.parse_args(argv)
    if args.workers <= 1:
        _run(args.listen, reuseport=False, max_pending=args.max_pending)
        return 0
    # Fork before any gRPC object exists in this process (gRPC does not survive fork).
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                _run(args.listen, reuseport=True, max_pending=args.max_pending)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
