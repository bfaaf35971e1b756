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
    c.deadline_ns = deadline_after(self, now)
    write_request(self, ci, now)


cdef void write_request(Engine self, int ci, int64_t now) noexcept:
    """Write what the socket takes of the request; the rest (or, TLS, ciphertext the socket
    did not take) when epoll says it is writable: Conn.want_write while anything is left."""
    cdef Conn* c = &self.conns[ci]
    cdef Py_ssize_t length = self.tpl.out_len[ci]
    cdef ssize_t n
    cdef int st = transport_write(&self.transport, c, self.tpl.out[ci] + c.written,
                                  length - c.written, &n)
    cdef int more
    if st == IO_ERROR:
        # The server closed or reset the connection; it may have answered first
        # (413 before the body), and that answer is still in the receive queue.
        c.write_failed = 1
        if c.want_write and set_want_write(self, ci, 0) != 0:
            epoll_failed(self, ci, now)
            return
        PROTOCOLS[c.proto].on_readable(self, ci, now)
        return
    c.written += n
    more = c.written < length or st == IO_RETRY
    if more != c.want_write and set_want_write(self, ci, more) != 0:
        epoll_failed(self, ci, now)


cdef int set_want_write(Engine self, int ci, int on) noexcept:
    """Watch the connection for EPOLLOUT (a request is half written) or stop watching: 0, or
    -1 when epoll refused (conn_epoll) and nothing changed."""
    cdef Conn* c = &self.conns[ci]
    if conn_epoll(self, self.epfd, EPOLL_CTL_MOD, ci, EPOLLIN | EPOLLOUT if on else EPOLLIN) != 0:
        return -1
    c.want_write = on
    self.writing += 1 if on else -1
    return 0


cdef void epoll_failed(Engine self, int ci, int64_t now) noexcept:
    """An HTTP/1.1 request's connection could not be watched as it needs: the request ends
    as a failed connection (conn_epoll), counted as one."""
    self.connect_failures += 1
    self.finish(ci, O_CONNECT, now, now)
