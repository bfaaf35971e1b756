# Included by loadforge/_core.pyx: the engine's step mode, for scripted flows (loadforge/flows).
#
# A FlowEngine is an Engine (same connection pool, transport seam, HTTP/1.1 parser, cells and
# interval payloads) that does not schedule requests itself. Python (loadforge/flows/driver.py)
# asks it which arrivals of the open-model schedule are due, submits each step of a flow as
# encoded bytes, and polls: one poll waits on epoll, sends, reads, parses and times in C,
# captures each response (status line, headers, body) into its connection's buffer and puts
# it on a completion list that Python takes in one batch. Python runs once per step, never
# once per socket event. Steps are recorded in their cells as the Engine records requests;
# flows are recorded by record_flow under request indices of their own.

cdef enum:
    FLOW_CAPTURE_MAX = 16 << 20      # bytes of a response a flow can read; the rest is counted


cdef class FlowEngine(Engine):
    """The engine in step mode. names: one per request index (steps, then flows); stages as
    Engine's; connections: this worker's pool."""

    cdef:
        char** cap               # per connection: the response being read, as received
        int64_t* cap_len
        int64_t* cap_size
        list _hold               # per connection: the bytes object being sent
        int64_t* token           # per connection: the caller's token of the step under way
        list _done               # completions since the last take: (ci, outcome, status)

    def __init__(self, str address, int port, list names, list stages, int connections,
                 int worker=0, int workers=1, double timeout_s=5.0, double interval_s=1.0,
                 int control_fd=-1, tls=None, str retry="idempotent"):
        Engine.__init__(self, address, port, [(b"", False)] * len(names), [0], stages,
                        connections, worker=worker, workers=workers, timeout_s=timeout_s,
                        interval_s=interval_s, control_fd=control_fd, tls=tls, retry=retry)
        self.cap = <char**>calloc(connections, sizeof(char*))
        self.cap_len = <int64_t*>calloc(connections, sizeof(int64_t))
        self.cap_size = <int64_t*>calloc(connections, sizeof(int64_t))
        self.token = <int64_t*>calloc(connections, sizeof(int64_t))
        if self.cap == NULL or self.cap_len == NULL or self.cap_size == NULL \
                or self.token == NULL:
            raise MemoryError()
        self._hold = [None] * connections
        self._done = []
        # HTTP/1.1 with each response captured (flow_on_readable); steps start from submit.
        self.proto = PROTO_FLOW
        for ci in range(connections):
            self.conns[ci].proto = PROTO_FLOW

    def __dealloc__(self):
        cdef int i
        if self.cap != NULL:
            for i in range(self.nconns):
                free(self.cap[i])
        free(self.cap)
        free(self.cap_len)
        free(self.cap_size)
        free(self.token)

    # -- the schedule -----------------------------------------------------------------------

    def start(self, int64_t t0_ns, on_interval, int preconnect=0):
        """Time zero and the interval callback (on_interval(payload, open_conns, in_flight));
        opens `preconnect` connections (none where warm() opened the pool)."""
        cdef epoll_event cev
        cdef int i, ci
        cdef int64_t now = monotonic_ns()
        self.t0 = t0_ns
        self.epoll_ns = 1
        self.on_interval = on_interval
        self._error = None
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        if self.control_fd >= 0:
            cev.events = EPOLLIN
            cev.data.u64 = CONTROL_TAG
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.control_fd, &cev) != 0 \
                    or epoll_ctl(self.wake_epfd, EPOLL_CTL_ADD, self.control_fd, &cev) != 0:
                raise OSError(errno, "epoll_ctl: the coordinator's channel cannot be watched")
        self.rt_offset_ns = realtime_ns() - now
        self.next_scan_ns = now + SCAN_PERIOD_NS
        if preconnect > self.nconns or self.warmed:
            preconnect = 0 if self.warmed else self.nconns
        for i in range(preconnect):
            ci = take_conn(self)
            if ci < 0:
                break
            open_conn(self, ci, now)
        self.cur = 0
        self.begin_stage(now)

    def due(self, int64_t now):
        """Open-model arrivals of this worker's stripe due by `now`, as (global index,
        intended ns, stage), counted scheduled and sent; ends the stages that are over."""
        cdef list out = []
        cdef StagePlan* sp
        cdef int64_t upto
        while self.cur < self.nstages:
            sp = &self.stages[self.cur]
            if sp.open_model:
                upto = self.t0 + sp.end_ns - 1
                self.count_due(now if now < upto else upto)
                while self.disp_k < self.sched_k:
                    out.append((sp.base + self.disp_k, self.intended(sp, self.disp_k), self.cur))
                    self.counters[self.cur].sent += 1
                    self.disp_k += self.nworkers
            if now < self.t0 + sp.end_ns:
                break
            self.end_stage(now)
        return out

    def stage(self):
        """The current stage: (index, open model, this worker's concurrency, think ns, start
        ns, end ns), or None once the stages are over (or the run was stopped)."""
        cdef StagePlan* sp
        if self.cur >= self.nstages:
            return None
        sp = &self.stages[self.cur]
        return (self.cur, bool(sp.open_model), sp.concurrency, sp.think_ns,
                self.t0 + sp.start_ns, self.t0 + sp.end_ns)

    def count_closed(self, int stage):
        """A closed-model user started a flow in `stage`."""
        self.counters[stage].scheduled += 1
        self.counters[stage].sent += 1

    def wake_at(self, int64_t now):
        """When the schedule next needs the loop: an arrival, a stage's end, an interval's
        flush, a timeout scan."""
        cdef int64_t t = self.t0 + (self.interval_index + 1) * self.interval_ns
        cdef StagePlan* sp
        if self.cur < self.nstages:
            sp = &self.stages[self.cur]
            if self.t0 + sp.end_ns < t:
                t = self.t0 + sp.end_ns
            if sp.open_model and self.next_due_ns < t:
                t = self.next_due_ns
            elif not sp.open_model and self.t0 + sp.start_ns > now \
                    and self.t0 + sp.start_ns < t:
                t = self.t0 + sp.start_ns
        if (self.inflight > 0 or self.connecting > 0) and self.next_scan_ns < t:
            t = self.next_scan_ns
        if self.n_backoff and next_retry(self) < t:
            t = next_retry(self)
        return t

    @property
    def is_stopping(self):
        return bool(self.stopping)

    @property
    def in_flight(self):
        return self.inflight

    # -- steps ------------------------------------------------------------------------------

    def submit(self, bytes data, bint head, int step, int stage, int64_t intended, int64_t now,
               int64_t token):
        """Send one step's request on a free connection: 0, or -1 when every connection is
        busy (the caller queues the step; the wait counts in its latency). Its completion
        comes back with `token`: possibly from this very call (a connect refused at once),
        so the caller files the token before it submits."""
        cdef int ci = take_conn(self)
        cdef Conn* c
        if ci < 0:
            return -1
        c = &self.conns[ci]
        self._hold[ci] = data
        self.tpl.out[ci] = PyBytes_AS_STRING(data)
        self.tpl.out_len[ci] = PyBytes_GET_SIZE(data)
        self.req_head[step] = request_flags(self.tpl.out[ci], self.tpl.out_len[ci], head)
        self.cap_len[ci] = 0
        self.token[ci] = token
        c.has_arrival = 1
        c.stage = stage
        c.request = step
        c.intended_ns = intended
        c.fresh = 0
        c.retried = 0
        # Steps are built by Python, one method each: decided per step, not per name.
        c.retryable = self.retry_idempotent and request_idempotent(
            self.tpl.out[ci], self.tpl.out_len[ci])
        c.big = 1
        self.eventful += 1
        self.inflight += 1
        if c.state == C_IDLE:
            send_request(self, ci, now)
        else:
            c.sent_ns = now
            open_conn(self, ci, now)
        return 0

    def poll(self, int64_t timeout_ns, int64_t gap_ns=0):
        """Wait up to timeout_ns for socket events and handle them; flush the intervals that
        are due and scan for timeouts. gap_ns: wake-ups at most this often, as the Engine's
        timer resolution: until gap_ns after the last one the wait ignores the sockets (a
        close or reset still wakes it) and responses that came meanwhile are read at once,
        timed by their kernel receive timestamps; a flow's next step may go out up to gap_ns
        later, which its flow latency shows. Returns the completions, [(token, outcome, status, response
        bytes as received, end ns)] with each step's token first, and the time."""
        cdef int n
        cdef timespec ts
        cdef int64_t now
        cdef list done
        cdef int64_t quiet
        if timeout_ns < 0:
            timeout_ns = 0
        if gap_ns > 0 and timeout_ns > 0 and self.epoll_ns and self.transport.rx_stamps:
            now = monotonic_ns()
            quiet = self.last_wake_ns + gap_ns - now
            if quiet > 0:
                if quiet > timeout_ns:
                    quiet = timeout_ns
                ts.tv_sec = quiet // 1000000000
                ts.tv_nsec = quiet % 1000000000
                with nogil:
                    n = epoll_pwait2(self.wake_epfd, self.events, self.max_events, &ts, NULL)
                # Woken (a close, the control fd): look at once; else wait on for the rest.
                timeout_ns = 0 if n > 0 else timeout_ns - quiet
        ts.tv_sec = timeout_ns // 1000000000
        ts.tv_nsec = timeout_ns % 1000000000
        if self.epoll_ns:
            with nogil:
                n = epoll_pwait2(self.epfd, self.events, self.max_events, &ts, NULL)
            if n < 0 and errno == ENOSYS:
                self.epoll_ns = 0
        if not self.epoll_ns:
            with nogil:
                n = epoll_wait(self.epfd, self.events, self.max_events,
                               <int>((timeout_ns + 999999) // 1000000))
        now = monotonic_ns()
        self.rt_offset_ns = realtime_ns() - now
        self.last_wake_ns = now
        self.n_wakeups += 1
        if n > 0:
            self.handle_events(n, now)
            if n > 1:
                now = monotonic_ns()    # the flush and the scan below come after the batch
        while now >= self.t0 + (self.interval_index + 1) * self.interval_ns:
            flush(self, 0)
        if now >= self.next_scan_ns:
            self.scan_timeouts(now)
            self.next_scan_ns = scan_after(self, now)
        done = self._done
        self._done = []
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return done, now

    def record_flow(self, int request, int stage, int outcome, int64_t intended,
                    int64_t start, int64_t end):
        """A flow ended: its latency (from its intended arrival time) and its service time
        (from its first step) in the cell of (stage, request, outcome)."""
        cdef Conn c
        memset(&c, 0, sizeof(Conn))
        c.stage = stage
        c.request = request
        c.intended_ns = intended
        c.sent_ns = start
        record(self, &c, outcome, end)

    def record_step(self, int request, int stage, int outcome, int64_t start, int64_t end):
        """A step sent outside the engine (httpx inside a flow, flows/aio.py) ended: its
        latency and service time, both from `start`, in the cell of (stage, request, outcome),
        as the engine records its own steps."""
        cdef Conn c
        memset(&c, 0, sizeof(Conn))
        c.stage = stage
        c.request = request
        c.intended_ns = start
        c.sent_ns = start
        record(self, &c, outcome, end)

    def fileno(self):
        """The epoll fd: readable when a socket (or the control fd) has an event, so that an
        asyncio loop can wait on it (loop.add_reader) and then poll with a zero timeout."""
        return self.epfd

    def finish_run(self):
        """The final interval's payload; closes every connection."""
        cdef int i
        flush(self, 1)
        for i in range(self.nconns):
            if self.conns[i].fd >= 0:
                close_conn(self, i)
        if self._error is not None:
            raise self._error

    # -- the engine's hooks -----------------------------------------------------------------

    cdef inline void capture(self, int ci, const char* data, Py_ssize_t n) noexcept:
        cdef int64_t size, want = self.cap_len[ci] + n
        cdef char* grown
        if want > FLOW_CAPTURE_MAX:
            n = FLOW_CAPTURE_MAX - self.cap_len[ci]
            if n <= 0:
                return
            want = FLOW_CAPTURE_MAX
        if want > self.cap_size[ci]:
            size = self.cap_size[ci] * 2 if self.cap_size[ci] else 4096
            while size < want:
                size *= 2
            grown = <char*>realloc(self.cap[ci], size)
            if grown == NULL:
                return
            self.cap[ci] = grown
            self.cap_size[ci] = size
        memcpy(self.cap[ci] + self.cap_len[ci], data, n)
        self.cap_len[ci] += n

    cdef void finish(self, int ci, int outcome, int64_t now, int64_t end) noexcept:
        # A step ended: record it, free or close its connection, hand it to Python.
        cdef Conn* c = &self.conns[ci]
        record(self, c, outcome, end)
        c.has_arrival = 0
        self.inflight -= 1
        self.eventful -= c.big
        c.big = 0
        c.served += 1
        try:
            self._done.append((
                self.token[ci], outcome, c.parser.status if outcome < O_CONNECT else 0,
                PyBytes_FromStringAndSize(self.cap[ci], self.cap_len[ci])
                if outcome < O_CONNECT and self.cap_len[ci] else b"",
                end))
        except BaseException as exc:
            self._error = exc
        self._hold[ci] = None
        if outcome >= O_CONNECT or c.parser.close or c.state != C_BUSY \
                or c.written < self.tpl.out_len[ci] or c.want_write \
                or c.served == self.requests_per_connection:
            if c.parser.close and not c.parser.drop and outcome < O_CONNECT:
                c.peer_closed = 1
            close_conn(self, ci)
        else:
            c.state = C_IDLE
            push_idle(self, ci)


cdef void flow_on_readable(Engine self, int ci, int64_t now) noexcept:
    """The FlowEngine's on_readable (PROTO_FLOW): HTTP/1.1's, each response's bytes captured
    for the flow."""
    h1_read(self, ci, now, 1)
