# Included by loadforge/_core.pyx: HTTP/2's connection side, the PROTO_H2 entry of the
# protocol table (engine/protocol.pxi): a session per connection opened as its connect starts
# (h2_open_session), its bytes read into nghttp2 (h2_on_readable) and its frames written
# (h2_flush), its streams' deadlines (h2_scan_timeouts), and the per-connection choice of
# protocol once TLS has negotiated one (h2_connected, h2_to_h1). Streams, their outcomes and
# nghttp2's callbacks are engine/http2.pxi.

# -- sessions -------------------------------------------------------------------------------

cdef void h2_open_session(Engine self, int ci) noexcept:
    """A session for connection ci as its connect starts: streams can be submitted at once,
    their frames go out once it is connected. On failure the session stays NULL and the
    connection takes no stream."""
    cdef H2Engine* h = &self.h2
    cdef H2Conn* hc = &h.conns[ci]
    cdef nghttp2_settings_entry iv[2]
    cdef int i
    if hc.session != NULL:
        lf_ng.session_del(hc.session)
        hc.session = NULL
    if hc.out == NULL:
        hc.out = <char*>malloc(H2_OUT_CHUNK * 2)
        hc.out_cap = H2_OUT_CHUNK * 2 if hc.out != NULL else 0
    if hc.out == NULL or lf_ng.client_new2(&hc.session, h.callbacks, <void*>hc, h.option) != 0:
        hc.session = NULL
        return
    iv[0].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
    iv[0].value = 0
    iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
    iv[1].value = H2_WINDOW
    lf_ng.submit_settings(hc.session, NGHTTP2_FLAG_NONE, iv, 2)
    lf_ng.set_local_window_size(hc.session, NGHTTP2_FLAG_NONE, 0, H2_WINDOW)
    hc.active = 0
    hc.limit = h.streams
    hc.goaway = 0
    hc.goaway_last = 0
    hc.draining = 0
    hc.dead = 0
    hc.answered = 0
    hc.zero_noted = 0
    hc.heard = 0
    hc.out_len = 0
    hc.out_pos = 0
    hc.nfree = h.streams
    for i in range(h.streams):
        hc.free_slots[i] = ci * h.streams + h.streams - 1 - i
        h.slots[ci * h.streams + i].state = S_FREE
    self.conns[ci].sent_ns = 0    # received_at clamps to it; streams clamp to their own


cdef void h2_drop(Engine self, int ci) noexcept:
    """Connection ci is being closed (close_conn): end what it still carries and delete its
    session. Open streams reach here only at the run's end or after a stop."""
    cdef H2Engine* h = &self.h2
    cdef H2Conn* hc = &h.conns[ci]
    cdef H2Stream* s
    cdef int i
    cdef int64_t now
    if hc.session == NULL:
        return
    hc.dead = 1
    for i in range(ci * h.streams, (ci + 1) * h.streams):
        s = &h.slots[i]
        if s.state == S_OPEN:
            now = monotonic_ns()
            h2_stream_done(self, s, O_RESET, now, now)
        s.state = S_FREE
    lf_ng.session_del(hc.session)
    hc.session = NULL
    hc.active = 0
    hc.nfree = 0


cdef inline void h2_mark(Engine self, int ci) noexcept:
    """Frames may be waiting in ci's session: written once per turn of the loop."""
    cdef H2Conn* hc = &self.h2.conns[ci]
    if not hc.dirty:
        hc.dirty = 1
        self.h2.dirty_list[self.h2.ndirty] = ci
        self.h2.ndirty += 1


cdef inline int h2_has_room(Engine self, int ci) noexcept:
    cdef Conn* c = &self.conns[ci]
    cdef H2Conn* hc = &self.h2.conns[ci]
    if c.state == C_CLOSED:
        return 1
    if not PROTOCOLS[c.proto].multiplexed:     # HTTP/1.1 by ALPN (h2_to_h1)
        return c.state == C_IDLE and not c.has_arrival
    if c.state != C_IDLE and c.state != C_CONNECTING:
        return 0
    return hc.session != NULL and not hc.goaway and not hc.draining and not hc.dead \
        and hc.active < hc.limit and hc.nfree > 0


cdef int take_slot(Engine self) noexcept:
    """A connection that can take an arrival now (take_conn's role for both protocols): for
    HTTP/2 an open connection with a free stream, round robin so that streams spread over the
    connections, else a closed one to open; -1 when every stream is busy."""
    cdef int k, ci, n = self.nconns
    if not PROTOCOLS[self.proto].multiplexed:
        return take_conn(self)
    for k in range(n):
        ci = (self.h2.cursor + k) % n
        if self.conns[ci].state != C_CLOSED and h2_has_room(self, ci):
            self.h2.cursor = ci + 1
            return ci
    for k in range(n):
        if self.conns[k].state == C_CLOSED:
            return k
    return -1


cdef void h2_fail_conn(Engine self, int ci, int outcome, int64_t now) noexcept:
    """Connection ci ended (reset, closed, a protocol error): its streams above a GOAWAY's
    last stream id are sent again, the others end with `outcome`; then it is closed."""
    cdef H2Engine* h = &self.h2
    cdef H2Conn* hc = &h.conns[ci]
    cdef H2Stream* s
    cdef StagePlan* sp = &self.stages[self.cur] if self.cur < self.nstages else NULL
    cdef int i
    # A connection that ended before a single response (a port that speaks HTTP/1.1, a server
    # that resets every connection) is retried as a failed connect is: its closed-model users
    # wait for its backoff instead of reconnecting as fast as the server can refuse.
    cdef int pace = (outcome != O_CONNECT and not hc.answered and sp != NULL
                     and not sp.open_model and not self.stopping
                     and now >= self.t0 + sp.start_ns)
    hc.dead = 1     # nothing new goes on it while its streams end
    h.pacing = pace
    for i in range(ci * h.streams, (ci + 1) * h.streams):
        s = &h.slots[i]
        if s.state != S_OPEN:
            continue
        if hc.goaway and s.id > hc.goaway_last:
            h2_unprocessed(self, s, O_GOAWAY, now)
        else:
            h2_stream_done(self, s, outcome, now, now)
    h.pacing = 0
    close_conn(self, ci)
    if pace and self.conns[ci].state == C_CLOSED:
        start_backoff(self, ci, now)


cdef void h2_connect_failed(Engine self, int ci, int64_t now) noexcept:
    """connect_failed for HTTP/2 (counted by the caller): every stream queued on it fails; in
    a closed-model stage the connection backs off, as an HTTP/1.1 one does."""
    cdef StagePlan* sp
    h2_fail_conn(self, ci, O_CONNECT, now)
    if self.cur < self.nstages and not self.stopping:
        sp = &self.stages[self.cur]
        # (before the stage starts nothing would end the backoff: the fill reopens it)
        if not sp.open_model and now >= self.t0 + sp.start_ns:
            start_backoff(self, ci, now)


cdef void h2_connected(Engine self, int ci, int64_t now) noexcept:
    """ci is connected (on_connected did the connect bookkeeping): the preface, SETTINGS and
    the streams queued meanwhile go out with this turn's writes. Over TLS ALPN decides, per
    connection, as h2load does: one where the server chose anything but h2 (a backend of a
    mixed set behind an L4 balancer) gets no preface and speaks HTTP/1.1 (h2_to_h1)."""
    cdef const unsigned char* alpn = NULL
    cdef unsigned int alpn_len = 0
    if self.transport.kind == T_TLS:
        tls_alpn(&self.conns[ci], &alpn, &alpn_len)
        if alpn_len != 2 or memcmp(alpn, b"h2", 2) != 0:
            self.protocol_h1 += 1
            h2_to_h1(self, ci, now)
            return
    self.protocol_h2 += 1
    h2_mark(self, ci)


cdef int h2_ended(Engine self, int ci, int64_t now) noexcept:
    """Close ci when nothing more can go on it and nothing is left on it: GOAWAY (the server
    ends it) or requests_per_connection reached (we do) with no stream left, or a session
    nghttp2 has ended. Returns 1 when it closed."""
    cdef H2Conn* hc = &self.h2.conns[ci]
    if hc.session == NULL or self.conns[ci].fd < 0:
        return 0
    if (hc.goaway or hc.draining) and hc.active == 0:
        self.conns[ci].peer_closed = hc.goaway
        close_conn(self, ci)
        return 1
    return 0


cdef void h2_to_h1(Engine self, int ci, int64_t now) noexcept:
    """ALPN chose http/1.1 on ci (h2load's per-session choice): its session goes, the streams
    queued on it (never sent: no preface went out) wait for a connection again, first of all
    this one, which from now on carries HTTP/1.1 requests one at a time (h2_h1_start)."""
    cdef H2Engine* h = &self.h2
    cdef H2Stream* s
    cdef H2Pending* p
    cdef int i
    for i in range(ci * h.streams, (ci + 1) * h.streams):
        s = &h.slots[i]
        if s.state != S_OPEN:
            continue
        if h.pending_len == h.pending_cap:
            h2_stream_done(self, s, O_PROTOCOL, now, now)
            continue
        h2_settle(self, s, O_GOAWAY)
        p = &h.pending[(h.pending_head + h.pending_len) % h.pending_cap]
        p.stage = s.stage
        p.request = s.request
        p.retried = s.retried
        p.intended_ns = s.intended_ns
        p.seq = s.seq
        p.closed = s.closed
        h.pending_len += 1
    h2_drop(self, ci)
    self.conns[ci].proto = PROTO_H1
    if h.pending_len:
        h2_pump(self, now)


cdef void h2_h1_start(Engine self, int ci, int stage, int request, int64_t intended,
                      int retried, int64_t seq, int closed, int64_t now) noexcept:
    """An arrival on an HTTP/1.1 connection of this HTTP/2 engine (h2_to_h1): the HTTP/1.1
    request (engine/writer.pxi), read by on_readable and ended by finish as over an
    HTTP/1.1 engine. A templated one is expanded into the buffer of the connection's first
    stream slot, which an HTTP/1.1 connection does not use."""
    cdef Conn* c = &self.conns[ci]
    cdef Templates* T = &self.tpl
    cdef Tpl* tp
    cdef int64_t row[MAX_TABLES]
    cdef int64_t saved_seq = T.seq
    cdef int saved_closed = T.closed, rc = 0
    cdef char* out
    if T.tpl != NULL and T.tpl[request].first >= 0:
        tp = &T.tpl[request]
        T.seq = seq
        T.closed = closed
        rc = tpl_rows(self, tp, row, now)
        T.seq = saved_seq
        T.closed = saved_closed
        if rc != 0:
            h2_done(self, stage, request, intended, now, NULL, 0, O_PROTOCOL, now, now)
            return
        out = T.block + <int64_t>ci * self.h2.streams * T.buf_size
        T.out[ci] = out
        T.out_len[ci] = tpl_write(T, tp, row, tp.first, tp.first + tp.nseg, out)
    else:
        T.out[ci] = self.req_data[request]
        T.out_len[ci] = self.req_len[request]
    c.has_arrival = 1
    c.stage = stage
    c.request = request
    c.intended_ns = intended
    # No retry_arrival on it: that reopens the slot, which may then speak HTTP/2.
    c.fresh = 1
    c.retried = retried
    c.big = 1 if self.req_big[request] != 0 else 0
    self.eventful += c.big
    send_request(self, ci, now)


# -- reading --------------------------------------------------------------------------------

cdef void h2_on_readable(Engine self, int ci, int64_t now) noexcept:
    cdef Conn* c = &self.conns[ci]
    cdef H2Conn* hc = &self.h2.conns[ci]
    cdef ssize_t n, used
    cdef int reads = 0, st
    while True:
        self.msg.msg_controllen = sizeof(self.cmsg_buf)
        st = transport_read(&self.transport, c, &self.msg, &n)
        if st == IO_OK and n > 0:
            if hc.session == NULL:
                close_conn(self, ci)
                return
            # Responses completed by these bytes are timed by their kernel receive timestamp
            self.h2.rx_ns = self.received_at(c, now)
            self.h2.now_ns = now
            if not hc.heard:
                # An HTTP/1.x answer to the preface: nghttp2 would read "HTTP/1.1 200" as the
                # header of a frame of megabytes and wait for it until the streams time out.
                hc.heard = 1
                if n >= 5 and memcmp(self.rbuf, b"HTTP/", 5) == 0:
                    h2_fail_conn(self, ci, O_PROTOCOL, now)
                    return
            used = lf_ng.mem_recv(hc.session, <const uint8_t*>self.rbuf, n)
            if used < 0 or hc.dead:
                h2_fail_conn(self, ci, O_PROTOCOL, now)
                return
            h2_mark(self, ci)
            if h2_ended(self, ci, now):
                return
            if not lf_ng.want_read(hc.session):
                # nghttp2 ended the session (bytes that are not HTTP/2, a connection error):
                # its GOAWAY goes out if it can, its streams end as protocol errors, and the
                # connection closes instead of taking streams that can never be answered.
                h2_flush(self, ci, now)
                if c.fd >= 0 and not hc.dead:
                    h2_fail_conn(self, ci, O_PROTOCOL, now)
                return
            if n < RECV_BUFFER_SIZE and not transport_pending(&self.transport, c):
                return
            reads += 1
            if reads >= MAX_READS_PER_EVENT and not transport_pending(&self.transport, c):
                # epoll hands a readable socket back; bytes inside the TLS layer it would not
                return
            continue
        if st == IO_RETRY:
            return
        c.peer_closed = 1
        if c.refused:
            tls_refused(self, ci, now)      # (h2 connections: h2_connect_failed)
            return
        h2_fail_conn(self, ci, O_RESET, now)
        return


# -- writing --------------------------------------------------------------------------------

cdef void h2_flush(Engine self, int ci, int64_t now) noexcept:
    """Write what ci's session has to send: frames gathered up to H2_OUT_CHUNK bytes per write;
    what the socket does not take waits for EPOLLOUT."""
    cdef Conn* c = &self.conns[ci]
    cdef H2Conn* hc = &self.h2.conns[ci]
    cdef const uint8_t* data
    cdef ssize_t n, w
    cdef char* grown
    cdef int more, st
    while True:
        if hc.session == NULL or c.fd < 0 or c.state != C_IDLE or c.want_write:
            return
        more = 0
        self.h2.now_ns = now
        while hc.out_len < H2_OUT_CHUNK:
            n = lf_ng.mem_send(hc.session, &data)
            if n < 0:
                h2_fail_conn(self, ci, O_PROTOCOL, now)
                return
            if n == 0:
                break
            if hc.out_len + n > hc.out_cap:
                # a header block bigger than the buffer: grows once to the largest seen
                grown = <char*>realloc(hc.out, hc.out_len + n)
                if grown == NULL:
                    h2_fail_conn(self, ci, O_PROTOCOL, now)
                    return
                hc.out = grown
                hc.out_cap = hc.out_len + n
            memcpy(hc.out + hc.out_len, data, n)
            hc.out_len += n
        else:
            more = 1
        if hc.out_pos == hc.out_len:
            hc.out_pos = 0
            hc.out_len = 0
            if not h2_ended(self, ci, now) and not lf_ng.want_read(hc.session) \
                    and not lf_ng.want_write(hc.session):
                # nghttp2 has nothing left to read or send (it ended the session, its GOAWAY
                # is out): the connection's streams can never be answered
                h2_fail_conn(self, ci, O_PROTOCOL, now)
            return
        st = transport_write(&self.transport, c, hc.out + hc.out_pos, hc.out_len - hc.out_pos,
                             &w)
        if st == IO_ERROR:
            c.peer_closed = 1
            h2_fail_conn(self, ci, O_RESET, now)
            return
        hc.out_pos += w
        if hc.out_pos < hc.out_len:
            set_want_write(self, ci, 1)     # the rest once the socket is writable
            return
        hc.out_pos = 0
        hc.out_len = 0
        if st == IO_RETRY:
            # all taken, but (TLS) ciphertext the socket did not take yet: h2_on_writable
            # flushes it first
            set_want_write(self, ci, 1)
            return
        if not more:
            return


cdef void h2_on_writable(Engine self, int ci, int64_t now) noexcept:
    cdef int st = transport_flush(&self.transport, &self.conns[ci])
    if st == IO_RETRY:
        return          # still full: EPOLLOUT stays
    if st == IO_ERROR:
        self.conns[ci].peer_closed = 1
        h2_fail_conn(self, ci, O_RESET, now)
        return
    set_want_write(self, ci, 0)
    h2_flush(self, ci, now)


cdef void h2_flush_dirty(Engine self, int64_t now) noexcept:
    """Once per turn of the loop: every session with frames to send writes them."""
    cdef int i = 0, ci
    while i < self.h2.ndirty:
        ci = self.h2.dirty_list[i]
        self.h2.conns[ci].dirty = 0
        h2_flush(self, ci, now)
        i += 1
    self.h2.ndirty = 0


# -- time -----------------------------------------------------------------------------------

cdef void h2_scan_timeouts(Engine self, int ci, int64_t now) noexcept:
    """scan_timeouts for an HTTP/2 connection: a connect that takes too long fails its
    streams; a stream past its deadline is counted (flow_control when its request body is
    held by a closed window, else timeout) and cancelled with RST_STREAM(CANCEL). A connection
    whose writes are stuck when a stream times out (the server stopped reading), or whose
    RST_STREAM has not freed its stream a timeout later, takes no new stream and closes once
    its open streams have ended: its slots come back on a fresh connection."""
    cdef H2Engine* h = &self.h2
    cdef H2Conn* hc = &h.conns[ci]
    cdef H2Stream* s
    cdef Conn* c = &self.conns[ci]
    cdef int i, outcome, still_open
    if c.state == C_CONNECTING:
        if now >= c.deadline_ns:
            connect_failed(self, ci, now)
        else:
            note_deadline(self, c.deadline_ns)
        return
    if c.state != C_IDLE or hc.session == NULL:
        return
    if hc.active == 0:
        h2_ended(self, ci, now)     # its last stream closed since (a RST_STREAM went out)
        return
    still_open = 0
    for i in range(ci * h.streams, (ci + 1) * h.streams):
        s = &h.slots[i]
        if s.state == S_ENDED:
            if now >= s.deadline_ns:
                hc.dead = 1     # cancelled a timeout ago and still not closed: wedged
            else:
                note_deadline(self, s.deadline_ns)
            continue
        if s.state != S_OPEN:
            continue
        if now < s.deadline_ns:
            note_deadline(self, s.deadline_ns)
            still_open += 1
            continue
        outcome = O_TIMEOUT
        if s.body_sent < s.body_len and s.id > 0 and \
                lf_ng.get_stream_remote_window_size(hc.session, s.id) <= 0:
            outcome = O_FLOW_CONTROL
        if c.want_write:
            hc.dead = 1     # nothing goes out: the RST_STREAM would not either
        h2_stream_done(self, s, outcome, now, now)
        s.deadline_ns = now + self.timeout_ns
        if s.id > 0:
            lf_ng.submit_rst_stream(hc.session, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_CANCEL)
            h2_mark(self, ci)
        note_deadline(self, s.deadline_ns)
    if hc.dead and c.fd >= 0:
        if still_open == 0:
            close_conn(self, ci)
        else:
            note_deadline(self, now)    # closes once its open streams end: look again soon
