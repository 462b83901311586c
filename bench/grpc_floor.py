"""The floor of this Python's grpcio: closed-loop h2load against a raw-bytes empty handler.

    python -m bench.grpc_floor [--seconds 8] [--connections 16] [--streams 8]

Starts, in a child process of the current interpreter, a grpc.aio server on uvloop whose
one method returns two constant bytes (no protobuf at all), saturates it with h2load
(`-c 16 -m 8`) and prints requests/s and the server's CPU. Run it from two virtualenvs to
compare grpcio releases; that is how grpcio 1.78.2 was chosen (bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import grpc

from bench.h2load import GRPC_HEADERS, ensure_h2load, grpc_frame, url_args
from bench.targets import cpu_seconds, free_port

METHOD = "/bench.Floor/Empty"


def serve(port: int) -> None:
    import uvloop

    async def main() -> None:
        async def empty(request: bytes, context: object) -> bytes:
            return b"\x08\x01"

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "bench.Floor", {"Empty": grpc.unary_unary_rpc_method_handler(empty)}
        ),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    uvloop.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    h2load = ensure_h2load()
    port = free_port()
    body = ""
    server = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--serve", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with tempfile.NamedTemporaryFile(suffix=".body", delete=False) as f:
            f.write(grpc_frame(b""))
        body = f.name
        cpu0, t0 = cpu_seconds([server.pid]), time.monotonic()
        out = subprocess.run(
            [h2load, "-D", str(args.seconds), "-c", str(args.connections), "-m", str(args.streams), "-t", "1",
             *GRPC_HEADERS, "-d", body, *url_args(f"127.0.0.1:{port}", METHOD)],
            capture_output=True, text=True, check=True,
        ).stdout
        cpu = (cpu_seconds([server.pid]) - cpu0) / (time.monotonic() - t0)
    finally:
        server.terminate()
        server.wait()
        if body:
            os.unlink(body)
    rate = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: .*", out)
    print(f"grpcio {grpc.__version__}: {rate.group(1) if rate else '?'} req/s, server CPU {100 * cpu:.0f} % "
          f"({codes.group(0) if codes else out[-300:]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
