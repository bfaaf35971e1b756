# Included by loadforge/_core.pyx: the protocols a connection can speak, as a table of C
# functions (wrk's `struct sock` for transports, h2load's per-session choice for protocols).
# A connection holds an index into it (Conn.proto): the run's protocol (Engine.proto) when it
# opens, and, over TLS, what ALPN chose once its handshake ends (h2_connected: an HTTP/2 run's
# connection where the server chose http/1.1 becomes PROTO_H1). The loop then calls
# PROTOCOLS[c.proto].on_readable(...) and never asks which protocol runs. Arrivals of the
# schedule start through the run's entry, whose `start` places them (HTTP/2: on any
# connection with a free stream). Filled once at import; each call is one indirect call
# through a static array, as a `const` struct of function pointers would be in C.

ctypedef void (*conn_open_fn)(Engine, int) noexcept
ctypedef void (*conn_event_fn)(Engine, int, int64_t) noexcept
ctypedef void (*conn_start_fn)(Engine, int, int, int, int64_t, int64_t) noexcept


cdef struct Protocol:
    const char* name
    # Requests share a connection (streams): an arrival waits for a stream, not a connection;
    # every connect counts as it starts (counts_at_open); a closed-model slot whose connect
    # failed gets its user back through the fill, not from its backoff (end_backoffs).
    int multiplexed
    conn_open_fn on_open            # a connect starts (HTTP/2: the session, streams can queue)
    conn_event_fn on_connected      # the transport is ready: the first request, or the preface
    conn_event_fn on_readable       # epoll: bytes (or the end) to read
    conn_event_fn on_writable       # epoll: room for what a write left (Conn.want_write)
    conn_start_fn start             # an arrival (ci: a free connection; HTTP/2: a hint or -1)
    conn_event_fn scan_timeouts     # requests, streams and the connect past their deadlines
    conn_event_fn connect_failed    # the connect or handshake failed (counted by the caller)
    conn_open_fn drop               # the connection is being closed: end what it carries


cdef Protocol PROTOCOLS[N_PROTOCOLS]


cdef Protocol protocol(const char* name, int multiplexed, conn_open_fn on_open,
                       conn_event_fn on_connected, conn_event_fn on_readable,
                       conn_event_fn on_writable, conn_start_fn start,
                       conn_event_fn scan_timeouts, conn_event_fn connect_failed,
                       conn_open_fn drop) noexcept:
    """One entry, every field named (a struct literal would make Cython write Python
    converters for each function pointer type, unused)."""
    cdef Protocol p
    p.name = name
    p.multiplexed = multiplexed
    p.on_open = on_open
    p.on_connected = on_connected
    p.on_readable = on_readable
    p.on_writable = on_writable
    p.start = start
    p.scan_timeouts = scan_timeouts
    p.connect_failed = connect_failed
    p.drop = drop
    return p


PROTOCOLS[<int>PROTO_H1] = protocol(
    name=b"http/1.1", multiplexed=0, on_open=h1_on_open, on_connected=h1_on_connected,
    on_readable=h1_on_readable, on_writable=h1_on_writable, start=h1_start,
    scan_timeouts=h1_scan_timeouts, connect_failed=h1_connect_failed, drop=h1_drop)
PROTOCOLS[<int>PROTO_H2] = protocol(
    name=b"h2", multiplexed=1, on_open=h2_open_session, on_connected=h2_connected,
    on_readable=h2_on_readable, on_writable=h2_on_writable, start=h2_start_arrival,
    scan_timeouts=h2_scan_timeouts, connect_failed=h2_connect_failed, drop=h2_drop)
# A FlowEngine's steps start from Python (FlowEngine.submit), never through `start`.
PROTOCOLS[<int>PROTO_FLOW] = protocol(
    name=b"http/1.1", multiplexed=0, on_open=h1_on_open, on_connected=h1_on_connected,
    on_readable=flow_on_readable, on_writable=h1_on_writable, start=h1_start,
    scan_timeouts=h1_scan_timeouts, connect_failed=h1_connect_failed, drop=h1_drop)
