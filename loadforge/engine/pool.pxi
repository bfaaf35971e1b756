# Included by loadforge/_core.pyx: the connection pool of an Engine. Connections wait on an idle
# stack (open, reusable) and a closed stack (to open for the next arrival); a slot whose connect
# failed backs off (1 ms doubling up to 1 s) before it is tried again. Sockets are reached only
# through the transport seam (engine/transport.pxi).


cdef inline int64_t deadline_after(Engine self, int64_t now) noexcept:
    """A connect's or request's deadline from now: the timeout, within the run's end_by_ns."""
    cdef int64_t at = now + self.timeout_ns
    return at if at < self.end_by_ns else self.end_by_ns


cdef inline void note_deadline(Engine self, int64_t at) noexcept:
    """A protocol's scan_timeouts: `at` is a deadline still ahead (or, as `now`, a connection
    that needs the next periodic scan anyway)."""
    if at < self.scan_due_ns:
        self.scan_due_ns = at


cdef inline int64_t scan_after(Engine self, int64_t now) noexcept:
    """When the scan after the one at `now` is due: at the earliest deadline it left ahead,
    and no sooner than a scan period on."""
    cdef int64_t at = now + SCAN_PERIOD_NS
    return self.scan_due_ns if self.scan_due_ns > at else at


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
    PROTOCOLS[c.proto].drop(self, ci)
    c.proto = self.proto    # the next connection on this slot reads its own ALPN
    if c.state == C_CONNECTING:
        self.connecting -= 1
    if c.want_write:
        c.want_write = 0
        self.writing -= 1
    c.state = C_CLOSED
    push_closed(self, ci)


cdef void open_conn(Engine self, int ci, int64_t now) noexcept:
    cdef Conn* c = &self.conns[ci]
    if counts_at_open(self, c):
        self.connects += 1
    PROTOCOLS[c.proto].on_open(self, ci)
    if transport_connect(&self.transport, c) != IO_OK:
        connect_failed(self, ci, now)
        return
    c.state = C_CONNECTING
    c.served = 0
    c.connect_ns = now
    self.connecting += 1
    c.deadline_ns = deadline_after(self, now)
    # The quiet sleep (sleep_through_responses) still wakes when the server closes or
    # resets a connection, so that such ends are timed when the kernel saw them.
    if conn_epoll(self, self.epfd, EPOLL_CTL_ADD, ci, EPOLLOUT) != 0 \
            or conn_epoll(self, self.wake_epfd, EPOLL_CTL_ADD, ci, EPOLLRDHUP) != 0:
        connect_failed(self, ci, now)


cdef int conn_epoll(Engine self, int epfd, int op, int ci, uint32_t events) noexcept:
    """epoll_ctl for a connection's socket: 0, or -1 when the kernel refused (ENOMEM, ENOSPC
    past fs.epoll.max_user_watches). The caller ends the connection as failed (`connect`),
    as wrk counts a failed aeCreateFileEvent: a socket epoll never reports would end as a
    misleading timeout. Engine(fault_epoll=n) makes the n-th call fail, for the tests."""
    cdef epoll_event ev
    if self.fault_epoll > 0:
        self.fault_epoll -= 1
        if self.fault_epoll == 0:
            return -1
    ev.events = events
    ev.data.u64 = ci
    return epoll_ctl(epfd, op, self.conns[ci].fd, &ev)


cdef inline int counts_at_open(Engine self, Conn* c) noexcept:
    """Whether a connect attempt counts (connections.opened) when it starts. One opened ahead
    of need (the pool's warm-up: no arrival waits on it) counts only once it connects: one
    that fails is tried again by the first arrival that needs the slot, and that attempt
    counts, with the arrival's `connect` error, so that connections.failed equals
    errors_by_kind.connect in both models. A multiplexed protocol's connections (HTTP/2)
    count as they start: streams queue on them at once."""
    return c.has_arrival or PROTOCOLS[self.proto].multiplexed


cdef void connect_failed(Engine self, int ci, int64_t now) noexcept:
    if counts_at_open(self, &self.conns[ci]):
        self.connect_failures += 1
    elif self.conns[ci].handshaking:
        # Nor does its handshake, which the transport counted as failed (engine/tls.pxi).
        self.transport.tls_failed -= 1
    PROTOCOLS[self.conns[ci].proto].connect_failed(self, ci, now)


cdef void tls_refused(Engine self, int ci, int64_t now) noexcept:
    """A TLS 1.3 server refused the handshake only after the client finished its side (a
    client certificate missing or refused: the alert comes on the first read, tls_read). The
    handshake failed, so the connection is a failed connect and its request a `connect`
    error, as when a TLS 1.2 server refuses during the handshake; never retried."""
    self.connect_failures += 1
    PROTOCOLS[self.conns[ci].proto].connect_failed(self, ci, now)


cdef void tls_refused_idle(Engine self) noexcept:
    """tls_refused for a warm-up connection (no arrival on it yet, HTTP/1.1): as a warm-up
    connect that fails is not counted (counts_at_open), neither is this one, nor its
    handshake; the arrival that next needs the slot tries again, and that attempt counts.
    (HTTP/2 counts every connect as it starts: there it is a failed one.)"""
    if PROTOCOLS[self.proto].multiplexed:
        self.connect_failures += 1
        return
    self.connects -= 1
    self.protocol_h1 -= 1
    self.transport.tls_failed -= 1


cdef void on_connected(Engine self, int ci, int64_t now) noexcept:
    """c's connect or handshake made progress; once it is ready, its protocol takes over."""
    cdef Conn* c = &self.conns[ci]
    cdef int handshake = c.handshaking
    cdef int st = transport_connected(&self.transport, c)
    if st == IO_RETRY and c.handshaking and not handshake:
        # TCP is up and a TLS handshake begins: the connect time ends here, the handshake's
        # starts; the handshake then waits for the server's bytes.
        record_connect_time(self, c, now)
        c.handshake_ns = now
        handshake = 1
        st = transport_connected(&self.transport, c)
    if st == IO_RETRY:
        # The handshake waits for the server's bytes (and for room to send its own).
        if conn_epoll(self, self.epfd, EPOLL_CTL_MOD, ci, EPOLLIN | EPOLLOUT
                      if transport_unsent(&self.transport, c) else EPOLLIN) != 0:
            connect_failed(self, ci, now)
        return
    if st == IO_ERROR and (c.err == ECONNRESET or c.err == EPIPE) and c.has_arrival:
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
    if st != IO_OK or conn_epoll(self, self.epfd, EPOLL_CTL_MOD, ci, EPOLLIN) != 0:
        connect_failed(self, ci, now)
        return
    c.state = C_IDLE
    self.connecting -= 1
    if not counts_at_open(self, c):
        self.connects += 1      # a warm-up connection, counted now that it is open
    if handshake:
        # The handshake's time, as a TLS-terminating load balancer's costs show in it.
        if hist_record(&self.arena, &self.tls_time, (now - c.handshake_ns) // 1000) != 0:
            self.dropped += 1
    else:
        record_connect_time(self, c, now)
    PROTOCOLS[c.proto].on_connected(self, ci, now)


cdef inline void record_connect_time(Engine self, Conn* c, int64_t now) noexcept:
    # Connect time, as load balancers' new-connection costs show in it (churn tests). No
    # memory for a chunk: the connection goes on, its time is not counted.
    if hist_record(&self.arena, &self.connect_time, (now - c.connect_ns) // 1000) != 0:
        self.dropped += 1


cdef int retry_arrival(Engine self, int ci, int64_t now) noexcept:
    """A request that went out on a reused connection the server had already closed (idle
    timeout, keepalive_requests) got no byte of answer: send it once more on a new
    connection, as browsers do, if it is idempotent (RFC 9110 9.2.2, RFC 9112 9.3.1: the
    server may have processed it; a POST sent twice is an order placed twice). Returns 1 when
    it did; else the caller ends it as `reset`."""
    cdef Conn* c = &self.conns[ci]
    if c.fresh or c.retried or not c.retryable:
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
                and not PROTOCOLS[self.proto].multiplexed:
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
