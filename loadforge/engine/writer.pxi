# Included by loadforge/_core.pyx: the HTTP/1.1 request writer. Requests are pre-encoded bytes,
# or assembled from a template into the connection's buffer (engine/template.pxi) when the
# arrival started; one goes out through the transport seam, and a partial write is finished
# when epoll says the socket is writable again. The response parser is engine/http1.pxi.


cdef void send_request(Engine self, int ci, int64_t now) noexcept:
    cdef Conn* c = &self.conns[ci]
    parser_reset(&c.parser, self.req_head[c.request])
    c.state = C_BUSY
    c.written = 0
    c.write_failed = 0
    c.sent_ns = now
    c.deadline_ns = now + self.timeout_ns
    write_request(self, ci, now)


cdef void write_request(Engine self, int ci, int64_t now) noexcept:
    cdef Conn* c = &self.conns[ci]
    cdef Py_ssize_t length = self.tpl.out_len[ci]
    cdef ssize_t n = transport_write(&self.transport, c, self.tpl.out[ci] + c.written,
                                     length - c.written)
    if n < 0:
        if errno != EAGAIN and errno != EINTR:
            # The server closed or reset the connection; it may have answered first
            # (413 before the body), and that answer is still in the receive queue.
            c.write_failed = 1
            if c.want_write:
                set_want_write(self, ci, 0)
            self.on_readable(ci, now)
            return
        n = 0
    c.written += n
    if (c.written < length) != c.want_write:
        set_want_write(self, ci, c.written < length)


cdef void set_want_write(Engine self, int ci, int on) noexcept:
    """Watch the connection for EPOLLOUT (a request is half written) or stop watching."""
    cdef Conn* c = &self.conns[ci]
    cdef epoll_event ev
    c.want_write = on
    self.writing += 1 if on else -1
    ev.events = EPOLLIN | EPOLLOUT if on else EPOLLIN
    ev.data.u64 = ci
    epoll_ctl(self.epfd, EPOLL_CTL_MOD, c.fd, &ev)
