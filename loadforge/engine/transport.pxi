# Included by loadforge/_core.pyx: the transport seam. The loop reaches the target only through
# these functions (connect, connected/handshake, read, write, pending, close), each one switch on
# Transport.kind: plain TCP is engine/tcp.pxi, TLS engine/tls.pxi. TCP is tested first, so
# the plain hot path costs one predictable branch over direct send/recv.
#
# Return values follow the socket calls: read and write return a byte count or -1 with errno
# set (EAGAIN: try again when epoll says so); read returns 0 at the peer's end.

cdef inline int transport_connect(Transport* t, Conn* c) noexcept nogil:
    """Start connecting c (sets c.fd): 0, or -1 when the attempt failed at once."""
    if t.kind == T_TCP:
        return tcp_connect(t, c)
    return tls_connect(t, c)


cdef inline int transport_connected(Transport* t, Conn* c) noexcept nogil:
    """c's connect (or handshake) made progress: 0 when it is ready for requests; EALREADY
    when TCP is connected and a handshake begins (call again); EINPROGRESS while the handshake
    waits for the server, EAGAIN while it also waits to send; else an errno."""
    if t.kind == T_TCP:
        return tcp_connected(t, c)
    return tls_connected(t, c)


cdef inline ssize_t transport_read(Transport* t, Conn* c, msghdr* msg) noexcept nogil:
    if t.kind == T_TCP:
        return tcp_read(t, c, msg)
    return tls_read(t, c, msg)


cdef inline ssize_t transport_write(Transport* t, Conn* c, const char* data, size_t length) \
        noexcept nogil:
    if t.kind == T_TCP:
        return tcp_write(t, c, data, length)
    return tls_write(t, c, data, length)


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
