# Included by loadforge/_core.pyx: HTTP/2 (h2c by prior knowledge; h2 once a transport has
# negotiated it) as a protocol beside HTTP/1.1. Declarations: engine/http2.pxd.
#
# One libnghttp2 client session per connection does the framing, HPACK, flow control and the
# acknowledgements; this file keeps the load generator's side: a stream table of `streams`
# slots per connection allocated once, arrivals placed on connections with a free stream,
# each stream timed and recorded like an HTTP/1.1 request, and the stream-level failures
# (RST_STREAM, GOAWAY, flow-control stalls) counted under their own outcomes. The session
# reads and writes bytes only through the transport seam (engine/transport.pxi): mem_recv
# is fed what transport_read returned and mem_send's frames go out through transport_write,
# so the same code runs over TCP and TLS.
#
# The loop reaches HTTP/2 through the protocol table (engine/protocol.pxi, PROTO_H2), whose
# connection-side functions are engine/h2conn.pxi. A connection of an HTTP/2 engine is
# C_CONNECTING, C_IDLE (open: it carries from 0 to `limit` streams), C_CLOSED or C_BACKOFF;
# never C_BUSY, unless ALPN chose http/1.1 for it: then it is an HTTP/1.1 connection
# (Conn.proto = PROTO_H1, h2_to_h1).
#
# Per request nothing is allocated here and no Python object is touched: headers are
# pre-built nghttp2_nv arrays that point into bytes kept by the engine (NO_COPY flags) or, for
# a templated request's values, into the stream slot's buffer (h2_expand; allocated once by
# tpl_setup), the stream's state is a preallocated slot, its user data a pointer to it.
# libnghttp2 keeps its own per-stream bookkeeping, as it does inside h2load.


def http2_library():
    """"" when libnghttp2.so.14 can be loaded, else why not (a one-line message)."""
    cdef char err[256]
    if lf_nghttp2_load(err, sizeof(err)) != 0:
        return err.decode("utf-8", "replace")
    return ""


cdef int h2_setup(Engine self, list requests, int streams) except -1:
    """Build the HTTP/2 side of a new engine: requests are (headers, body) or (headers, body,
    parts) per request, headers a list of (name, value) bytes, pseudo-headers first. parts:
    a templated request's (header index, or -1 for the body, first segment, end segment)
    triples, the segments relative to its template (tpl_setup, already built); each is
    expanded per stream into the stream slot's buffer (h2_expand), so the values given for
    those headers (b"") and the body given (b"") are placeholders."""
    cdef H2Engine* h = &self.h2
    cdef Templates* T = &self.tpl
    cdef char err[256]
    cdef int i, k, total = 0, nslots, nparts = 0
    cdef nghttp2_nv* nv
    if lf_nghttp2_load(err, sizeof(err)) != 0:
        raise RuntimeError("HTTP/2 needs libnghttp2.so.14 (Debian: libnghttp2-14): "
                           + err.decode("utf-8", "replace"))
    if streams < 1:
        raise ValueError("streams must be >= 1")
    if len(requests) != self.nreq:
        raise ValueError("http2: one (headers, body) per request is needed")
    self.proto = PROTO_H2
    h.streams = streams
    nslots = self.nconns * streams
    for entry in requests:
        total += len(entry[0])
        if len(entry) > 2 and entry[2]:
            nparts += len(entry[2])
    h.nva = <nghttp2_nv*>calloc(total, sizeof(nghttp2_nv))
    h.nv_first = <int*>calloc(self.nreq, sizeof(int))
    h.nv_count = <int*>calloc(self.nreq, sizeof(int))
    h.body = <const char**>calloc(self.nreq, sizeof(char*))
    h.body_len = <Py_ssize_t*>calloc(self.nreq, sizeof(Py_ssize_t))
    h.response_max = <int64_t*>malloc(self.nreq * sizeof(int64_t))
    h.grpc = <int*>calloc(self.nreq, sizeof(int))
    h.conns = <H2Conn*>calloc(self.nconns, sizeof(H2Conn))
    h.slots = <H2Stream*>calloc(nslots, sizeof(H2Stream))
    h.free_all = <int32_t*>calloc(nslots, sizeof(int32_t))
    h.dirty_list = <int*>calloc(self.nconns, sizeof(int))
    h.pending_cap = nslots + self.nconns
    h.pending = <H2Pending*>calloc(h.pending_cap, sizeof(H2Pending))
    h.parts = <H2Part*>calloc(max(1, nparts), sizeof(H2Part))
    h.part_first = <int*>calloc(self.nreq, sizeof(int))
    h.part_count = <int*>calloc(self.nreq, sizeof(int))
    if (h.nva == NULL or h.nv_first == NULL or h.nv_count == NULL or h.body == NULL
            or h.parts == NULL or h.part_first == NULL or h.part_count == NULL
            or h.body_len == NULL or h.conns == NULL or h.slots == NULL or h.free_all == NULL
            or h.dirty_list == NULL or h.pending == NULL or h.response_max == NULL
            or h.grpc == NULL):
        raise MemoryError()
    for i in range(self.nreq):
        h.response_max[i] = -1
    k = 0
    nparts = 0
    for i, entry in enumerate(requests):
        headers, body = entry[0], entry[1]
        parts = entry[2] if len(entry) > 2 else None
        if parts:
            if T.tpl == NULL or T.tpl[i].first < 0:
                raise ValueError("http2: parts given for a request without a template")
            h.part_first[i] = nparts
            h.part_count[i] = len(parts)
            for nvi, lo, hi in parts:
                if not -1 <= nvi < len(headers) or not 0 <= lo <= hi <= T.tpl[i].nseg:
                    raise ValueError("http2: a template part out of range")
                h.parts[nparts].nv = nvi
                h.parts[nparts].lo = T.tpl[i].first + lo
                h.parts[nparts].hi = T.tpl[i].first + hi
                nparts += 1
        h.nv_first[i] = k
        h.nv_count[i] = len(headers)
        for name, value in headers:
            name = bytes(name)
            value = bytes(value)
            self._keep.append(name)
            self._keep.append(value)
            nv = &h.nva[k]
            nv.name = <uint8_t*>PyBytes_AS_STRING(name)
            nv.namelen = PyBytes_GET_SIZE(name)
            nv.value = <uint8_t*>PyBytes_AS_STRING(value)
            nv.valuelen = PyBytes_GET_SIZE(value)
            nv.flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE
            k += 1
            # A gRPC call is an HTTP/2 request of this content type (config/grpc.py); its
            # outcome is its grpc-status rather than its HTTP status class.
            if name == b"content-type" and value.startswith(b"application/grpc"):
                h.grpc[i] = 1
        body = bytes(body)
        self._keep.append(body)
        h.body[i] = PyBytes_AS_STRING(body)
        h.body_len[i] = PyBytes_GET_SIZE(body)
    for i in range(self.nconns):
        h.conns[i].ci = i
        h.conns[i].engine = <void*>self
        h.conns[i].free_slots = h.free_all + i * streams
    for i in range(nslots):
        h.slots[i].conn = i // streams
    if lf_ng.callbacks_new(&h.callbacks) != 0 or lf_ng.option_new(&h.option) != 0:
        raise MemoryError()
    lf_ng.set_on_header(h.callbacks, h2_on_header)
    lf_ng.set_on_frame_recv(h.callbacks, h2_on_frame_recv)
    lf_ng.set_on_data_chunk_recv(h.callbacks, h2_on_data_chunk)
    lf_ng.set_on_stream_close(h.callbacks, h2_on_stream_close)
    return 0


cdef void h2_free(Engine self) noexcept:
    cdef H2Engine* h = &self.h2
    cdef int i
    if h.conns != NULL:
        for i in range(self.nconns):
            if h.conns[i].session != NULL:
                lf_ng.session_del(h.conns[i].session)
            free(h.conns[i].out)
    free(h.nva)
    free(h.nv_first)
    free(h.nv_count)
    free(<void*>h.body)
    free(h.body_len)
    free(h.response_max)
    free(h.grpc)
    free(h.conns)
    free(h.slots)
    free(h.free_all)
    free(h.dirty_list)
    free(h.pending)
    free(h.parts)
    free(h.part_first)
    free(h.part_count)
    # the callbacks and option objects live as long as the process: a few hundred bytes


# -- arrivals and streams ---------------------------------------------------------------------

cdef void h2_start_arrival(Engine self, int ci, int stage, int request, int64_t intended,
                           int64_t now) noexcept:
    """start_arrival for HTTP/2: ci is a hint from take_slot (or -1 after a think time)."""
    if self.tpl.unique and tpl_spent(self, now):
        # A `unique` feeder has no row left for this arrival: the run ends here, as over
        # HTTP/1.1 (start_arrival).
        if self.tpl.closed:
            self.counters[stage].scheduled -= 1
        self.request_stop(now)
        return
    self.inflight += 1
    self.counters[stage].sent += 1
    h2_place(self, ci, stage, request, intended, 0, self.tpl.seq, self.tpl.closed, now)


cdef void h2_place(Engine self, int ci, int stage, int request, int64_t intended, int retried,
                   int64_t seq, int closed, int64_t now) noexcept:
    """Submit the arrival on ci (or another connection with room), or queue it; seq and
    closed are its place in the arrival sequence (Templates.seq), which fixes its feeder rows
    whenever, and however often, it is sent."""
    cdef Conn* c
    cdef H2Pending* p
    if ci < 0 or not h2_has_room(self, ci):
        ci = take_slot(self)
    if ci < 0:
        # every stream busy: it waits, and the wait is part of its latency
        if self.h2.pending_len == self.h2.pending_cap:
            h2_done(self, stage, request, intended, now, NULL, 0, O_PROTOCOL, now, now)
            return
        p = &self.h2.pending[(self.h2.pending_head + self.h2.pending_len) % self.h2.pending_cap]
        p.stage = stage
        p.request = request
        p.retried = retried
        p.intended_ns = intended
        p.seq = seq
        p.closed = closed
        self.h2.pending_len += 1
        return
    c = &self.conns[ci]
    if not PROTOCOLS[c.proto].multiplexed:     # HTTP/1.1 by ALPN (h2_to_h1)
        h2_h1_start(self, ci, stage, request, intended, retried, seq, closed, now)
        return
    if c.state == C_CLOSED:
        open_conn(self, ci, now)
        if c.state != C_CONNECTING or self.h2.conns[ci].session == NULL:
            if c.state == C_CONNECTING:
                self.connect_failures += 1
                close_conn(self, ci)
            h2_done(self, stage, request, intended, now, NULL, 0, O_CONNECT, now, now)
            return
    if h2_submit(self, ci, stage, request, intended, retried, seq, closed, now) != 0:
        h2_done(self, stage, request, intended, now, NULL, 0, O_PROTOCOL, now, now)


cdef int h2_expand(Engine self, int32_t si, H2Stream* s, int request, int64_t now) noexcept:
    """A templated request's values for stream slot si, expanded into the slot's buffer (the
    segment walk of HTTP/1.1's tpl_assemble, part by part): the request's header block
    entries for them point there, and so does the stream's body. nghttp2_submit_request
    copies the header block but not the values (NO_COPY), so each stream keeps its own until
    its slot is released, after the stream closed. -1: no row (cannot follow tpl_spent)."""
    cdef Templates* T = &self.tpl
    cdef H2Engine* h = &self.h2
    cdef Tpl* tp = &T.tpl[request]
    cdef H2Part* p
    cdef nghttp2_nv* nv
    cdef int64_t row[MAX_TABLES]
    cdef int64_t seq = T.seq, n, off = 0
    cdef int closed = T.closed, rc, i
    cdef char* out = T.block + <int64_t>si * T.buf_size
    T.seq = s.seq
    T.closed = s.closed
    rc = tpl_rows(self, tp, row, now)
    T.seq = seq
    T.closed = closed
    if rc != 0:
        return -1
    for i in range(h.part_first[request], h.part_first[request] + h.part_count[request]):
        p = &h.parts[i]
        n = tpl_write(T, tp, row, p.lo, p.hi, out + off)
        if p.nv < 0:
            s.body = out + off
            s.body_len = n
        else:
            nv = &h.nva[h.nv_first[request] + p.nv]
            nv.value = <uint8_t*>(out + off)
            nv.valuelen = n
        off += n
    return 0


cdef int h2_submit(Engine self, int ci, int stage, int request, int64_t intended, int retried,
                   int64_t seq, int closed, int64_t now) noexcept:
    cdef H2Engine* h = &self.h2
    cdef H2Conn* hc = &h.conns[ci]
    cdef H2Stream* s
    cdef nghttp2_data_provider dp
    cdef int32_t si, sid
    hc.nfree -= 1
    si = hc.free_slots[hc.nfree]
    s = &h.slots[si]
    s.state = S_OPEN
    s.stage = stage
    s.request = request
    s.retried = retried
    s.status = 0
    s.got_response = 0
    s.peer_reset = 0
    s.intended_ns = intended
    s.sent_ns = now
    s.deadline_ns = deadline_after(self, now)
    s.body_sent = 0
    s.received = 0
    s.capture_len = 0
    s.grpc_status = -1
    s.grpc_prefix = 0
    s.grpc_left = 0
    s.grpc_bad = 0
    s.seq = seq
    s.closed = closed
    s.body = h.body[request]
    s.body_len = h.body_len[request]
    if h.part_count[request] > 0 and h2_expand(self, si, s, request, now) != 0:
        s.state = S_FREE
        hc.free_slots[hc.nfree] = si
        hc.nfree += 1
        return -1
    # The loop may sleep through responses (sleep_through_responses) only while a whole
    # connection's worth of them fits a socket buffer and no request body waits for a window.
    s.big = 1 if (s.body_len > 0 or h.response_max[request] < 0
                  or h.response_max[request] * h.streams > SMALL_RESPONSE_BYTES) else 0
    self.eventful += s.big
    dp.source.ptr = <void*>s
    dp.read_callback = h2_read_body
    sid = lf_ng.submit_request(hc.session, NULL, &h.nva[h.nv_first[request]],
                               h.nv_count[request], &dp if s.body_len > 0 else NULL,
                               <void*>s)
    if sid < 0:
        self.eventful -= s.big
        s.big = 0
        s.state = S_FREE
        hc.free_slots[hc.nfree] = si
        hc.nfree += 1
        return -1
    s.id = sid
    hc.active += 1
    h2_mark(self, ci)
    self.conns[ci].served += 1
    if self.conns[ci].served == self.requests_per_connection:
        # churn: the connection takes no more streams and closes once they are answered
        hc.draining = 1
    return 0


cdef void h2_pump(Engine self, int64_t now) noexcept:
    """Arrivals waiting for a stream (retries, closed-model turns) take the free ones first."""
    cdef H2Pending p
    cdef int ci
    while self.h2.pending_len > 0:
        ci = take_slot(self)
        if ci < 0:
            return
        p = self.h2.pending[self.h2.pending_head]
        self.h2.pending_head = (self.h2.pending_head + 1) % self.h2.pending_cap
        self.h2.pending_len -= 1
        h2_place(self, ci, p.stage, p.request, p.intended_ns, p.retried, p.seq, p.closed, now)


cdef void h2_done(Engine self, int stage, int request, int64_t intended, int64_t sent,
                  const char* capture, int capture_len, int outcome, int64_t end,
                  int64_t now) noexcept:
    """An arrival ended (finish's role): record it, and in a closed-model stage start the
    next one of its virtual user on whichever connection has a free stream."""
    cdef StagePlan* sp
    cdef int ci
    record_arrival(self, stage, request, intended, sent, capture, capture_len, outcome, end)
    self.inflight -= 1
    if stage != self.cur or self.stopping or self.cur >= self.nstages:
        return
    sp = &self.stages[stage]
    if sp.open_model or now >= self.t0 + sp.end_ns:
        return
    if outcome == O_CONNECT or self.h2.pacing:
        # the connection backs off; the stage's fill (advance) brings the user back
        self.closed_active -= 1
    elif sp.think_ns > 0 or outcome >= O_CONNECT:
        # After a failure the user's next request waits for the next turn of the loop (its
        # think time, or none): never sent from inside the session that just failed one,
        # which could fail it again at once, and again, without the loop ever turning.
        self.think_conn[(self.think_head + self.think_len) % self.nthink] = -1
        self.think_at[(self.think_head + self.think_len) % self.nthink] = now + sp.think_ns
        self.think_len += 1
    else:
        ci = take_slot(self)
        if ci < 0:
            self.closed_active -= 1
        else:
            self.closed_arrival(ci, now)


cdef inline void h2_settle(Engine self, H2Stream* s, int outcome) noexcept:
    """s leaves S_OPEN: it no longer keeps the loop watching sockets, and a response teaches
    how big its request's responses are."""
    s.state = S_ENDED
    self.eventful -= s.big
    s.big = 0
    if (outcome < O_CONNECT or outcome >= O_GRPC) \
            and s.received > self.h2.response_max[s.request]:
        self.h2.response_max[s.request] = s.received


cdef inline void h2_stream_done(Engine self, H2Stream* s, int outcome, int64_t end,
                                int64_t now) noexcept:
    if s.state != S_OPEN:
        return
    h2_settle(self, s, outcome)
    h2_done(self, s.stage, s.request, s.intended_ns, s.sent_ns, s.capture, s.capture_len,
            outcome, end, now)


cdef void h2_unprocessed(Engine self, H2Stream* s, int outcome, int64_t now) noexcept:
    """The server did not process s (above a GOAWAY's last stream, or REFUSED_STREAM): send it
    once more on a connection that will take it, as h2load and browsers do; a second refusal
    is counted under `outcome`."""
    cdef H2Pending* p
    if s.state != S_OPEN:
        return
    if s.retried or self.stopping:
        h2_stream_done(self, s, outcome, now, now)
        return
    if self.h2.pending_len == self.h2.pending_cap:
        h2_stream_done(self, s, outcome, now, now)
        return
    h2_settle(self, s, O_GOAWAY)
    self.retries += 1
    p = &self.h2.pending[(self.h2.pending_head + self.h2.pending_len) % self.h2.pending_cap]
    p.stage = s.stage
    p.request = s.request
    p.retried = 1
    p.intended_ns = s.intended_ns
    p.seq = s.seq
    p.closed = s.closed
    self.h2.pending_len += 1


cdef inline void h2_release(H2Engine* h, H2Conn* hc, H2Stream* s) noexcept:
    """The session closed the stream: its slot is free again."""
    s.state = S_FREE
    s.id = 0
    hc.active -= 1
    hc.free_slots[hc.nfree] = <int32_t>(s - h.slots)
    hc.nfree += 1


# -- reading (nghttp2's callbacks) ---------------------------------------------------------

cdef int h2_on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                      void* user_data) noexcept:
    cdef H2Conn* hc = <H2Conn*>user_data
    cdef Engine self
    cdef H2Stream* s
    cdef int status
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    s = <H2Stream*>lf_ng.get_stream_user_data(session, frame.hd.stream_id)
    if s == NULL or s.state != S_OPEN:
        return 0
    s.received += namelen + valuelen
    if namelen == 7 and memcmp(name, b":status", 7) == 0:
        if valuelen == 3:
            status = (value[0] - 48) * 100 + (value[1] - 48) * 10 + (value[2] - 48)
            # as over HTTP/1.1, a status past 599 is no status: the stream is a protocol error
            if 100 <= status <= 599:
                s.status = status
        return 0
    self = <Engine>hc.engine
    if namelen == 11 and self.h2.grpc[s.request] and memcmp(name, b"grpc-status", 11) == 0:
        s.grpc_status = grpc_code(value, valuelen)
        return 0
    if self.names.length[H_CAPTURE] > 0 and namelen == <size_t>self.names.length[H_CAPTURE] \
            and memcmp(name, self.names.name[H_CAPTURE], namelen) == 0:
        if valuelen > CAPTURE_MAX:
            valuelen = CAPTURE_MAX
        memcpy(s.capture, value, valuelen)
        s.capture_len = <int>valuelen
    return 0


cdef int h2_on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame,
                          void* user_data) noexcept:
    cdef H2Conn* hc = <H2Conn*>user_data
    cdef H2Stream* s
    cdef Engine self
    cdef uint32_t limit
    if frame.hd.type == NGHTTP2_HEADERS:
        s = <H2Stream*>lf_ng.get_stream_user_data(session, frame.hd.stream_id)
        if s != NULL:
            s.got_response = 1
            if not hc.answered:
                hc.answered = 1
                (<Engine>hc.engine).conns[hc.ci].backoff_ns = 0
    elif frame.hd.type == NGHTTP2_SETTINGS and not (frame.hd.flags & NGHTTP2_FLAG_ACK):
        # A lower SETTINGS_MAX_CONCURRENT_STREAMS, mid-run too: no new stream until the
        # connection is under it again (nghttp2 acknowledged it already).
        self = <Engine>hc.engine
        limit = lf_ng.get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        hc.limit = self.h2.streams if limit > <uint32_t>self.h2.streams else <int>limit
        if limit == 0 and not hc.zero_noted:
            # The server takes no stream at all (RFC 9113 allows it): said in the summary,
            # and what waits on this connection times out.
            hc.zero_noted = 1
            self.h2.zero_streams += 1
    elif frame.hd.type == NGHTTP2_RST_STREAM:
        s = <H2Stream*>lf_ng.get_stream_user_data(session, frame.hd.stream_id)
        if s != NULL:
            s.peer_reset = 1
    elif frame.hd.type == NGHTTP2_GOAWAY:
        # nghttp2 closes the streams above last_stream_id right after this, REFUSED_STREAM
        hc.goaway = 1
        hc.goaway_last = frame.goaway.last_stream_id
    return 0


cdef int h2_on_data_chunk(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                          const uint8_t* data, size_t length, void* user_data) noexcept:
    cdef H2Conn* hc = <H2Conn*>user_data
    cdef H2Stream* s = <H2Stream*>lf_ng.get_stream_user_data(session, stream_id)
    if s != NULL:
        s.received += length
        if s.state == S_OPEN and (<Engine>hc.engine).h2.grpc[s.request]:
            grpc_walk(s, data, length)
    return 0


cdef inline int grpc_code(const uint8_t* value, size_t n) noexcept:
    """grpc-status as a code: a decimal number; one above 16 is UNKNOWN (2), as gRPC's own
    clients read it; -2 when it is not a number."""
    cdef size_t i
    cdef int code = 0
    if n == 0 or n > 3:
        return -2 if n == 0 or value[0] < 48 or value[0] > 57 else 2
    for i in range(n):
        if value[i] < 48 or value[i] > 57:
            return -2
        code = code * 10 + (value[i] - 48)
    return code if code < GRPC_CODES else 2


cdef inline void grpc_walk(H2Stream* s, const uint8_t* data, size_t length) noexcept:
    """Follow a gRPC response body through its length-prefixed messages (a compressed flag
    byte, a 4-byte big-endian length, the message), without keeping any of it: the stream
    must end on a message boundary, each flag 0 or 1."""
    cdef size_t i = 0, take
    while i < length:
        if s.grpc_left > 0:
            take = length - i
            if take > s.grpc_left:
                take = s.grpc_left
            s.grpc_left -= <uint32_t>take
            i += take
            continue
        if s.grpc_prefix == 0:
            if data[i] > 1:
                s.grpc_bad = 1
            s.grpc_len = 0
        else:
            s.grpc_len = (s.grpc_len << 8) | data[i]
        s.grpc_prefix += 1
        i += 1
        if s.grpc_prefix == 5:
            s.grpc_prefix = 0
            s.grpc_left = s.grpc_len


cdef int h2_on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                            void* user_data) noexcept:
    cdef H2Conn* hc = <H2Conn*>user_data
    cdef Engine self = <Engine>hc.engine
    cdef H2Stream* s = <H2Stream*>lf_ng.get_stream_user_data(session, stream_id)
    cdef int64_t now = self.h2.now_ns, end = now
    cdef int outcome
    if s == NULL or s.state == S_FREE:
        return 0
    if s.state != S_OPEN:
        h2_release(&self.h2, hc, s)
        return 0
    if error_code == NGHTTP2_REFUSED_STREAM and not s.got_response \
            and (s.peer_reset or (hc.goaway and stream_id > hc.goaway_last)):
        h2_unprocessed(self, s, O_GOAWAY if hc.goaway and stream_id > hc.goaway_last
                       else O_STREAM_RESET, now)
        h2_release(&self.h2, hc, s)
        return 0
    if error_code == NGHTTP2_NO_ERROR and s.status >= 100:
        self.probe_status = s.status
        outcome = response_outcome(self.req_expect[s.request], s.status)
        end = self.h2.rx_ns if self.h2.rx_ns > s.sent_ns else s.sent_ns
        if self.h2.grpc[s.request]:
            outcome = grpc_outcome(s, outcome)
    elif error_code == NGHTTP2_FLOW_CONTROL_ERROR:
        outcome = O_FLOW_CONTROL
    elif error_code == NGHTTP2_NO_ERROR or not s.peer_reset:
        # no status, or a response nghttp2 found malformed (it reset the stream itself)
        outcome = O_PROTOCOL
    else:
        outcome = O_STREAM_RESET
    # The slot is free before the outcome is recorded, so that a closed-model user's next
    # request can take it at once (h2_done records from the slot before anything reuses it).
    h2_settle(self, s, outcome)
    h2_release(&self.h2, hc, s)
    h2_done(self, s.stage, s.request, s.intended_ns, s.sent_ns, s.capture, s.capture_len,
            outcome, end, now)
    return 0


cdef inline int grpc_outcome(H2Stream* s, int http_outcome) noexcept:
    """A gRPC call's outcome once its stream ended cleanly: its grpc-status (trailers, or the
    headers of a trailers-only response); without one, a non-200 answer keeps its status
    class (a proxy's 502) and a 200 is a protocol error (no trailers), as is a status that is
    not a number or a body that does not end on a message boundary."""
    if s.grpc_status == -1:
        return O_PROTOCOL if s.status == 200 else http_outcome
    if s.grpc_status < 0 or s.grpc_bad or s.grpc_prefix != 0 or s.grpc_left != 0:
        return O_PROTOCOL
    return O_GRPC + s.grpc_status


cdef ssize_t h2_read_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf,
                          size_t length, uint32_t* data_flags, nghttp2_data_source* source,
                          void* user_data) noexcept:
    """The request body of a stream, as flow control lets it out."""
    cdef H2Stream* s = <H2Stream*>source.ptr
    cdef int64_t left = s.body_len - s.body_sent
    if <int64_t>length > left:
        length = left
    memcpy(buf, s.body + s.body_sent, length)
    s.body_sent += length
    if s.body_sent >= s.body_len:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
    return length
