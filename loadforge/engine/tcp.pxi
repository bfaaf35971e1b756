# Included by loadforge/_core.pyx: plain TCP behind the transport seam (engine/transport.pxi).

cdef inline int tcp_connect(Transport* t, Conn* c) noexcept nogil:
    """Open a non-blocking socket and start connecting: 0, or -1 when that failed at once."""
    cdef int one = 1
    cdef int fd = socket(t.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        return -1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    if t.rx_stamps and setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) != 0:
        t.rx_stamps = 0
    if connect(fd, <sockaddr*>&t.addr, t.addrlen) != 0 and errno != EINPROGRESS:
        t.fail_errno = errno
        close(fd)
        return -1
    c.fd = fd
    return 0


cdef inline int tcp_connected(Transport* t, Conn* c) noexcept nogil:
    """The connect ended (the socket is writable): 0 when connected, else its errno."""
    cdef int err = 0
    cdef socklen_t len = sizeof(err)
    getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len)
    if err != 0:
        t.fail_errno = err
    return err


cdef inline ssize_t tcp_read(Transport* t, Conn* c, msghdr* msg) noexcept nogil:
    """recv into msg's buffer, with the kernel's receive timestamp in its control data."""
    return recvmsg(c.fd, msg, 0)


cdef inline ssize_t tcp_write(Transport* t, Conn* c, const char* data, size_t length) \
        noexcept nogil:
    return send(c.fd, data, length, MSG_NOSIGNAL)


cdef inline int tcp_pending(Transport* t, Conn* c) noexcept nogil:
    """Bytes read from the socket but not yet handed out: none, TCP holds nothing."""
    return 0


cdef inline void tcp_close(Transport* t, Conn* c) noexcept nogil:
    close(c.fd)     # also leaves the epoll set
