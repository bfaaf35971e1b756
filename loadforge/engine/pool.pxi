# Included by loadforge/_core.pyx: the connection pool of an Engine. Connections wait on an idle
# stack (open, reusable) and a closed stack (to open for the next arrival); a slot whose connect
# failed backs off (1 ms doubling up to 1 s) before it is tried again. Sockets are reached only
# through the transport seam (engine/transport.pxi).


cdef inline void push_idle(Engine self, int ci) noexcept:
    if not self.conns[ci].in_idle:
        self.conns[ci].in_idle = 1
        self.idle_stack[self.n_idle] = ci
        self.n_idle += 1


cdef inline void push_closed(Engine self, int ci) noexcept:
    if not self.conns[ci].in_closed:
        self.conns[ci].in_closed = 1
        self.closed_stack[self.n_closed] = ci
        self.n_closed += 1


cdef inline int take_conn(Engine self) noexcept:
    """A connection free for an arrival: an idle one, else a closed one to open."""
    cdef int ci
    while self.n_idle > 0:
        self.n_idle -= 1
        ci = self.idle_stack[self.n_idle]
        self.conns[ci].in_idle = 0
        if self.conns[ci].state == C_IDLE:
            return ci
    while self.n_closed > 0:
        self.n_closed -= 1
        ci = self.closed_stack[self.n_closed]
        self.conns[ci].in_closed = 0
        if self.conns[ci].state == C_CLOSED:
            return ci
    return -1


cdef void close_conn(Engine self, int ci) noexcept:
    cdef Conn* c = &self.conns[ci]
    if c.fd >= 0:
        transport_close(&self.transport, c)
        c.fd = -1
        if c.state != C_CONNECTING:
            if c.peer_closed:
                self.closed_by_server += 1
            else:
                self.closed_by_us += 1
    c.peer_closed = 0
    if self.h2.enabled:
        h2_drop(self, ci)
        c.h1 = 0        # the next connection on this slot reads its own ALPN
    if c.state == C_CONNECTING:
        self.connecting -= 1
    if c.want_write:
        c.want_write = 0
        self.writing -= 1
    c.state = C_CLOSED
    push_closed(self, ci)


cdef void open_conn(Engine self, int ci, int64_t now) noexcept:
    cdef Conn* c = &self.conns[ci]
    cdef epoll_event ev
    self.connects += 1
    if self.h2.enabled:
        h2_open_session(self, ci)
    if transport_connect(&self.transport, c) != 0:
        connect_failed(self, ci, now)
        return
    c.state = C_CONNECTING
    c.served = 0
    c.connect_ns = now
    self.connecting += 1
    c.deadline_ns = now + self.timeout_ns
    ev.events = EPOLLOUT
    ev.data.u64 = ci
    epoll_ctl(self.epfd, EPOLL_CTL_ADD, c.fd, &ev)
    # The quiet sleep (sleep_through_responses) still wakes when the server closes or
    # resets a connection, so that such ends are timed when the kernel saw them.
    ev.events = EPOLLRDHUP
    epoll_ctl(self.wake_epfd, EPOLL_CTL_ADD, c.fd, &ev)


cdef void connect_failed(Engine self, int ci, int64_t now) noexcept:
    self.connect_failures += 1
    if self.h2.enabled:
        h2_connect_failed(self, ci, now, O_CONNECT)
    elif self.conns[ci].has_arrival:
        self.finish(ci, O_CONNECT, now, now)
    else:
        close_conn(self, ci)


cdef void on_connected(Engine self, int ci, int64_t now) noexcept:
    cdef Conn* c = &self.conns[ci]
    cdef int handshake = c.handshaking
    cdef int err = transport_connected(&self.transport, c)
    cdef epoll_event ev
    if err == EALREADY:
        # TCP is up and a TLS handshake begins: the connect time ends here, the handshake's
        # starts; the handshake then waits for the server's bytes.
        record_connect_time(self, c, now)
        c.handshake_ns = now
        handshake = 1
        err = transport_connected(&self.transport, c)
    if handshake and (err == EINPROGRESS or err == EAGAIN):
        # The handshake waits for the server's bytes (and, EAGAIN, for room to send its own).
        ev.events = EPOLLIN | EPOLLOUT if err == EAGAIN else EPOLLIN
        ev.data.u64 = ci
        epoll_ctl(self.epfd, EPOLL_CTL_MOD, c.fd, &ev)
        return
    if (err == ECONNRESET or err == EPIPE) and c.has_arrival:
        c.peer_closed = 1
        # Accepted, then closed or reset before the loop saw it connected: a reset, not a
        # failed connect (which is refused, unreachable or timed out).
        self.connecting -= 1
        c.state = C_BUSY
        c.fresh = 1
        parser_reset(&c.parser, self.req_head[c.request])
        c.written = 0
        self.finish(ci, O_RESET, now, now)
        return
    if err != 0:
        connect_failed(self, ci, now)
        return
    c.state = C_IDLE
    if not self.h2.enabled:
        c.backoff_ns = 0    # (HTTP/2: once the connection carried a response, h2_on_frame_recv)
    self.connecting -= 1
    if handshake:
        # The handshake's time, as a TLS-terminating load balancer's costs show in it.
        if hist_record(&self.arena, &self.tls_time, (now - c.handshake_ns) // 1000) != 0:
            self.dropped += 1
    else:
        record_connect_time(self, c, now)
    ev.events = EPOLLIN
    ev.data.u64 = ci
    epoll_ctl(self.epfd, EPOLL_CTL_MOD, c.fd, &ev)
    if self.h2.enabled:
        h2_connected(self, ci, now)
        return
    self.protocol_h1 += 1
    if c.has_arrival:
        c.fresh = 1
        send_request(self, ci, now)
    else:
        push_idle(self, ci)


cdef inline void record_connect_time(Engine self, Conn* c, int64_t now) noexcept:
    # Connect time, as load balancers' new-connection costs show in it (churn tests). No
    # memory for a chunk: the connection goes on, its time is not counted.
    if hist_record(&self.arena, &self.connect_time, (now - c.connect_ns) // 1000) != 0:
        self.dropped += 1


cdef int retry_arrival(Engine self, int ci, int64_t now) noexcept:
    """A request that went out on a reused connection the server had already closed (idle
    timeout, keepalive_requests) got no byte of answer: send it once more on a new
    connection, as browsers and wrk do. Returns 1 when it did."""
    cdef Conn* c = &self.conns[ci]
    if c.fresh or c.retried:
        return 0
    c.retried = 1
    self.retries += 1
    close_conn(self, ci)
    c.sent_ns = now
    open_conn(self, ci, now)
    return 1


cdef void start_backoff(Engine self, int ci, int64_t now) noexcept:
    cdef Conn* c = &self.conns[ci]
    c.backoff_ns = BACKOFF_FIRST_NS if c.backoff_ns == 0 else c.backoff_ns * 2
    if c.backoff_ns > BACKOFF_MAX_NS:
        c.backoff_ns = BACKOFF_MAX_NS
    c.retry_at_ns = now + c.backoff_ns
    c.state = C_BACKOFF
    self.n_backoff += 1


cdef void end_backoffs(Engine self, int64_t now, int release) noexcept:
    """Slots whose backoff is over (all of them with release) try again in the current
    closed-model stage, or go back to the pool."""
    cdef int i
    cdef Conn* c
    cdef StagePlan* sp
    for i in range(self.nconns):
        c = &self.conns[i]
        if c.state != C_BACKOFF or (not release and c.retry_at_ns > now):
            continue
        c.state = C_CLOSED
        self.n_backoff -= 1
        sp = &self.stages[self.cur] if self.cur < self.nstages else NULL
        if not release and sp != NULL and not sp.open_model and not self.stopping \
                and not self.h2.enabled:
            self.closed_arrival(i, now)
        else:
            push_closed(self, i)


cdef int64_t next_retry(Engine self) noexcept:
    cdef int i
    cdef int64_t t = NEVER
    for i in range(self.nconns):
        if self.conns[i].state == C_BACKOFF and self.conns[i].retry_at_ns < t:
            t = self.conns[i].retry_at_ns
    return t
