# Included by loadforge/_core.pyx: the transport seam. The loop reaches the target only through
# these functions (connect, connected/handshake, read, write, flush, pending, close), each one
# switch on Transport.kind: plain TCP is engine/tcp.pxi, TLS engine/tls.pxi. TCP is tested
# first, so the plain hot path costs one predictable branch over direct send/recv.
#
# Every call answers IO_OK, IO_ERROR or IO_RETRY (wrk's `status`), with byte counts through a
# pointer; an IO_ERROR leaves its errno in Conn.err for the caller's classification
# (ECONNRESET/EPIPE: a reset; EPROTO: TLS; Conn.refused: a TLS 1.3 handshake refused after the
# fact). EINTR is retried inside; IO_RETRY means EAGAIN, or TLS bytes still to send.

cdef inline int transport_connect(Transport* t, Conn* c) noexcept nogil:
    """Start connecting c (sets c.fd): IO_OK, or IO_ERROR when the attempt failed at once."""
    c.err = 0
    c.refused = 0
    if t.kind == T_TCP:
        return tcp_connect(t, c)
    return tls_connect(t, c)


cdef inline int transport_connected(Transport* t, Conn* c) noexcept nogil:
    """c's connect (or handshake) made progress: IO_OK when it is ready for requests; IO_RETRY
    while it waits for the server (and, transport_unsent, for room to send). A TLS connection
    answers IO_RETRY with Conn.handshaking newly set when TCP is up and the handshake begins:
    the caller times the connect and calls again at once."""
    if t.kind == T_TCP:
        return tcp_connected(t, c)
    return tls_connected(t, c)


cdef inline int transport_read(Transport* t, Conn* c, msghdr* msg, ssize_t* n) noexcept nogil:
    """Bytes into msg's buffer: IO_OK with n > 0, or n == 0 at the peer's end of the stream;
    IO_RETRY: nothing yet."""
    if t.kind == T_TCP:
        return tcp_read(t, c, msg, n)
    return tls_read(t, c, msg, n)


cdef inline int transport_write(Transport* t, Conn* c, const char* data, size_t length,
                                ssize_t* n) noexcept nogil:
    """Send up to length bytes: n of them were taken. IO_OK: call again for the rest, if any;
    IO_RETRY: the socket is full (or, TLS, still holds ciphertext of these bytes): call again
    once it is writable, with the rest, even when that is nothing."""
    if t.kind == T_TCP:
        return tcp_write(t, c, data, length, n)
    return tls_write(t, c, data, length, n)


cdef inline int transport_flush(Transport* t, Conn* c) noexcept nogil:
    """Send what the transport still holds (TLS ciphertext): IO_OK when nothing is left."""
    if t.kind == T_TCP:
        return IO_OK
    return tls_flush_status(c)


cdef inline int transport_unsent(Transport* t, Conn* c) noexcept nogil:
    """Whether the transport holds bytes for the server that the socket did not take."""
    if t.kind == T_TCP:
        return 0
    return tls_unsent(c)


cdef inline int transport_pending(Transport* t, Conn* c) noexcept nogil:
    """Bytes the transport holds that epoll cannot see (TLS records already read)."""
    if t.kind == T_TCP:
        return tcp_pending(t, c)
    return tls_pending(t, c)


cdef inline void transport_close(Transport* t, Conn* c) noexcept nogil:
    if t.kind == T_TCP:
        tcp_close(t, c)
    else:
        tls_close(t, c)
