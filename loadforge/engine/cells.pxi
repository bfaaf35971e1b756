# Included by loadforge/_core.pyx: the recorder's cells. Each outcome is counted in the cell of
# its (stage, request, outcome, backend) with its latency and service time; once an interval
# the touched cells are flushed to Python in one payload laid out as loadforge/engine/wire.pxd
# says, and cleared.


cdef inline int backend_slot(Engine self, const char* capture, int capture_len) noexcept:
    cdef int i
    if capture_len == 0:
        return 0
    for i in range(1, self.nbackends + 1):
        if self.backend_len[i] == capture_len and \
                memcmp(self.backend_name[i], capture, capture_len) == 0:
            return i
    if self.nbackends == MAX_BACKENDS:
        return 0
    self.nbackends += 1
    memcpy(self.backend_name[self.nbackends], capture, capture_len)
    self.backend_len[self.nbackends] = capture_len
    return self.nbackends


cdef inline void record(Engine self, Conn* c, int outcome, int64_t now) noexcept:
    record_arrival(self, c.stage, c.request, c.intended_ns, c.sent_ns, c.parser.capture,
                   c.parser.capture_len, outcome, now)


cdef void record_arrival(Engine self, int stage, int request, int64_t intended_ns,
                         int64_t sent_ns, const char* capture, int capture_len, int outcome,
                         int64_t now) noexcept:
    """Count one arrival's outcome at `now`; HTTP/1.1 connections and HTTP/2 streams alike."""
    cdef int slot = 0
    cdef int index
    cdef Cell* cell
    if self.nslots > 1 and (outcome < O_CONNECT or outcome >= O_GRPC):
        slot = backend_slot(self, capture, capture_len)
    index = ((stage * self.nreq + request) * N_OUTCOMES + outcome) * self.nslots + slot
    cell = self.cells[index]
    if cell == NULL:
        # First use of this (stage, request, outcome, backend): the only allocation the
        # recording path ever makes, bounded by the number of such combinations.
        cell = <Cell*>calloc(1, sizeof(Cell))
        if cell == NULL:
            self.dropped += 1
            return
        hist_clear(&cell.latency)
        hist_clear(&cell.service)
        cell.stage = stage
        cell.request = request
        cell.outcome = outcome
        cell.backend = slot
        self.cells[index] = cell
    if not cell.touched:
        cell.touched = 1
        self.touched[self.ntouched] = index
        self.ntouched += 1
    # Each of the two values needs at most one new chunk: with two free, neither can fail.
    if self.arena.nfree < 2 and not arena_grow(&self.arena):
        self.dropped += 1
        return
    hist_record(&self.arena, &cell.latency, (now - intended_ns) // 1000)
    hist_record(&self.arena, &cell.service, (now - sent_ns) // 1000)
    cell.count += 1


cdef inline char* wire_hist(Engine self, Hist* h, char* out) noexcept:
    """Write h as a WireHist and its counts at out, clear it; the position after them."""
    cdef WireHist* w = <WireHist*>out
    cdef int n = h.hi - h.lo + 1 if h.lo <= h.hi else 0
    w.lo = h.lo if n else 0
    w.n = n
    w.total = h.total
    w.min_value = h.min_value
    w.max_value = h.max_value
    out += sizeof(WireHist)
    hist_copy_clear(&self.arena, h, <uint32_t*>out if n else NULL)
    return out + n * 4


cdef int flush(Engine self, int final) except -1:
    """Hand the interval's counts to Python as one bytes object (engine/wire.pxd), then clear
    them."""
    cdef Py_ssize_t size = sizeof(WireHeader) + sizeof(WireStage) * self.nstages \
        + sizeof(WireBackend) * self.nbackends + sizeof(WireTrailer) + sizeof(WireHist) \
        + sizeof(WireTls) + sizeof(WireHist)
    cdef Hist* ct = &self.connect_time
    cdef Hist* ht = &self.tls_time
    cdef WireTls* tls
    cdef int i, open_conns = 0
    cdef Cell* cell
    cdef char* out
    cdef WireHeader* header
    cdef WireStage* stage
    cdef WireBackend* backend
    cdef WireCell* wcell
    cdef WireTrailer* trailer
    if ct.lo <= ct.hi:
        size += (ct.hi - ct.lo + 1) * 4
    if ht.lo <= ht.hi:
        size += (ht.hi - ht.lo + 1) * 4
    for i in range(self.ntouched):
        cell = self.cells[self.touched[i]]
        size += sizeof(WireCell) + 2 * sizeof(WireHist)
        if cell.latency.lo <= cell.latency.hi:
            size += (cell.latency.hi - cell.latency.lo + 1) * 4
        if cell.service.lo <= cell.service.hi:
            size += (cell.service.hi - cell.service.lo + 1) * 4
    for i in range(self.nconns):
        if self.conns[i].fd >= 0:
            open_conns += 1
    payload = PyBytes_FromStringAndSize(NULL, size)
    out = PyBytes_AS_STRING(payload)
    header = <WireHeader*>out
    header.magic = WIRE_MAGIC
    header.version = WIRE_VERSION
    header.final = final
    header.worker = self.worker
    header.nstages = self.nstages
    header.interval = self.interval_index
    header.ncells = self.ntouched
    header.nbackends = self.nbackends
    header.connects = self.connects
    header.connect_failures = self.connect_failures
    out += sizeof(WireHeader)
    for i in range(self.nstages):
        stage = <WireStage*>out
        stage.scheduled = self.counters[i].scheduled
        stage.sent = self.counters[i].sent
        stage.unsent = self.counters[i].unsent
        stage.waited = self.counters[i].waited
        stage.late = self.counters[i].late
        self.counters[i].scheduled = 0
        self.counters[i].sent = 0
        self.counters[i].unsent = 0
        self.counters[i].waited = 0
        self.counters[i].late = 0
        out += sizeof(WireStage)
    for i in range(1, self.nbackends + 1):
        backend = <WireBackend*>out
        backend.length = self.backend_len[i]
        memcpy(backend.name, self.backend_name[i], CAPTURE_MAX)
        out += sizeof(WireBackend)
    for i in range(self.ntouched):
        cell = self.cells[self.touched[i]]
        wcell = <WireCell*>out
        wcell.stage = cell.stage
        wcell.request = cell.request
        wcell.outcome = cell.outcome
        wcell.backend = cell.backend
        wcell.count = cell.count
        out = wire_hist(self, &cell.latency, out + sizeof(WireCell))
        out = wire_hist(self, &cell.service, out)
        cell.count = 0
        cell.touched = 0
    trailer = <WireTrailer*>out
    trailer.retried = self.retries
    trailer.dropped = self.dropped
    trailer.closed_by_server = self.closed_by_server
    trailer.closed_by_us = self.closed_by_us
    out = wire_hist(self, ct, out + sizeof(WireTrailer))
    tls = <WireTls*>out
    tls.full = self.transport.tls_full
    tls.resumed = self.transport.tls_resumed
    tls.failed = self.transport.tls_failed
    wire_hist(self, ht, out + sizeof(WireTls))
    self.ntouched = 0
    self.interval_index += 1
    try:
        self.on_interval(payload, open_conns, self.inflight)
    except BaseException as exc:
        self._error = exc
        self.request_stop(monotonic_ns())
    return 0


# The wire format's identity and record sizes, checked against loadforge/run/wire.py by its test.
WIRE_FORMAT = {
    "magic": WIRE_MAGIC,
    "version": WIRE_VERSION,
    "header": sizeof(WireHeader),
    "stage": sizeof(WireStage),
    "backend": sizeof(WireBackend),
    "cell": sizeof(WireCell),
    "hist": sizeof(WireHist),
    "trailer": sizeof(WireTrailer),
    "tls": sizeof(WireTls),
}
