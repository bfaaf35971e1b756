"""The worker wire format: what the engine's flush writes (loadforge/engine/wire.pxd) read
field by field with loadforge/run/wire.py's structs alone, and decode refusing another version.

One bounded run (25 requests in half a second) against a canned server on 127.0.0.1.
"""

from __future__ import annotations

import pytest
from servers import CannedServer

from loadforge import _core
from loadforge.config.plan import OUTCOMES
from loadforge.run import wire
from loadforge.run.workers import decode_interval, interval_message

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Served-By: b1\r\n\r\nok"
GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def test_engine_and_python_agree_on_the_layout():
    assert _core.WIRE_FORMAT == {
        "magic": wire.MAGIC, "version": wire.VERSION, "header": wire.HEADER.size,
        "stage": wire.STAGE.size, "backend": wire.BACKEND.size, "cell": wire.CELL.size,
        "hist": wire.HIST.size, "trailer": wire.TRAILER.size, "tls": wire.TLS.size}


def read_hist(payload: bytes, off: int) -> tuple[tuple, list[int], int]:
    lo, n, total, low, high = wire.HIST.unpack_from(payload, off)
    off += wire.HIST.size
    counts = [int.from_bytes(payload[off + 4 * i:off + 4 * i + 4], "little") for i in range(n)]
    assert sum(counts) == total
    assert n == 0 or (counts[0] > 0 and counts[-1] > 0 and 0 < low <= high)
    assert n > 0 or lo == 0
    return (lo, n, total, low, high), counts, off + 4 * n


def test_flush_output_read_field_by_field():
    server = CannedServer(RESPONSE)
    payloads: list[bytes] = []
    try:
        engine = _core.Engine("127.0.0.1", server.server_address[1], [(GET, False)], [0],
                              [(True, 200.0, 200.0, 0.5, 0, 0.0)], 2, worker=3, workers=4,
                              interval_s=0.2, capture_header="X-Served-By")
        engine.run(_core.now_ns() + 50_000_000, lambda p, o, f: payloads.append(p))
    finally:
        server.stop()
    assert len(payloads) >= 2
    completed = scheduled = connects = connect_times = 0
    for i, payload in enumerate(payloads):
        (magic, version, final, worker, nstages, index, ncells, nbackends, conns,
         failures) = wire.HEADER.unpack_from(payload, 0)
        assert (magic, version, worker, nstages, index, failures) == (
            wire.MAGIC, wire.VERSION, 3, 1, i, 0)
        assert final == (i == len(payloads) - 1)
        assert conns >= connects
        connects = conns
        off = wire.HEADER.size
        sched, sent, unsent, waited, late = wire.STAGE.unpack_from(payload, off)
        scheduled += sched
        assert unsent == 0 and waited <= sent
        off += wire.STAGE.size
        assert nbackends in (0, 1)
        if nbackends:
            length, name = wire.BACKEND.unpack_from(payload, off)
            assert name[:length] == b"b1"
            off += wire.BACKEND.size
        for _ in range(ncells):
            stage, request, outcome, backend, count = wire.CELL.unpack_from(payload, off)
            assert (stage, request, OUTCOMES[outcome], backend) == (0, 0, "2xx", 1)
            off += wire.CELL.size
            latency, _, off = read_hist(payload, off)
            service, _, off = read_hist(payload, off)
            assert latency[2] == service[2] == count > 0
            completed += count
        retried, dropped, by_server, by_us, clamped = wire.TRAILER.unpack_from(payload, off)
        assert (retried, dropped, by_server, by_us, clamped) == (0, 0, 0, 0, 0)
        off += wire.TRAILER.size
        connect_time, _, off = read_hist(payload, off)
        connect_times += connect_time[2]
        assert wire.TLS.unpack_from(payload, off) == (0, 0, 0)     # plain TCP: no handshakes
        off += wire.TLS.size
        tls_time, _, off = read_hist(payload, off)
        assert tls_time[2] == 0
        assert off == len(payload)
    assert completed == scheduled == 25
    assert connect_times == connects == 2
    report = decode_interval(interval_message(payloads[-1], 0, 0))
    assert report.final and report.worker == 3 and report.connects == 2
    assert report.cells[0].backend == "b1" and report.cells[0].outcome == "2xx"


def test_decode_refuses_another_version():
    header = wire.HEADER.pack(wire.MAGIC, wire.VERSION + 1, 1, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(wire.WireFormatError, match=f"wire format version {wire.VERSION + 1}; this loadforge"):
        decode_interval(interval_message(header, 0, 0))
    # version 1 had no version field, only its magic b"LFI1"
    with pytest.raises(wire.WireFormatError, match="version 1;"):
        decode_interval(interval_message(b"LFI1" + bytes(44), 0, 0))
    with pytest.raises(ValueError, match="bad magic"):
        decode_interval(interval_message(bytes(48), 0, 0))


def test_flows_section_after_the_tls_times():
    """Version 5: a flows worker appends the FLOWS section (uint32 length, JSON) to the
    engine's payload; a payload without it (a requests run) reads as no checks."""
    from loadforge.flows.driver import flows_trailer

    server = CannedServer(RESPONSE)
    payloads: list[bytes] = []
    try:
        engine = _core.FlowEngine("127.0.0.1", server.server_address[1], ["step", "flow:f"],
                                  [(True, 10.0, 10.0, 0.1, 0, 0.0)], 1)
        engine.start(_core.now_ns(), lambda p, o, f: payloads.append(p))
        engine.record_flow(1, 0, 1, _core.now_ns(), _core.now_ns(), _core.now_ns())
        engine.finish_run()
    finally:
        server.stop()
    section = b'{"checks":{"ok":[2,1]},"errors":{"f|ValueError":1}}'
    report = decode_interval(interval_message(payloads[-1] + flows_trailer(section), 0, 0))
    assert report.checks == {"ok": [2, 1]} and report.flow_errors == {"f|ValueError": 1}
    assert [(c.request, c.outcome, c.n) for c in report.cells] == [(1, "2xx", 1)]
    plain = decode_interval(interval_message(payloads[-1] + flows_trailer(b""), 0, 0))
    assert plain.checks is None and plain.flow_errors is None
    assert decode_interval(interval_message(payloads[-1], 0, 0)).checks is None


def test_done_message_round_trip():
    # DONE carries the `unique` feeder that ran out (if one did) and, over TLS, what the
    # worker's first handshake negotiated; either may be absent.
    from loadforge.run.workers import DONE, decode_done, decode_done_tls, done_message

    tls = {"protocol": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "alpn": "http/1.1"}
    for exhausted in (None, (2, 123_456_789)):
        for negotiated in (None, tls):
            msg = done_message(exhausted, negotiated)
            assert msg[:1] == DONE
            assert decode_done(msg) == exhausted
            assert decode_done_tls(msg) == negotiated
    assert decode_done(DONE) is None and decode_done_tls(DONE) is None


def test_done_message_carries_the_engine_counts():
    from loadforge.run.workers import (
        ENGINE_COUNTS,
        decode_done,
        decode_done_counts,
        decode_done_tls,
        done_message,
    )

    counts = {key: i + 1 for i, key in enumerate(ENGINE_COUNTS)}
    tls = {"protocol": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "alpn": "h2"}
    for negotiated in (None, tls):
        msg = done_message((1, 5), negotiated, counts)
        assert decode_done(msg) == (1, 5)
        assert decode_done_tls(msg) == negotiated
        assert decode_done_counts(msg) == counts
    assert decode_done_counts(done_message(None, tls)) == {}


def test_the_channel_frames_messages_as_multiprocessing_does():
    # Channel replaced multiprocessing.connection.Connection on the worker's socketpair and
    # the shards' TCP connections: the same bytes on the wire, both ways, a long message
    # (written apart from its length) and an empty one included; EOF once the peer closed.
    import socket
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    channel, reference = wire.Channel(ours.detach()), Connection(theirs.detach())
    long = bytes(range(256)) * 300
    for message in (b"R", b"", long):
        channel.send_bytes(message)
        assert reference.recv_bytes() == message
        reference.send_bytes(message)
        assert wire.wait([channel], 1.0) == [channel]
        assert channel.recv_bytes() == message
    assert not channel.poll(0)
    reference.close()
    assert channel.poll(1.0)
    with pytest.raises(EOFError):
        channel.recv_bytes()
    channel.close()
    assert channel.closed
