# Included by loadforge/_core.pyx: the engine: one worker's event loop.
# Over 700 lines because it is one cdef class, from its fields to its run loop (Cython keeps a
# cdef class's methods in one block); the protocols it calls live in h1conn.pxi and h2conn.pxi.

# ---------------------------------------------------------------------------------------------
# The engine.

cdef class Engine:
    """One worker's event loop. Build it, then run(t0_ns, on_interval) once.

    address, port: the target (an IPv4 or IPv6 literal). requests: pre-encoded request bytes
    with a HEAD flag each. mix: request index per position of the weighted cycle that global
    arrival i follows (i mod len(mix)). stages: (open_model, rate_from, rate_to, duration_s,
    concurrency, think_s), rates and concurrency for all workers together. Arrival i of the
    global schedule belongs to worker i mod workers. connections: this worker's pool.
    feeders, templates: feeder tables and, per request, None or its template segments, as
    loadforge/config/feeders.py compiles them (engine/template.pxi).
    http2: None for HTTP/1.1, else one (header list, body) per request, the header list
    (name, value) bytes with the pseudo-headers first: every request is then an HTTP/2 stream,
    at most `streams` at once per connection (engine/http2.pxi).
    retry: "idempotent" (an HTTP/1.x request of an idempotent method, or carrying
    Idempotency-Key, goes out once more on a new connection when the reused one it went out
    on closed without a byte of answer) or "never" (such a request ends as `reset`).
    fault_epoll: for the tests, the n-th epoll_ctl on a connection's socket fails (n > 0).
    within_s: every connect and request ends by t0 + within_s, timeout_s or not (the
    preflight's one deadline for its connect and exchange together); 0: no such limit.
    """

    cdef:
        int epfd
        int wake_epfd            # the control fd alone: sleeping without socket wake-ups
        int control_fd
        Transport transport      # how bytes reach the target (engine/transport.pxi)
        H2Engine h2              # HTTP/2 streams and sessions (engine/http2.pxi): an HTTP/2 run
        int proto                # the run's protocol (PROTOCOLS, engine/protocol.pxi): arrivals
                                 # start through it, connections speak it until ALPN says else

        Conn* conns
        int nconns
        int* idle_stack
        int n_idle
        int* closed_stack
        int n_closed
        int inflight
        char* rbuf
        epoll_event* events
        int max_events           # its length: at least one per connection, and the control fd
        msghdr msg               # recvmsg over rbuf, with room for a receive timestamp
        iovec iov
        uint64_t cmsg_buf[CMSG_BUFFER_WORDS]   # 8-aligned, as cmsghdr needs
        int64_t rt_offset_ns     # CLOCK_REALTIME - CLOCK_MONOTONIC at the last wake-up
        int connecting           # connections in C_CONNECTING
        int n_backoff            # connections in C_BACKOFF
        int eventful             # arrivals in flight whose responses may be big (Conn.big)
        uint64_t retries         # arrivals sent again after a reused connection closed
        uint64_t dropped         # outcomes not recorded: no memory for their cell
        uint64_t clamped         # latencies past the histograms' range, recorded as 1 h
        uint64_t closed_by_server   # connected connections the server ended
        uint64_t closed_by_us       # ... and those the engine ended (errors, timeouts, stop)
        uint64_t protocol_h1     # connections that became ready speaking HTTP/1.1 ...
        uint64_t protocol_h2     # ... and HTTP/2 (over TLS: as ALPN chose for each)
        Arena arena              # histogram chunks, shared by every cell
        Hist connect_time        # TCP connect times (µs) of the connections opened this interval
        Hist tls_time            # TLS handshake times (µs) of the handshakes ended this interval
        int writing              # connections with a partial write (EPOLLOUT registered)
        uint64_t n_wakeups

        list _keep
        const char** req_data
        Py_ssize_t* req_len
        int* req_head            # per request: parser_reset's flags (REQ_HEAD, REQ_BODY)
        int* req_retry           # per request: may be sent again (Conn.retryable)
        int retry_idempotent     # [load] retry = "idempotent" (else "never")
        int fault_epoll          # tests: the n-th epoll_ctl of a connection fails (conn_epoll)
        int* req_big             # per request: -1 not known yet, 0 small, 1 seen big
        uint64_t** req_expect    # per request: its expect_status words, or NULL (http1.pxi)
        int nreq
        int32_t* mix
        int64_t mix_len

        StagePlan* stages
        StageCounters* counters
        int nstages
        int cur
        int64_t sched_k          # next arrival of the current stage not yet due (own stripe)
        int64_t disp_k           # next arrival not yet sent; disp_k <= sched_k
        int64_t blocked_k        # arrivals before this one found every connection busy
        int64_t next_due_ns
        int64_t closed_seq
        int closed_active        # connections the current closed-model stage keeps busy
        int epoll_ns             # epoll_pwait2 works (Linux 5.11+)
        int* think_conn          # FIFO: one think time per stage, so FIFO order is time order
        int64_t* think_at
        int nthink               # its capacity: one per connection, or per stream (HTTP/2)
        int think_head
        int think_len

        Cell** cells
        int ncells
        int nslots
        int* touched
        int ntouched
        HeaderNames names
        bytes _capture_name
        char backend_name[MAX_BACKENDS + 1][CAPTURE_MAX]
        int backend_len[MAX_BACKENDS + 1]
        int nbackends

        int64_t t0
        int64_t timeout_ns
        int64_t within_ns        # the whole run's deadline after t0 (0: none; the preflight)
        int64_t end_by_ns        # ... as a time: no connect or request deadline lies past it
        int64_t interval_ns
        int64_t interval_index
        int64_t next_scan_ns
        int64_t scan_due_ns      # during a scan: the earliest deadline still ahead (note_deadline)
        int warmed               # warm() opened the pool: run() opens none
        int64_t wake_gap_ns      # timer wake-ups for arrivals at most this often
        int requests_per_connection   # close after this many responses; 0: reuse without end
        int64_t last_wake_ns
        int worker
        int nworkers
        int stopping
        uint64_t connects
        uint64_t connect_failures
        object on_interval
        object _error
        int probe_status         # the latest HTTP/2 response's status (engine/probe.pxi)
        Templates tpl            # feeders and templated requests (engine/template.pxi)

    def __cinit__(self):
        self.epfd = -1
        self.wake_epfd = -1
        self.end_by_ns = 0x7fffffffffffffff      # run() sets it; a FlowEngine's start() keeps it
        self.control_fd = -1
        hist_clear(&self.connect_time)
        hist_clear(&self.tls_time)

    def __init__(self, str address, int port, list requests, list mix, list stages,
                 int connections, int worker=0, int workers=1, double timeout_s=5.0,
                 double interval_s=1.0, capture_header=None, int control_fd=-1,
                 double timer_resolution_s=0.0, int requests_per_connection=0,
                 list feeders=None, list templates=None, tls=None,
                 list http2=None, int streams=100, str retry="idempotent",
                 int fault_epoll=0, list expect=None, double within_s=0.0):
        cdef int i, j
        cdef sockaddr_in* a4
        cdef sockaddr_in6* a6
        cdef StagePlan* sp
        cdef int64_t offset = 0, base = 0
        if connections < 1:
            raise ValueError("connections must be >= 1")
        if not requests or not mix:
            raise ValueError("at least one request is needed")
        if not stages:
            raise ValueError("at least one stage is needed")
        self.worker = worker
        self.nworkers = workers
        self.timeout_ns = <int64_t>(timeout_s * 1e9)
        self.interval_ns = <int64_t>(interval_s * 1e9)
        self.control_fd = control_fd
        self.wake_gap_ns = <int64_t>(timer_resolution_s * 1e9)
        if requests_per_connection < 0:
            raise ValueError("requests_per_connection must be >= 0")
        self.requests_per_connection = requests_per_connection
        if retry not in ("idempotent", "never"):
            raise ValueError(f'retry must be "idempotent" or "never", got {retry!r}')
        self.retry_idempotent = 1 if retry == "idempotent" else 0
        self.fault_epoll = fault_epoll
        self.within_ns = <int64_t>(within_s * 1e9)

        self.transport.kind = T_TCP
        if tls is not None:
            tls_setup(&self.transport, tls)
        memset(&self.transport.addr, 0, sizeof(self.transport.addr))
        baddr = address.encode()
        if ":" in address:
            a6 = <sockaddr_in6*>&self.transport.addr
            a6.sin6_family = AF_INET6
            a6.sin6_port = htons(port)
            if inet_pton(AF_INET6, baddr, &a6.sin6_addr) != 1:
                raise ValueError(f"not an IPv6 address: {address}")
            self.transport.addrlen = sizeof(sockaddr_in6)
            self.transport.family = AF_INET6
        else:
            a4 = <sockaddr_in*>&self.transport.addr
            a4.sin_family = AF_INET
            a4.sin_port = htons(port)
            if inet_pton(AF_INET, baddr, &a4.sin_addr) != 1:
                raise ValueError(f"not an IPv4 address: {address}")
            self.transport.addrlen = sizeof(sockaddr_in)
            self.transport.family = AF_INET

        self._keep = []
        self.nreq = len(requests)
        self.req_data = <const char**>malloc(self.nreq * sizeof(char*))
        self.req_len = <Py_ssize_t*>malloc(self.nreq * sizeof(Py_ssize_t))
        self.req_head = <int*>malloc(self.nreq * sizeof(int))
        self.req_big = <int*>malloc(self.nreq * sizeof(int))
        self.req_retry = <int*>malloc(self.nreq * sizeof(int))
        self.req_expect = <uint64_t**>calloc(self.nreq, sizeof(uint64_t*))
        if self.req_data == NULL or self.req_len == NULL or self.req_head == NULL \
                or self.req_big == NULL or self.req_retry == NULL or self.req_expect == NULL:
            raise MemoryError()
        for i, words in enumerate(expect or []):
            if words:
                if len(words) != EXPECT_WORDS or i >= self.nreq:
                    raise ValueError("expect: EXPECT_WORDS words per request")
                self.req_expect[i] = <uint64_t*>malloc(EXPECT_WORDS * sizeof(uint64_t))
                if self.req_expect[i] == NULL:
                    raise MemoryError()
                for j in range(EXPECT_WORDS):
                    self.req_expect[i][j] = words[j]
        for i, (data, head) in enumerate(requests):
            data = bytes(data)
            self._keep.append(data)
            self.req_data[i] = PyBytes_AS_STRING(data)
            self.req_len[i] = PyBytes_GET_SIZE(data)
            self.req_head[i] = request_flags(self.req_data[i], self.req_len[i], head)
            self.req_big[i] = -1
            self.req_retry[i] = self.retry_idempotent and request_idempotent(
                self.req_data[i], self.req_len[i])
        self.mix_len = len(mix)
        self.mix = <int32_t*>malloc(self.mix_len * sizeof(int32_t))
        for i in range(self.mix_len):
            if not 0 <= mix[i] < self.nreq:
                raise ValueError("mix refers to an unknown request")
            self.mix[i] = mix[i]

        self.nstages = len(stages)
        self.stages = <StagePlan*>calloc(self.nstages, sizeof(StagePlan))
        self.counters = <StageCounters*>calloc(self.nstages, sizeof(StageCounters))
        for i, (open_model, rate_from, rate_to, duration_s, concurrency, think_s) in enumerate(stages):
            sp = &self.stages[i]
            sp.open_model = 1 if open_model else 0
            sp.duration_s = duration_s
            sp.start_ns = offset
            offset += <int64_t>(duration_s * 1e9)
            sp.end_ns = offset
            sp.think_ns = <int64_t>(think_s * 1e9)
            if open_model:
                sp.rate_from = rate_from
                sp.rate_to = rate_to
                sp.arrivals = stage_arrivals(rate_from, rate_to, duration_s)
                sp.base = base
                base += sp.arrivals
            else:
                # this worker's share of the stage's connections
                sp.concurrency = concurrency // workers + (1 if worker < concurrency % workers else 0)

        self.nconns = connections
        self.conns = <Conn*>calloc(connections, sizeof(Conn))
        self.idle_stack = <int*>malloc(connections * sizeof(int))
        self.closed_stack = <int*>malloc(connections * sizeof(int))
        self.nthink = connections * (streams if http2 is not None and streams > 0 else 1)
        self.think_conn = <int*>malloc(self.nthink * sizeof(int))
        self.think_at = <int64_t*>malloc(self.nthink * sizeof(int64_t))
        self.rbuf = <char*>malloc(RECV_BUFFER_SIZE)
        # Room for every connection and the control fd: one wait hands back all that is ready,
        # so the wait after a quiet sleep (sleep_through_responses) drains every socket.
        self.max_events = connections + 1 if connections + 1 > MAX_EVENTS else MAX_EVENTS
        self.events = <epoll_event*>malloc(self.max_events * sizeof(epoll_event))
        if (self.conns == NULL or self.idle_stack == NULL or self.closed_stack == NULL
                or self.rbuf == NULL or self.events == NULL or self.think_conn == NULL
                or self.think_at == NULL or self.stages == NULL or self.counters == NULL):
            raise MemoryError()
        self.n_closed = 0
        for i in range(connections - 1, -1, -1):
            self.conns[i].fd = -1
            self.conns[i].state = C_CLOSED
            self.conns[i].in_closed = 1
            self.closed_stack[self.n_closed] = i
            self.n_closed += 1

        tpl_setup(self, feeders or [], templates or [],
                  connections * (streams if http2 is not None and streams > 0 else 1))

        self._capture_name = capture_header.lower().encode() if capture_header else b""
        names_init(&self.names, self._capture_name)
        self.nslots = MAX_BACKENDS + 1 if capture_header else 1
        self.nbackends = 0
        self.ncells = self.nstages * self.nreq * N_OUTCOMES * self.nslots
        self.cells = <Cell**>calloc(self.ncells, sizeof(Cell*))
        self.touched = <int*>malloc(self.ncells * sizeof(int))
        if self.cells == NULL or self.touched == NULL:
            raise MemoryError()

        self.proto = PROTO_H1
        if http2 is not None:
            h2_setup(self, http2, streams)      # (sets self.proto)
        for i in range(connections):
            self.conns[i].proto = self.proto

        self.iov.iov_base = self.rbuf
        self.iov.iov_len = RECV_BUFFER_SIZE
        self.msg.msg_iov = &self.iov
        self.msg.msg_iovlen = 1
        self.msg.msg_control = <void*>self.cmsg_buf
        self.transport.rx_stamps = 1

        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.wake_epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0 or self.wake_epfd < 0:
            raise OSError(errno, "epoll_create1 failed")

    def __dealloc__(self):
        cdef int i
        h2_free(self)
        if self.conns != NULL:
            for i in range(self.nconns):
                if self.conns[i].fd >= 0:
                    transport_close(&self.transport, &self.conns[i])
        if self.cells != NULL:
            for i in range(self.ncells):
                if self.cells[i] != NULL:
                    free(self.cells[i])
        if self.arena.blocks != NULL:
            for i in range(self.arena.nblocks):
                free(self.arena.blocks[i])
            free(self.arena.blocks)
        free(self.arena.free_ids)
        if self.transport.session != NULL:
            SSL_SESSION_free(self.transport.session)
        if self.transport.ctx != NULL:
            SSL_CTX_free(self.transport.ctx)
        if self.epfd >= 0:
            close(self.epfd)
        if self.wake_epfd >= 0:
            close(self.wake_epfd)
        free(self.conns)
        free(self.idle_stack)
        free(self.closed_stack)
        free(self.think_conn)
        free(self.think_at)
        free(self.rbuf)
        free(self.events)
        free(<void*>self.req_data)
        free(self.req_len)
        free(self.req_head)
        free(self.req_big)
        free(self.req_retry)
        if self.req_expect != NULL:
            for i in range(self.nreq):
                free(self.req_expect[i])
            free(self.req_expect)
        free(self.mix)
        free(self.stages)
        free(self.counters)
        free(self.cells)
        free(self.touched)
        tpl_free(self)

    @property
    def wakeups(self):
        """How often the loop has come back from waiting (each costs a context switch)."""
        return self.n_wakeups

    @property
    def receive_timestamps(self):
        """Whether responses are timed by the kernel's receive timestamps (SO_TIMESTAMPNS);
        known once connections are open. Without them, by the time they are read."""
        return bool(self.transport.rx_stamps)

    @property
    def exhausted(self):
        """(feeder table index, when in CLOCK_MONOTONIC ns) once a `unique` feeder had no
        row left for an arrival, which ended the run; else None."""
        if not self.tpl.exhausted:
            return None
        return (self.tpl.exhausted - 1, self.tpl.exhausted_at_ns)

    @property
    def tls_negotiated(self):
        """What this worker's first completed TLS handshake negotiated: {"protocol", "cipher",
        "alpn"} (alpn None when the server chose none), or None before any completed."""
        if not self.transport.negotiated:
            return None
        return {"protocol": self.transport.tls_protocol.decode("ascii", "replace"),
                "cipher": self.transport.tls_cipher.decode("ascii", "replace"),
                "alpn": self.transport.tls_alpn.decode("ascii", "replace") or None}

    @property
    def tls_handshakes(self):
        """TLS handshakes so far: (full, resumed, failed)."""
        return (self.transport.tls_full, self.transport.tls_resumed, self.transport.tls_failed)

    @property
    def connections_by_protocol(self):
        """Connections that became ready, by the protocol they spoke: (http/1.1, h2)."""
        return (self.protocol_h1, self.protocol_h2)

    @property
    def h2_zero_streams(self):
        """HTTP/2 connections whose server allowed no stream (SETTINGS_MAX_CONCURRENT_STREAMS
        = 0): what waited on them timed out."""
        return self.h2.zero_streams

    @property
    def retries(self):
        """Arrivals sent a second time, on a new connection, because the reused connection
        they went out on was closed by the server before a byte of their response."""
        return self.retries

    @property
    def backends(self):
        """Captured header values, by slot (slot 0: none or too many distinct values)."""
        return ["*"] + [self.backend_name[i][:self.backend_len[i]].decode("latin-1")
                        for i in range(1, self.nbackends + 1)]

    # -- requests ---------------------------------------------------------------------------

    cdef inline int64_t received_at(self, Conn* c, int64_t now) noexcept:
        """When the last segment read by the latest recvmsg reached the socket: the kernel's
        receive timestamp moved onto CLOCK_MONOTONIC, kept within [sent, now]. A response is
        timed by its arrival, not by when the loop got round to reading it."""
        cdef cmsghdr* cm = CMSG_FIRSTHDR(&self.msg)
        cdef timespec ts
        cdef int64_t t
        while cm != NULL:
            if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SCM_TIMESTAMPNS:
                memcpy(&ts, CMSG_DATA(cm), sizeof(ts))
                t = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec - self.rt_offset_ns
                if t > now:
                    # Arrived while this batch of events was being handled: `now` is stale.
                    now = monotonic_ns()
                    if t > now:
                        return now
                if t < c.sent_ns:
                    return c.sent_ns
                return t
            cm = CMSG_NXTHDR(&self.msg, cm)
        return now

    cdef void finish(self, int ci, int outcome, int64_t now, int64_t end) noexcept:
        """An arrival ended at `end` (response or failure): record it, free or close the
        connection, and in a closed-model stage start the connection's next request."""
        cdef Conn* c = &self.conns[ci]
        cdef int stage = c.stage
        cdef StagePlan* sp
        record(self, c, outcome, end)
        c.has_arrival = 0
        self.inflight -= 1
        self.eventful -= c.big
        c.big = 0
        if is_response(outcome):
            if c.parser.received > SMALL_RESPONSE_BYTES:
                self.req_big[c.request] = 1
            elif self.req_big[c.request] < 0:
                self.req_big[c.request] = 0
        # An early answer (413 before the body was sent) ends the request too, but leaves
        # the connection half written: never reused.
        c.served += 1
        if not is_response(outcome) or c.parser.close or c.state != C_BUSY \
                or c.written < self.tpl.out_len[ci] or c.want_write \
                or c.served == self.requests_per_connection:
            if c.parser.close and not c.parser.drop and is_response(outcome):
                c.peer_closed = 1     # the server said so: it closes its end after this
            close_conn(self, ci)
        else:
            c.state = C_IDLE
        if stage == self.cur and not self.stopping and self.cur < self.nstages:
            sp = &self.stages[stage]
            if not sp.open_model and now < self.t0 + sp.end_ns:
                if outcome == O_CONNECT and not PROTOCOLS[self.proto].multiplexed:
                    # Retrying at once would spin (a refused port answers in microseconds)
                    # and, from inside finish, recurse once per failure. (HTTP/2's backoffs
                    # end without a new arrival, end_backoffs: an HTTP/1.1 connection of an
                    # HTTP/2 run, ALPN having chosen http/1.1, would lose its user there.)
                    start_backoff(self, ci, now)
                elif sp.think_ns > 0:
                    self.think_conn[(self.think_head + self.think_len) % self.nthink] = ci
                    self.think_at[(self.think_head + self.think_len) % self.nthink] = now + sp.think_ns
                    self.think_len += 1
                else:
                    self.closed_arrival(ci, now)
                return
        if c.state == C_IDLE:
            push_idle(self, ci)

    cdef void closed_arrival(self, int ci, int64_t now) noexcept:
        cdef int request = self.mix[self.closed_seq % self.mix_len]
        if self.stopping:       # a `unique` feeder ran out while slots were being filled
            if PROTOCOLS[self.proto].multiplexed:   # (ci may be -1 after a think time: no pool)
                return
            if self.conns[ci].state == C_IDLE:
                push_idle(self, ci)
            else:
                push_closed(self, ci)
            return
        self.tpl.seq = self.closed_seq
        self.tpl.closed = 1
        self.closed_seq += 1
        self.counters[self.cur].scheduled += 1
        PROTOCOLS[self.proto].start(self, ci, self.cur, request, now, now)

    # -- schedule ---------------------------------------------------------------------------

    cdef inline int64_t intended(self, StagePlan* sp, int64_t k) noexcept:
        return self.t0 + sp.start_ns + <int64_t>(
            arrival_offset(sp.rate_from, sp.rate_to, sp.duration_s, k) * 1e9)

    cdef void begin_stage(self, int64_t now) noexcept:
        cdef StagePlan* sp
        if self.cur >= self.nstages or self.stopping:
            return
        sp = &self.stages[self.cur]
        if sp.open_model:
            # first arrival of this worker's stripe: global index base + k = worker mod W
            self.sched_k = (self.worker - sp.base % self.nworkers + self.nworkers) % self.nworkers
            self.disp_k = self.sched_k
            self.blocked_k = self.sched_k
            self.next_due_ns = self.intended(sp, self.sched_k) \
                if self.sched_k < sp.arrivals else NEVER
        else:
            self.think_head = 0
            self.think_len = 0
            self.closed_active = 0

    cdef void count_due(self, int64_t now) noexcept:
        cdef StagePlan* sp = &self.stages[self.cur]
        while self.next_due_ns <= now:
            self.counters[self.cur].scheduled += 1
            self.sched_k += self.nworkers
            self.next_due_ns = self.intended(sp, self.sched_k) \
                if self.sched_k < sp.arrivals else NEVER

    cdef void dispatch(self, int64_t now) noexcept:
        cdef StagePlan* sp = &self.stages[self.cur]
        cdef int ci
        cdef int64_t intended
        while self.disp_k < self.sched_k:
            ci = take_slot(self)
            if ci < 0:
                # every connection busy: the backlog waits, and its wait is latency
                self.blocked_k = self.sched_k
                return
            intended = self.intended(sp, self.disp_k)
            if self.disp_k < self.blocked_k:
                self.counters[self.cur].waited += 1
            elif now - intended >= LATE_SEND_NS:
                self.counters[self.cur].late += 1
            self.tpl.seq = sp.base + self.disp_k
            self.tpl.closed = 0
            PROTOCOLS[self.proto].start(self, ci, self.cur,
                                        self.mix[(sp.base + self.disp_k) % self.mix_len],
                                        intended, now)
            self.disp_k += self.nworkers

    cdef void end_stage(self, int64_t now) noexcept:
        cdef StagePlan* sp = &self.stages[self.cur]
        cdef int ci
        if sp.open_model:
            # A stop request (Ctrl-C, an SLO abort) does not count the arrivals that fell due
            # since the last wake-up: the stop, not a lack of connections or CPU, kept them
            # unsent. The backlog already counted (no free connection) stays unsent.
            if not self.stopping:
                self.count_due(now)
            self.counters[self.cur].unsent += (self.sched_k - self.disp_k) // self.nworkers
            self.disp_k = self.sched_k
            self.next_due_ns = NEVER
        else:
            if self.n_backoff:
                end_backoffs(self, now, 1)
            while self.think_len > 0:
                ci = self.think_conn[self.think_head]
                self.think_head = (self.think_head + 1) % self.nthink
                self.think_len -= 1
                if ci >= 0 and self.conns[ci].state == C_IDLE:
                    push_idle(self, ci)
        self.cur += 1
        self.begin_stage(now)

    cdef void scan_timeouts(self, int64_t now) noexcept:
        """Requests, streams and connects past their deadlines, each connection by its own
        protocol, which notes the deadlines still ahead (note_deadline) in scan_due_ns."""
        cdef int i
        # Whatever starts from now on has a deadline no sooner than this.
        self.scan_due_ns = deadline_after(self, now)
        for i in range(self.nconns):
            if self.conns[i].state != C_CLOSED:
                PROTOCOLS[self.conns[i].proto].scan_timeouts(self, i, now)

    cdef int advance(self, int64_t now) except -1:
        """Everything that is due at `now`; returns 1 once the run is over."""
        cdef StagePlan* sp
        cdef int ci
        if self.h2.pending_len:
            h2_pump(self, now)
        if now >= self.next_scan_ns:
            # First: a connection freed by a timeout takes an arrival waiting on the pool now,
            # not at the next wake-up, which may be the interval's end.
            self.scan_timeouts(now)
            # The next scan when something can be due: not every 10 ms while requests are in
            # flight, which at low rates was a second wake-up for each arrival (each costs
            # tens of µs of CPU on a VM). At most one scan per period all the same.
            self.next_scan_ns = scan_after(self, now)
        while self.cur < self.nstages and now >= self.t0 + self.stages[self.cur].end_ns:
            if self.stages[self.cur].open_model:
                self.count_due(self.t0 + self.stages[self.cur].end_ns - 1)
                self.dispatch(now)
            self.end_stage(now)
        if self.cur < self.nstages:
            sp = &self.stages[self.cur]
            if sp.open_model:
                self.count_due(now)
                self.dispatch(now)
            elif now >= self.t0 + sp.start_ns:
                # Slots whose backoff is over first: an HTTP/2 connection's users come back
                # through the fill below.
                if self.n_backoff:
                    end_backoffs(self, now, 0)
                # Fill the stage's slots; connections still busy with an earlier stage's
                # requests join as they come free.
                while self.closed_active < sp.concurrency:
                    ci = take_slot(self)
                    if ci < 0:
                        break
                    self.closed_active += 1
                    self.closed_arrival(ci, now)
                while self.think_len > 0 and self.think_at[self.think_head] <= now:
                    ci = self.think_conn[self.think_head]
                    self.think_head = (self.think_head + 1) % self.nthink
                    self.think_len -= 1
                    self.closed_arrival(ci, now)
        while now >= self.t0 + (self.interval_index + 1) * self.interval_ns:
            flush(self, 0)
        if self.h2.ndirty:
            h2_flush_dirty(self, now)
        if self._error is not None:
            return 1
        return 1 if self.cur >= self.nstages and self.inflight == 0 else 0

    cdef int64_t next_wakeup(self, int64_t now) noexcept:
        cdef int64_t t = self.t0 + (self.interval_index + 1) * self.interval_ns
        cdef StagePlan* sp
        if self.cur < self.nstages:
            sp = &self.stages[self.cur]
            if self.t0 + sp.end_ns < t:
                t = self.t0 + sp.end_ns
            if sp.open_model:
                if self.disp_k == self.sched_k and self.next_due_ns < t:
                    # Each wake-up costs a few µs of CPU (more on a VM, where an idle vCPU
                    # halts); at high rates, arrivals close together share one, sent up to
                    # the timer resolution late. The lateness is part of their latency.
                    t = self.next_due_ns
                    if t < self.last_wake_ns + self.wake_gap_ns:
                        t = self.last_wake_ns + self.wake_gap_ns
            elif self.think_len > 0 and self.think_at[self.think_head] < t:
                t = self.think_at[self.think_head]
            elif self.t0 + sp.start_ns > now and self.t0 + sp.start_ns < t:
                t = self.t0 + sp.start_ns
        # Connects under way time out too: a warm-up connection that hangs must free its slot
        # for the arrivals waiting on the pool.
        if (self.inflight > 0 or self.connecting > 0) and self.next_scan_ns < t:
            t = self.next_scan_ns
        if self.n_backoff and next_retry(self) < t:
            t = next_retry(self)
        return t

    cdef inline int sleep_through_responses(self) noexcept:
        """Whether the next wait may ignore the sockets: in an open-model stage nothing but
        the next arrival needs the loop while every due arrival is sent, no connection is
        being opened, no request is half written and no response in flight may be too big
        for the socket buffers (a server blocked on a full buffer would wait for the loop).
        Responses that come meanwhile are read at the next wake-up and timed by their receive
        timestamps, so at high rates one wake-up serves a tick's arrivals and the previous
        tick's responses together. Closes and resets still wake it (EPOLLRDHUP, EPOLLERR)."""
        # HTTP/2: its streams are eventful unless a connection's worth of their responses fits
        # a socket buffer (engine/http2.pxi h2_submit); frames to write or arrivals waiting
        # for a stream need the loop too.
        if not self.transport.rx_stamps or self.cur >= self.nstages or self.connecting or self.writing \
                or self.eventful or self.h2.ndirty or self.h2.pending_len:
            return 0
        return self.stages[self.cur].open_model and self.disp_k == self.sched_k

    def stop(self):
        """Stop scheduling; requests in flight are still awaited and recorded."""
        self.request_stop(monotonic_ns())

    cdef void request_stop(self, int64_t now) noexcept:
        if self.stopping:
            return
        self.stopping = 1
        if self.cur < self.nstages:
            self.end_stage(now)
        self.cur = self.nstages

    # -- the loop ---------------------------------------------------------------------------

    cdef void handle_events(self, int n, int64_t now) noexcept:
        """The n events epoll returned, each to its connection's protocol (or the
        coordinator's channel: stop)."""
        cdef int i, ci
        cdef uint32_t ev
        cdef char drain[64]
        for i in range(n):
            if i:
                # Handling a batch takes time; what it times (errors, closes) is timed by the
                # clock, not by the batch's start.
                now = monotonic_ns()
            ci = <int>self.events[i].data.u64
            ev = self.events[i].events
            if ci == CONTROL_TAG:
                # A byte from the coordinator, or its end of the pipe closing: stop.
                read(self.control_fd, drain, sizeof(drain))
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, self.control_fd, NULL)
                self.request_stop(now)
                continue
            if self.conns[ci].fd < 0:
                continue    # closed by an earlier event of this batch
            if self.conns[ci].state == C_CONNECTING:
                on_connected(self, ci, now)
                continue
            if ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
                PROTOCOLS[self.conns[ci].proto].on_readable(self, ci, now)
            if ev & EPOLLOUT and self.conns[ci].fd >= 0 and self.conns[ci].want_write:
                PROTOCOLS[self.conns[ci].proto].on_writable(self, ci, now)

    cdef int pool_opening(self) noexcept:
        """Whether a connection of the pool is still opening: its connect or TLS handshake
        under way, or (HTTP/2) the server's first frames, its SETTINGS, not yet read."""
        cdef int i
        for i in range(self.nconns):
            if self.conns[i].state == C_CONNECTING:
                return 1
            if self.conns[i].state == C_IDLE and PROTOCOLS[self.conns[i].proto].multiplexed \
                    and not self.h2.conns[i].heard:
                return 1
        return 0

    def warm(self, int preconnect=-1, double within_s=1.0):
        """Open `preconnect` connections of the pool (-1: all of them) and see them ready, for
        at most within_s: connected, TLS handshakes done, HTTP/2 SETTINGS exchanged, as a
        client that has been up for a while has them. Called before time zero is known
        (workers.py: before READY), so that neither the connects nor the handshakes are paid
        in the run's first arrivals, and time zero need only cover the start message's way.
        Returns how many connections are open; those still opening go on in run(), which
        opens no more."""
        cdef int64_t now, until
        cdef int i, ci, n, ready
        now = monotonic_ns()
        until = now + <int64_t>(within_s * 1e9)
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        # No stage yet: what the connections' events do stays within the pool (no arrival to
        # start or back off).
        self.cur = self.nstages
        self.warmed = 1
        if preconnect < 0 or preconnect > self.nconns:
            preconnect = self.nconns
        for i in range(preconnect):
            ci = take_conn(self)
            if ci < 0:
                break
            open_conn(self, ci, now)
        if self.h2.ndirty:
            h2_flush_dirty(self, now)
        while self.pool_opening():
            now = monotonic_ns()
            if now >= until:
                break
            with nogil:
                n = epoll_wait(self.epfd, self.events, self.max_events,
                               <int>((until - now + 999999) // 1000000))
            if n > 0:
                self.handle_events(n, monotonic_ns())
            if self.h2.ndirty:
                h2_flush_dirty(self, monotonic_ns())
        ready = 0
        for i in range(self.nconns):
            ready += self.conns[i].state == C_IDLE
        if self._error is not None:
            raise self._error
        return ready

    def run(self, int64_t t0_ns, on_interval, int preconnect=-1):
        """Run every stage from t0_ns (CLOCK_MONOTONIC), calling on_interval(payload,
        open_connections, in_flight) after each interval and once more at the end."""
        cdef int64_t now, wait, t
        cdef int i, n, ci, quiet
        cdef timespec ts
        cdef epoll_event cev
        self.t0 = t0_ns
        self.end_by_ns = t0_ns + self.within_ns if self.within_ns > 0 else 0x7fffffffffffffff
        self.epoll_ns = 1
        self.on_interval = on_interval
        self._error = None
        # Arrivals are due to the nanosecond; the default 50 µs timer slack would add up to
        # 50 µs of lateness to every wake-up.
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        if self.control_fd >= 0:
            cev.events = EPOLLIN
            cev.data.u64 = CONTROL_TAG
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.control_fd, &cev) != 0 \
                    or epoll_ctl(self.wake_epfd, EPOLL_CTL_ADD, self.control_fd, &cev) != 0:
                raise OSError(errno, "epoll_ctl: the coordinator's channel cannot be watched")
        now = monotonic_ns()
        self.rt_offset_ns = realtime_ns() - now
        # The first scan: a period on when warm() left connects pending (their deadlines are
        # older than this one), else when a connect opened now could be due.
        self.scan_due_ns = now + SCAN_PERIOD_NS if self.warmed else deadline_after(self, now)
        self.next_scan_ns = scan_after(self, now)
        # Open the pool before time zero, as a client that has been up for a while would have
        # (unless warm() did).
        if preconnect < 0 or preconnect > self.nconns:
            preconnect = self.nconns
        if self.warmed:
            preconnect = 0
        for i in range(preconnect):
            ci = take_conn(self)
            if ci < 0:
                break
            open_conn(self, ci, now)
        self.cur = 0
        self.begin_stage(now)
        while True:
            now = monotonic_ns()
            if self.advance(now):
                break
            t = self.next_wakeup(now)
            wait = t - now
            if wait < 0:
                wait = 0
            ts.tv_sec = wait // 1000000000
            ts.tv_nsec = wait % 1000000000
            quiet = self.epoll_ns and self.sleep_through_responses()
            if self.epoll_ns:
                with nogil:
                    n = epoll_pwait2(self.wake_epfd if quiet else self.epfd, self.events,
                                     self.max_events, &ts, NULL)
                if n < 0 and errno == ENOSYS:
                    self.epoll_ns = 0
                    quiet = 0
            if not self.epoll_ns:
                # Millisecond timeouts only: round up, so arrivals are never sent early.
                with nogil:
                    n = epoll_wait(self.epfd, self.events, self.max_events,
                                   <int>((wait + 999999) // 1000000))
            if quiet:
                n = epoll_wait(self.epfd, self.events, self.max_events, 0)
            now = monotonic_ns()
            self.rt_offset_ns = realtime_ns() - now
            self.last_wake_ns = now
            self.n_wakeups += 1
            if n > 0:
                self.handle_events(n, now)
        flush(self, 1)
        for i in range(self.nconns):
            if self.conns[i].fd >= 0:
                close_conn(self, i)
        if self._error is not None:
            raise self._error
