# Included by loadforge/_core.pyx: the transport seam. The loop reaches the target only through
# these functions (connect, connected/handshake, read, write, pending, close), each one switch on
# Transport.kind: plain TCP is engine/tcp.pxi, TLS goes beside it. With one kind the switch
# compiles away, so the hot path costs what direct send/recv cost.
#
# Return values follow the socket calls: read and write return a byte count or -1 with errno
# set (EAGAIN: try again when epoll says so); read returns 0 at the peer's end.

cdef inline int transport_connect(Transport* t, Conn* c) noexcept nogil:
    """Start connecting c (sets c.fd): 0, or -1 when the attempt failed at once."""
    if t.kind == T_TCP:
        return tcp_connect(t, c)
    return -1


cdef inline int transport_connected(Transport* t, Conn* c) noexcept nogil:
    """c's connect (or handshake) ended: 0 when it is ready for requests, else an errno."""
    if t.kind == T_TCP:
        return tcp_connected(t, c)
    return ENOSYS


cdef inline ssize_t transport_read(Transport* t, Conn* c, msghdr* msg) noexcept nogil:
    if t.kind == T_TCP:
        return tcp_read(t, c, msg)
    return -1


cdef inline ssize_t transport_write(Transport* t, Conn* c, const char* data, size_t length) \
        noexcept nogil:
    if t.kind == T_TCP:
        return tcp_write(t, c, data, length)
    return -1


cdef inline int transport_pending(Transport* t, Conn* c) noexcept nogil:
    """Bytes the transport holds that epoll cannot see (TLS records already read)."""
    if t.kind == T_TCP:
        return tcp_pending(t, c)
    return 0


cdef inline void transport_close(Transport* t, Conn* c) noexcept nogil:
    if t.kind == T_TCP:
        tcp_close(t, c)
