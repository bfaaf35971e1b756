"""The worker wire format: the interval payload a worker's engine hands over once an interval,
and the INTERVAL message that carries it to the coordinator.

Defined twice only where it must be: here, as the struct layouts Python reads, and in
`loadforge/engine/wire.pxd`, as the packed C structs the engine (`engine/cells.pxi` `flush`)
writes; tests/test_wire.py checks one against the other field by field. Little-endian ("<")
throughout, no padding. A payload of another version is refused, not misread: a coordinator
and its workers (or shards) must run the same loadforge.

Payload, in this order: HEADER; STAGE x nstages; BACKEND x nbackends (captured header values,
slots 1..nbackends); per cell CELL, then HIST + uint32 counts twice (latency, service);
TRAILER; HIST + uint32 counts (the interval's connect times); TLS (handshakes so far, zeros
over plain TCP); HIST + uint32 counts (the interval's TLS handshake times); then, from version
5, an optional FLOWS section (scripted flows' workers only: loadforge/flows/driver.py appends
it): uint32 length, then that many bytes of UTF-8 JSON {"checks": {name: [passed, failed]},
"errors": {"flow|ExceptionType": count}}, the interval's counts. A HIST is followed by its n
uint32 counts of histogram indices lo, lo+1, ...
"""

import struct

MAGIC = 0x4957464C           # b"LFWI" read little-endian
VERSION = 6                  # 3: TLS handshake counts and times after the connect times;
                             # 4: outcomes 9-11 (HTTP/2 stream errors); 5: the optional FLOWS
                             # section (checks, flow failures) at the end; 6: the trailer's
                             # fifth count, latencies clamped to 1 h
_MAGIC_V1 = 0x3149464C       # b"LFI1": version 1, before the format had a version field

# magic, version, final, worker, stages, interval index, cells, backends, connects so far,
# connect failures so far
HEADER = struct.Struct("<IHHIIqIIQQ")
STAGE = struct.Struct("<QQQQQ")        # scheduled, sent, unsent, waited, late
BACKEND = struct.Struct("<I48s")       # length, name (CAPTURE_MAX bytes)
CELL = struct.Struct("<IIIIQ")         # stage, request, outcome, backend slot, count
HIST = struct.Struct("<iiQqq")         # lo, n, total, min, max; then n uint32 counts
# so far: retried, dropped, closed by server, by us, latencies clamped to 1 h
TRAILER = struct.Struct("<QQQQQ")
TLS = struct.Struct("<QQQ")            # so far: full handshakes, resumed, failed
FLOWS = struct.Struct("<I")            # length of the FLOWS section's JSON that follows

# The INTERVAL message: its tag byte, GAUGES, then the payload.
# open connections, in flight, the worker's CPU time since time zero (ns)
GAUGES = struct.Struct("<IIQ")


class WireFormatError(ValueError):
    """A payload this loadforge cannot read: not an interval payload, or another version."""


def check_header(magic: int, version: int) -> None:
    """Refuse a payload that is not of this wire format's version, with a line that says why."""
    if magic == _MAGIC_V1:
        version = 1
    elif magic != MAGIC:
        raise WireFormatError("interval payload with a bad magic number")
    if version != VERSION:
        raise WireFormatError(
            f"interval payload of wire format version {version}; this loadforge reads "
            f"version {VERSION}: run the same loadforge on the coordinator and its workers")
