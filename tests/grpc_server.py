"""A grpcio server of tests/data/greeter.proto for the gRPC tests, run as its own process:
`python tests/grpc_server.py STUBS_DIR PORT [BACKEND [CERT_PEM KEY_PEM]]`. STUBS_DIR holds greeter_pb2*.py, made
by grpc_tools.protoc in the test's temp dir. It counts the calls it answers by status code
(the Stats method returns them, and the calls by their `x-user` metadata as "user:<value>",
by a name holding "#" as "name:<name>")
and names itself in the `x-backend` trailer when given a name.
With CERT_PEM and KEY_PEM it serves TLS (ALPN h2). Prints "ready" once it listens on
127.0.0.1:PORT."""

from __future__ import annotations

import sys
import threading
from concurrent import futures

import grpc

sys.path.insert(0, sys.argv[1])
import greeter_pb2  # noqa: E402
import greeter_pb2_grpc  # noqa: E402


class Greeter(greeter_pb2_grpc.GreeterServicer):
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def _count(self, code: str) -> None:
        with self.lock:
            self.calls[code] = self.calls.get(code, 0) + 1

    def SayHello(self, request, context):  # noqa: N802 (the proto's name)
        if self.backend:
            context.set_trailing_metadata((("x-backend", self.backend),))
        if "#" in request.name:
            self._count(f"name:{request.name}")
        user = dict(context.invocation_metadata()).get("x-user")
        if user is not None:
            self._count(f"user:{user}")
        if request.name.startswith("missing"):
            self._count("NOT_FOUND")
            context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.name}")
        self._count("OK")
        return greeter_pb2.HelloReply(message=f"hello {request.name}" * max(1, request.times))

    def Repeat(self, request, context):  # noqa: N802
        for _ in range(max(1, request.times)):
            yield greeter_pb2.HelloReply(message=f"hello {request.name}")
        if request.name.startswith("missing"):
            self._count("NOT_FOUND")
            context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.name}")
        self._count("OK")

    def Stats(self, request, context):  # noqa: N802
        with self.lock:
            return greeter_pb2.StatsReply(calls=dict(self.calls))


def main() -> None:
    port = int(sys.argv[2])
    backend = sys.argv[3] if len(sys.argv) > 3 else ""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    greeter_pb2_grpc.add_GreeterServicer_to_server(Greeter(backend), server)
    if len(sys.argv) > 5:
        with open(sys.argv[4], "rb") as cert, open(sys.argv[5], "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
