"""A process serving one server-streaming RPC behind medmesh's interceptor chain
(`default_interceptors` around the AuthInterceptor, what GrpcServer installs), whose clients
cancel each stream after its first message while the server is blocked writing the next
(flow control). The abandoned response generators are finalised by asyncio after grpc has
released the calls; an interceptor that touches the dead call then (`context.peer()` did)
segfaults the process. Prints `survived` when it did not: the load run's svc_ingest crash,
in a few lines."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator

import grpc

from medmesh.auth import AuthInterceptor, StaticJwks, TokenVerifier
from medmesh.identity import PUBLIC
from medmesh.interceptors import default_interceptors

STREAMS = 20
MESSAGE = b"x" * 65536  # a few of these fill the HTTP/2 window: the server's write blocks


async def endless(_request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """A WatchStudy-like stream that outlives its client's interest."""
    for _ in range(1000):
        yield MESSAGE


async def main() -> None:
    verifier = TokenVerifier(StaticJwks({"keys": []}), issuer="medmesh", audience="medmesh")
    auth = AuthInterceptor(verifier, {"test.Streams": {"Watch": PUBLIC}})
    server = grpc.aio.server(interceptors=default_interceptors([auth]))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Streams", {"Watch": grpc.unary_stream_rpc_method_handler(endless)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = channel.unary_stream("/test.Streams/Watch")
        for _ in range(STREAMS):
            call = watch(b"")
            await call.read()
            call.cancel()
            await asyncio.sleep(0.05)
        for _ in range(5):
            gc.collect()
            await asyncio.sleep(0.1)
    await server.stop(None)
    sys.stdout.write("survived\n")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
