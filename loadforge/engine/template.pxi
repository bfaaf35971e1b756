# Included by loadforge/_core.pyx: feeders and request templates (engine/template.pxd).
# loadforge/config/feeders.py compiles them before the run: each feeder into one table (an
# offsets table and one data buffer, memory-mapped when large), each templated request into
# segments. When an arrival starts, its row of each table follows from its index in the
# run-wide arrival sequence, and the request is assembled into the connection's buffer,
# allocated once: no Python and no allocation per request. A fixed request is sent from its
# pre-encoded bytes as before. Over HTTP/2 the same segment walk (tpl_write) fills a stream
# slot's buffer with the request's templated values (engine/http2.pxi h2_expand).


cdef inline uint64_t splitmix64(uint64_t x) noexcept nogil:
    x += <uint64_t>0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * <uint64_t>0x94D049BB133111EB
    return x ^ (x >> 31)


cdef inline int64_t feed_row(FeedTable* t, int64_t index) noexcept nogil:
    """The row feeder index `index` takes; -1 once a `unique` feeder is spent (feeders.row_for
    is the same function in Python)."""
    if t.order == ORDER_UNIQUE:
        return index if index < t.rows else -1
    if t.order == ORDER_RANDOM:
        return <int64_t>(splitmix64(t.seed * <uint64_t>0x9E3779B97F4A7C15
                                    + <uint64_t>index) % <uint64_t>t.rows)
    return index % t.rows


cdef inline int64_t feed_index(Engine self, FeedTable* t) noexcept:
    """Feeder index of the arrival about to start: its rank among the arrivals, all workers
    together, of the requests that take this table's rows. The open model's run-wide index
    fixes it whatever the worker count; a closed-model stage's follow the open ones',
    interleaved by worker."""
    cdef int64_t s = self.tpl.seq
    cdef int64_t local = (s // self.mix_len) * t.per_cycle + t.rank[s % self.mix_len]
    if not self.tpl.closed:
        return local
    return t.open_rows + local * self.nworkers + self.worker


cdef inline int tpl_prepare(Engine self, int ci, int request, int64_t now) noexcept:
    """Point the connection's outgoing request at request `request` for the arrival
    self.tpl.seq; assembled into the connection's buffer when templated. Returns -1 when a
    `unique` feeder has no row left for it."""
    if self.tpl.tpl != NULL:
        if self.tpl.unique and tpl_spent(self, now):
            return -1
        if self.tpl.tpl[request].first >= 0:
            return tpl_assemble(self, ci, request, now)
    self.tpl.out[ci] = self.req_data[request]
    self.tpl.out_len[ci] = self.req_len[request]
    return 0


cdef int tpl_spent(Engine self, int64_t now) noexcept:
    """Whether a `unique` feeder's rows all went to earlier arrivals: then this arrival, and
    every later one, whichever request it sends, is past the end of the run. Every worker
    reaches that point at the same run-wide arrival (open model), including a worker whose
    stripe takes none of the feeder's rows; in the closed model, each at the end of its
    share (feeder indices interleave by worker)."""
    cdef Templates* T = &self.tpl
    cdef int i
    for i in range(T.ntables):
        if T.tables[i].order == ORDER_UNIQUE \
                and feed_index(self, &T.tables[i]) >= T.tables[i].rows:
            if not T.exhausted:
                T.exhausted = i + 1
                T.exhausted_at_ns = now
            return 1
    return 0


cdef int tpl_rows(Engine self, Tpl* tp, int64_t* row, int64_t now) noexcept:
    """The row of each table request template tp takes for the arrival self.tpl.seq, into
    row[table]; -1 when a `unique` feeder has none left for it."""
    cdef Templates* T = &self.tpl
    cdef int i
    for i in range(T.ntables):
        if tp.tables & (<uint64_t>1 << i):
            row[i] = feed_row(&T.tables[i], feed_index(self, &T.tables[i]))
            if row[i] < 0:
                if not T.exhausted:
                    T.exhausted = i + 1
                    T.exhausted_at_ns = now
                return -1
    return 0


cdef int64_t tpl_write(Templates* T, Tpl* tp, const int64_t* row, int lo, int hi,
                       char* out) noexcept:
    """Write segments lo..hi-1 (absolute indices into T.segs) of template tp, filled from the
    rows `row`, at `out`; returns the bytes written. The whole request for HTTP/1.1; one
    header value, or the body, for HTTP/2 (engine/http2.pxi h2_expand)."""
    cdef Seg* sg
    cdef FeedTable* ft
    cdef int64_t n = 0, k, a, body, v
    cdef int i, s, nd
    cdef char digits[24]
    for s in range(lo, hi):
        sg = &T.segs[s]
        if sg.kind == SEG_LITERAL:
            memcpy(out + n, T.pool + sg.off, sg.len)
            n += sg.len
        elif sg.kind == SEG_CELL:
            ft = &T.tables[sg.table]
            k = sg.view * ft.rows + row[sg.table]
            a = <int64_t>ft.offsets[k]
            memcpy(out + n, ft.data + a, <int64_t>ft.offsets[k + 1] - a)
            n += <int64_t>ft.offsets[k + 1] - a
        else:
            body = 0
            for i in range(tp.body_from, tp.first + tp.nseg):
                if T.segs[i].kind == SEG_LITERAL:
                    body += T.segs[i].len
                else:
                    ft = &T.tables[T.segs[i].table]
                    k = T.segs[i].view * ft.rows + row[T.segs[i].table]
                    body += <int64_t>(ft.offsets[k + 1] - ft.offsets[k])
            nd = 0
            v = body
            while True:
                digits[nd] = <char>(48 + v % 10)
                nd += 1
                v //= 10
                if v == 0:
                    break
            while nd > 0:
                nd -= 1
                out[n] = digits[nd]
                n += 1
    return n


cdef int tpl_assemble(Engine self, int ci, int request, int64_t now) noexcept:
    cdef Templates* T = &self.tpl
    cdef Tpl* tp = &T.tpl[request]
    cdef int64_t row[MAX_TABLES]
    cdef char* out
    if tpl_rows(self, tp, row, now) != 0:
        return -1
    out = T.block + <int64_t>ci * T.buf_size
    T.out[ci] = out
    T.out_len[ci] = tpl_write(T, tp, row, tp.first, tp.first + tp.nseg, out)
    return 0


cdef int tpl_setup(Engine self, list tables, list templates, int nbufs) except -1:
    """Build the tables (buffer objects: bytes, or read-only mmaps kept alive in self._keep)
    and the templates' segments; templates[i] is None or (segments, body_from, max_len).
    nbufs buffers of the largest expansion: one per connection (HTTP/1.1), one per stream
    slot (HTTP/2)."""
    cdef Templates* T = &self.tpl
    cdef const unsigned char[::1] view
    cdef FeedTable* ft
    cdef int i, j, p, r, nseg = 0
    cdef int64_t pool_len = 0, off = 0, total_open = 0, biggest = 0
    cdef int64_t start, data_start, nrows, nviews, size
    cdef const unsigned char* base
    cdef int32_t kind
    T.out = <const char**>calloc(self.nconns, sizeof(char*))
    T.out_len = <int64_t*>calloc(self.nconns, sizeof(int64_t))
    if T.out == NULL or T.out_len == NULL:
        raise MemoryError()
    if not templates or all(t is None for t in templates):
        return 0
    if len(templates) != self.nreq:
        raise ValueError("one template (or None) per request is needed")
    if len(tables) > MAX_TABLES:
        raise ValueError(f"at most {MAX_TABLES} feeders")
    T.ntables = len(tables)
    T.tables = <FeedTable*>calloc(max(1, T.ntables), sizeof(FeedTable))
    T.tpl = <Tpl*>calloc(self.nreq, sizeof(Tpl))
    if T.tables == NULL or T.tpl == NULL:
        raise MemoryError()
    for i in range(self.nstages):
        if self.stages[i].open_model:
            total_open += self.stages[i].arrivals
    for i, entry in enumerate(tables):
        buf = entry[0]
        start, data_start, nrows, nviews = entry[1], entry[2], entry[3], entry[4]
        view = buf
        self._keep.append(buf)
        self._keep.append(view)
        size = view.shape[0]
        if nrows < 1 or nviews < 1 or start % 8 or data_start > size \
                or start + 8 * (nrows * nviews + 1) > data_start:
            raise ValueError("a malformed feeder table")
        base = &view[0]
        ft = &T.tables[i]
        ft.offsets = <const uint64_t*>(base + start)
        ft.data = <const char*>(base + data_start)
        if ft.offsets[nrows * nviews] > <uint64_t>(size - data_start):
            raise ValueError("a truncated feeder table")
        ft.rows = nrows
        ft.views = <int32_t>nviews
        ft.order = <int32_t>entry[5]
        if ft.order == ORDER_UNIQUE:
            T.unique += 1
        ft.seed = <uint64_t>entry[6]
        ft.rank = <int64_t*>calloc(self.mix_len, sizeof(int64_t))
        if ft.rank == NULL:
            raise MemoryError()
    for r, t in enumerate(templates):
        if t is None:
            T.tpl[r].first = -1
            continue
        segs, body_from, max_len = t
        for seg in segs:
            if seg[0] == SEG_LITERAL:
                pool_len += len(seg[1])
            elif seg[0] == SEG_CELL:
                if not 0 <= seg[1] < T.ntables or not 0 <= seg[2] < T.tables[seg[1]].views:
                    raise ValueError("a template refers to an unknown feeder view")
                T.tpl[r].tables |= <uint64_t>1 << seg[1]
        nseg += len(segs)
        if max_len > biggest:
            biggest = max_len
    T.segs = <Seg*>calloc(max(1, nseg), sizeof(Seg))
    T.pool = <char*>malloc(max(1, pool_len))
    T.buf_size = biggest
    T.block = <char*>malloc(max(1, biggest * nbufs))
    if T.segs == NULL or T.pool == NULL or T.block == NULL:
        raise MemoryError()
    nseg = 0
    for r, t in enumerate(templates):
        if t is None:
            continue
        segs, body_from, max_len = t
        T.tpl[r].first = nseg
        T.tpl[r].nseg = len(segs)
        T.tpl[r].body_from = nseg + body_from
        T.tpl[r].max_len = max_len
        for seg in segs:
            kind = seg[0]
            T.segs[nseg].kind = kind
            if kind == SEG_LITERAL:
                T.segs[nseg].off = off
                T.segs[nseg].len = len(seg[1])
                memcpy(T.pool + off, <const char*>seg[1], len(seg[1]))
                off += len(seg[1])
            elif kind == SEG_CELL:
                T.segs[nseg].table = seg[1]
                T.segs[nseg].view = seg[2]
            nseg += 1
    # Ranks: which cycle positions take each table's rows, and how many before each.
    for i in range(T.ntables):
        ft = &T.tables[i]
        for p in range(self.mix_len):
            ft.rank[p] = ft.per_cycle
            if T.tpl[self.mix[p]].tables & (<uint64_t>1 << i):
                ft.per_cycle += 1
        ft.open_rows = (total_open // self.mix_len) * ft.per_cycle
        if total_open % self.mix_len:
            ft.open_rows += ft.rank[total_open % self.mix_len]
    return 0


cdef void tpl_free(Engine self) noexcept:
    cdef Templates* T = &self.tpl
    cdef int i
    if T.tables != NULL:
        for i in range(T.ntables):
            free(T.tables[i].rank)
    free(T.tables)
    free(T.tpl)
    free(T.segs)
    free(T.pool)
    free(T.block)
    free(<void*>T.out)
    free(T.out_len)
    T.tables = NULL
    T.tpl = NULL
    T.segs = NULL
    T.pool = NULL
    T.block = NULL
    T.out = NULL
    T.out_len = NULL
