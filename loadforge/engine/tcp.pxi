# Included by loadforge/_core.pyx: plain TCP behind the transport seam (engine/transport.pxi).

cdef inline int tcp_connect(Transport* t, Conn* c) noexcept nogil:
    """Open a non-blocking socket and start connecting: IO_OK, or IO_ERROR (Conn.err) when
    that failed at once."""
    cdef int one = 1
    cdef int fd = socket(t.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        c.err = errno
        return IO_ERROR
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    if t.rx_stamps and setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) != 0:
        t.rx_stamps = 0
    if connect(fd, <sockaddr*>&t.addr, t.addrlen) != 0 and errno != EINPROGRESS:
        c.err = errno
        t.fail_errno = errno
        close(fd)
        return IO_ERROR
    c.fd = fd
    return IO_OK


cdef inline int tcp_connected(Transport* t, Conn* c) noexcept nogil:
    """The connect ended (the socket is writable): IO_OK when connected, else IO_ERROR with
    the socket's error in Conn.err."""
    cdef int err = 0
    cdef socklen_t len = sizeof(err)
    getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len)
    if err != 0:
        c.err = err
        t.fail_errno = err
        return IO_ERROR
    return IO_OK


cdef inline int tcp_read(Transport* t, Conn* c, msghdr* msg, ssize_t* n) noexcept nogil:
    """recv into msg's buffer, with the kernel's receive timestamp in its control data."""
    cdef ssize_t r
    while True:
        r = recvmsg(c.fd, msg, 0)
        if r >= 0:
            n[0] = r
            return IO_OK
        n[0] = 0
        if errno == EINTR:
            continue
        if errno == EAGAIN:
            return IO_RETRY
        c.err = errno
        return IO_ERROR


cdef inline int tcp_write(Transport* t, Conn* c, const char* data, size_t length,
                          ssize_t* n) noexcept nogil:
    cdef ssize_t r
    while True:
        r = send(c.fd, data, length, MSG_NOSIGNAL)
        if r >= 0:
            n[0] = r
            return IO_OK
        n[0] = 0
        if errno == EINTR:
            continue
        if errno == EAGAIN:
            return IO_RETRY
        c.err = errno
        return IO_ERROR


cdef inline int tcp_pending(Transport* t, Conn* c) noexcept nogil:
    """Bytes read from the socket but not yet handed out: none, TCP holds nothing."""
    return 0


cdef inline void tcp_close(Transport* t, Conn* c) noexcept nogil:
    close(c.fd)     # also leaves the epoll set
