# Declarations of a connection of the pool (engine/loop.pxi).

from libc.stdint cimport int32_t, int64_t

from loadforge._openssl cimport SSL


cdef enum ConnState:
    C_CLOSED
    C_CONNECTING         # TCP connect, then (TLS) the handshake: Conn.handshaking
    C_IDLE
    C_BUSY               # request being written or response awaited
    C_BACKOFF            # closed: its last connect failed, the next waits until retry_at_ns


cdef enum ProtocolId:
    # A connection's protocol: its entry in PROTOCOLS (engine/protocol.pxi).
    PROTO_H1             # HTTP/1.1, one request at a time (engine/h1conn.pxi)
    PROTO_H2             # HTTP/2 streams (and gRPC on them), engine/h2conn.pxi
    PROTO_FLOW           # HTTP/1.1 steps of a FlowEngine, each response captured (flows.pxi)
    N_PROTOCOLS


cdef struct Conn:
    int fd
    int state
    int has_arrival
    int want_write       # EPOLLOUT registered for a partial write
    int in_idle          # on the idle stack
    int in_closed        # on the closed stack
    int fresh            # the request went out on a connection opened for it
    int retried          # the arrival was already retried once on a new connection
    int retryable        # ... and may be: idempotent, or retries are off (engine/pool.pxi)
    int big              # counted in Engine.eventful: its response may not fit a socket buffer
    int write_failed     # send failed: what the server sent before closing is still read
    int peer_closed      # the server ended the connection (close, reset, Connection: close)
    int32_t served       # responses this connection carried (requests_per_connection)
    int32_t request
    int32_t stage
    int64_t intended_ns
    int64_t sent_ns
    int64_t deadline_ns
    int64_t written
    int64_t backoff_ns   # delay before the next connect after a failed one; 0 once connected
    int64_t retry_at_ns
    int64_t last_rx_ns   # receive timestamp of the latest bytes of a body that ends at close
    int64_t connect_ns   # when connect() was called: the connect time ends when it completes
    # The protocol the connection speaks: an index into PROTOCOLS (engine/protocol.pxi), the
    # run's (Engine.proto) until ALPN chooses another for it.
    int proto
    # The transport (engine/transport.pxi): the errno behind its latest IO_ERROR, and whether
    # that error is a TLS handshake the server refused after the client finished its side.
    int err
    int refused
    # TLS (engine/tls.pxi): the connection's SSL, whether its handshake is under way (still
    # C_CONNECTING, so timeouts and the pool treat it as connecting) and since when; whether
    # its handshake resumed a session, and whether any plaintext has come from the server yet
    # (a TLS 1.3 server that refuses the client's certificate says so after the handshake).
    SSL* ssl
    int handshaking
    int64_t handshake_ns
    int tls_resumed
    int tls_data
    Parser parser
