# Included by loadforge/_core.pyx: HTTP/1.1 as a protocol of the table (engine/protocol.pxi):
# one request at a time per connection, written by engine/writer.pxi, its response read by
# the parser of engine/http1.pxi. The entry of an HTTP/1.1 run, of a FlowEngine's steps (with
# their own on_readable, engine/flows.pxi) and of an HTTP/2 run's connection where ALPN chose
# http/1.1 (engine/h2conn.pxi h2_to_h1).


cdef void h1_start(Engine self, int ci, int stage, int request, int64_t intended,
                   int64_t now) noexcept:
    """An arrival of the schedule on connection ci, free (idle, or closed: opened for it)."""
    cdef Conn* c = &self.conns[ci]
    if tpl_prepare(self, ci, request, now) != 0:
        # A `unique` feeder has no row left for this arrival: the run ends here, as if
        # stopped; the arrival is counted unsent (open model) or not at all (closed).
        if c.state == C_IDLE:
            push_idle(self, ci)
        else:
            push_closed(self, ci)
        if self.tpl.closed:
            self.counters[stage].scheduled -= 1
        self.request_stop(now)
        return
    c.has_arrival = 1
    c.stage = stage
    c.request = request
    c.intended_ns = intended
    c.fresh = 0
    c.retried = 0
    c.retryable = self.req_retry[request]
    c.big = 1 if self.req_big[request] != 0 else 0
    self.eventful += c.big
    self.inflight += 1
    self.counters[stage].sent += 1
    if c.state == C_IDLE:
        send_request(self, ci, now)
    else:
        c.sent_ns = now     # a failed connect is timed from the attempt
        open_conn(self, ci, now)


cdef void h1_on_open(Engine self, int ci) noexcept:
    """A connect starts: nothing to prepare."""
    pass


cdef void h1_on_connected(Engine self, int ci, int64_t now) noexcept:
    """Ready (on_connected did the connect bookkeeping): the request that waited goes out,
    else the connection waits on the idle stack."""
    cdef Conn* c = &self.conns[ci]
    c.backoff_ns = 0
    self.protocol_h1 += 1
    if c.has_arrival:
        c.fresh = 1
        send_request(self, ci, now)
    else:
        push_idle(self, ci)


cdef void h1_on_readable(Engine self, int ci, int64_t now) noexcept:
    h1_read(self, ci, now, 0)


cdef inline void h1_read(Engine self, int ci, int64_t now, int capture) noexcept:
    """The response's bytes, read until the socket is empty: parsed, and the request finished
    when they end it. capture: a FlowEngine's, each response's bytes kept for its flow."""
    cdef Conn* c = &self.conns[ci]
    cdef ssize_t n
    cdef Py_ssize_t used
    cdef int outcome, st
    cdef int reads = 0
    while True:
        self.msg.msg_controllen = sizeof(self.cmsg_buf)
        st = transport_read(&self.transport, c, &self.msg, &n)
        if c.state != C_BUSY or not c.has_arrival:
            # An idle keep-alive connection: the server closed it, or sent what nobody
            # asked for. Either way it is not reusable.
            if st != IO_RETRY:
                if c.refused:
                    tls_refused_idle(self)
                c.peer_closed = st == IO_ERROR or n == 0
                close_conn(self, ci)
            return
        if st == IO_OK and n > 0:
            if capture:
                if c.parser.received == 0:
                    (<FlowEngine>self).cap_len[ci] = 0
                used = parser_feed(&c.parser, &self.names, self.rbuf, n)
                (<FlowEngine>self).capture(ci, self.rbuf, used)
            else:
                used = parser_feed(&c.parser, &self.names, self.rbuf, n)
            if c.parser.state == P_DONE:
                # Bytes past the response answer no request of ours (we do not pipeline).
                self.finish(ci, response_outcome(self.req_expect[c.request], c.parser.status)
                            if used == n else O_PROTOCOL,
                            now, self.received_at(c, now))
                return
            if c.parser.state == P_ERROR:
                self.finish(ci, O_PROTOCOL, now, now)
                return
            if c.parser.state == P_BODY_EOF:
                # Read on to the close: its time is the last bytes' receive timestamp.
                c.last_rx_ns = self.received_at(c, now)
            elif n < RECV_BUFFER_SIZE and not c.write_failed \
                    and not transport_pending(&self.transport, c):
                return    # the socket is empty (wrk's test): wait for more
            reads += 1
            if reads >= MAX_READS_PER_EVENT and not transport_pending(&self.transport, c):
                # A server as fast as the loop (a body without end) must not hold it;
                # the socket stays readable, so epoll hands it back at once. Bytes
                # inside the TLS layer are read first: epoll would not hand them back.
                return
            continue
        if st == IO_OK:     # n == 0: the server ended the connection
            c.peer_closed = 1
            if c.parser.received == 0 and retry_arrival(self, ci, now):
                return
            outcome = parser_eof(&c.parser)
            if outcome < 0:
                self.finish(ci, response_outcome(self.req_expect[c.request], c.parser.status),
                            now, c.last_rx_ns)
            else:
                self.finish(ci, outcome, now, now)
            return
        if st == IO_RETRY and not c.write_failed:
            return
        c.peer_closed = 1
        if c.refused:
            tls_refused(self, ci, now)
            return
        if c.parser.received == 0 and retry_arrival(self, ci, now):
            return
        self.finish(ci, O_RESET, now, now)
        return


cdef void h1_on_writable(Engine self, int ci, int64_t now) noexcept:
    if self.conns[ci].state == C_BUSY:
        write_request(self, ci, now)


cdef void h1_scan_timeouts(Engine self, int ci, int64_t now) noexcept:
    """A request, or a connect, past its deadline."""
    cdef Conn* c = &self.conns[ci]
    if c.state != C_BUSY and c.state != C_CONNECTING:
        return
    if now < c.deadline_ns:
        note_deadline(self, c.deadline_ns)
        return
    if c.handshaking and c.has_arrival:
        # A TLS handshake timed out: it failed (a warm-up's is not counted, as its
        # connect is not: counts_at_open).
        self.transport.tls_failed += 1
    if c.has_arrival:
        if c.state == C_CONNECTING:
            self.connect_failures += 1
        self.finish(ci, O_TIMEOUT if c.state == C_BUSY else O_CONNECT, now, now)
    else:
        close_conn(self, ci)     # a warm-up connect: not counted (counts_at_open)


cdef void h1_connect_failed(Engine self, int ci, int64_t now) noexcept:
    """Its connect failed (counted by the caller): the request waiting on it ends as
    `connect`; a warm-up connection just closes."""
    if self.conns[ci].has_arrival:
        self.finish(ci, O_CONNECT, now, now)
    else:
        close_conn(self, ci)


cdef void h1_drop(Engine self, int ci) noexcept:
    """The connection is being closed: nothing of the protocol's to end."""
    pass
