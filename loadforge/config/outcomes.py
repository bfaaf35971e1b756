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

# A request's `expect_status` ([[requests]] expect_status = [200, 404]) overrides fail_status
# for that request. The engine records each of its responses under one of these outcomes
# (engine/http1.pxi response_outcome), so that every fold stays a function of the outcome
# alone, merged "*" rows included:
# - "unexpected": a status outside the request's set; always an error, a response (latency).
# - "expected": a status in the set whose class fail_status counts as errors (a 404 the
#   request expects); never an error. Statuses in the set whose class is a success anyway
#   keep their class ("2xx").
UNEXPECTED = "unexpected"
EXPECTED = "expected"
OUTCOMES = ("1xx", "2xx", "3xx", "4xx", "5xx", "connect", "timeout", "reset", "protocol",
            "stream_reset", "goaway", "flow_control") + GRPC_OUTCOMES + (UNEXPECTED, EXPECTED)
# Transport failures, no response (OUTCOMES' numbering, engine/recorder.pxd).
FAILURE_KINDS = OUTCOMES[5:12]
STATUS_CLASSES = OUTCOMES[:5]


def error_outcomes(fail_status: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The outcomes a run counts as errors: transport failures, responses outside a request's
    expect_status, and the status classes (and gRPC codes) of `fail_status`. The one rule
    every fold (aggregator, live view, figures, SLOs, compare, report) reads."""
    return frozenset(FAILURE_KINDS) | {UNEXPECTED} | frozenset(fail_status)


def is_error(outcome: str, fail_status: tuple[str, ...] | list[str]) -> bool:
    """Whether one outcome counts as an error (error_outcomes)."""
    return outcome in FAILURE_KINDS or outcome == UNEXPECTED or outcome in fail_status


def response_outcome(status: int, fail_status: tuple[str, ...] | list[str],
                     expect_status: tuple[int, ...] = ()) -> str:
    """The outcome of one HTTP response, as the engine records it (engine/http1.pxi
    response_outcome): its status class, or with an expect_status set "unexpected" outside
    it and "expected" inside it where fail_status would count the class."""
    cls = STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
    if not expect_status:
        return cls
    if status not in expect_status:
        return UNEXPECTED
    return EXPECTED if cls in fail_status else cls


def expect_words(expect_status: tuple[int, ...], fail_status: tuple[str, ...] | list[str]
                 ) -> tuple[int, ...]:
    """A request's expect_status as the engine reads it: EXPECT_WORDS 64-bit words, bit s
    set for each status s in the set (100-599, words 0-9), word 10 the status classes
    fail_status counts (bit 0: 1xx ... bit 4: 5xx). Empty: the request has no set."""
    if not expect_status:
        return ()
    words = [0] * 11
    for status in expect_status:
        words[status >> 6] |= 1 << (status & 63)
    for i, cls in enumerate(STATUS_CLASSES):
        if cls in fail_status:
            words[10] |= 1 << i
    return tuple(words)


def status_fix(status: int, fail_status: tuple[str, ...] | list[str],
               expect_status: tuple[int, ...] = (), request: str = "the request") -> str | None:
    """How the run judges one status of a request (the preflight's rule, the engine's):
    None where it is a success, else what a user changes to count it as one."""
    if not is_error(response_outcome(status, fail_status, expect_status), fail_status):
        return None
    if expect_status:
        listed = ", ".join(str(s) for s in sorted({*expect_status, status}))
        return (f"{request} expects {', '.join(str(s) for s in expect_status)} "
                f"(expect_status); if {status} is expected too, write expect_status = [{listed}]")
    cls = STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
    rest = ", ".join(f'"{c}"' for c in fail_status if c != cls)
    return (f"if {status} is expected, add expect_status = [{status}] to {request}, "
            f"or set load.fail_status = [{rest}] to count every {cls} as a success")
