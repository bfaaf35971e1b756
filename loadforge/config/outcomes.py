"""The outcomes of one arrival, in the order the engine numbers them. Status classes are
responses, the rest are transport failures (no response).

A module of its own, importing nothing, so that a worker process (run/workers.py), which needs
only these names, does not import the whole plan (feeders, TLS, observe, sandbox: about 60 ms
of CPU per worker at start-up). config/plan.py re-exports them."""

from __future__ import annotations

# gRPC status codes by number (grpc/doc/statuscodes.md): a gRPC call's outcome is
# "grpc:<CODE>" of its grpc-status, a response like the status classes.
GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
              "UNAUTHENTICATED")
GRPC_PREFIX = "grpc:"
GRPC_OUTCOMES = tuple(GRPC_PREFIX + code for code in GRPC_CODES)
OUTCOMES = ("1xx", "2xx", "3xx", "4xx", "5xx", "connect", "timeout", "reset", "protocol",
            "stream_reset", "goaway", "flow_control") + GRPC_OUTCOMES
