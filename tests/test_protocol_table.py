"""The engine's seams, as issue 19 asks for them: a connection's protocol is an entry of a table
of C functions (engine/protocol.pxi), chosen per connection, and the transport answers OK, ERROR
or RETRY. The behaviour is tested by the HTTP/1.1, HTTP/2, TLS and torture suites (mixed ALPN
backends: tests/test_http2.py::test_mixed_backends_behind_an_l4_balancer); these tests keep the
structure from sliding back into per-protocol branches in the loop."""

from __future__ import annotations

import re
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "loadforge" / "engine"
OPS = ("on_open", "on_connected", "on_readable", "on_writable", "start", "scan_timeouts",
       "connect_failed", "drop")


def source(name: str) -> str:
    return (ENGINE / name).read_text()


def test_the_loop_never_asks_which_protocol_runs() -> None:
    # The run loop, the pool, the writer and the flows reach a protocol only through the table.
    for name in ("loop.pxi", "pool.pxi", "writer.pxi", "flows.pxi", "h1conn.pxi"):
        text = source(name)
        assert "h2.enabled" not in text, name
        assert not re.search(r"\bc\.h1\b|\.h1 =", text), name
        assert not re.search(r"\bh2_(on_readable|on_writable|scan_timeouts|connected|drop|"
                             r"open_session|start_arrival|connect_failed)\(", text), name
    assert "PROTOCOLS[self.conns[ci].proto].on_readable" in source("loop.pxi")
    # The flows' poll hands its events to the loop's own dispatch (Engine.handle_events).
    assert "self.handle_events(n, now)" in source("flows.pxi")


def test_every_protocol_fills_every_entry() -> None:
    table = source("protocol.pxi")
    entries = re.findall(r"PROTOCOLS\[<int>(PROTO_\w+)\] = protocol\((.*?)\)\n", table, re.S)
    assert [e[0] for e in entries] == ["PROTO_H1", "PROTO_H2", "PROTO_FLOW"]
    for name, body in entries:
        filled = dict(re.findall(r"(\w+)=(\w+)", body))
        assert set(OPS) <= set(filled), (name, set(OPS) - set(filled))
    ids = source("conn.pxd")
    assert re.search(r"PROTO_H1.*\n.*PROTO_H2.*\n.*PROTO_FLOW.*\n\s+N_PROTOCOLS", ids)


def test_the_transport_answers_ok_error_or_retry() -> None:
    # No errno with a private meaning as a return value, no byte held back from the writer.
    for name in ("transport.pxi", "tcp.pxi", "tls.pxi"):
        text = source(name)
        assert "tls_held" not in text, name
        assert "EALREADY" not in text and not re.search(r"(?<![\w.])errno = |return ECONN", text), name
        # (tls_flush, a helper inside tls.pxi, keeps its own 0 / 1 / -1)
        text = re.sub(r"cdef inline int tls_flush\(.*?\n(?=cdef )", "", text, flags=re.S)
        assert not re.search(r"return (errno|EINPROGRESS|EAGAIN|-1)\b", text), name
    for name in ("h1conn.pxi", "h2conn.pxi", "writer.pxi", "pool.pxi"):
        text = source(name)
        assert "errno" not in text, name
    assert "tls_held" not in source("conn.pxd")
