# Included by loadforge/_core.pyx: the recorder's histograms and the arena their counts live in.

# ---------------------------------------------------------------------------------------------
# HdrHistogram counts, recorded in C. Index arithmetic of HdrHistogram_c for unit magnitude 0.

cdef inline int32_t hdr_counts_index(int64_t value) noexcept nogil:
    cdef int bucket = 64 - __builtin_clzll(<unsigned long long>(value | HDR_SUB_BUCKET_MASK)) \
        - (HDR_SUB_BUCKET_HALF_COUNT_MAGNITUDE + 1)
    cdef int64_t sub = value >> bucket
    return <int32_t>(((bucket + 1) << HDR_SUB_BUCKET_HALF_COUNT_MAGNITUDE)
                     + (sub - HDR_SUB_BUCKET_HALF_COUNT))


def hdr_index(int64_t value):
    """Counts-array index of a value, as HdrHistogram lays it out (tests compare with hdrh)."""
    return hdr_counts_index(value)


def hdr_walk(const unsigned long long[::1] counts, Py_ssize_t limit, list targets,
             int unit_magnitude, int half_magnitude):
    """One pass over an hdrh counts array (uint64) up to index `limit`, for
    `histogram.stats`: for each cumulative count in `targets` (ascending), the highest
    equivalent value of the bucket that reaches it; and the sum of count x bucket midpoint
    (hdrh's mean). Same definitions as hdrh, at C speed: a busy histogram has thousands of
    nonzero buckets and is walked for every Parquet row."""
    cdef Py_ssize_t i, t = 0, ntargets = len(targets)
    cdef int64_t half = 1 << half_magnitude
    cdef int64_t bucket, sub, lowest, size
    cdef unsigned long long c, cumulative = 0
    cdef double weighted = 0.0
    cdef list values = [0] * ntargets
    cdef unsigned long long next_target = targets[0] if ntargets else 0
    if limit > counts.shape[0]:
        limit = counts.shape[0]
    for i in range(limit):
        c = counts[i]
        if c == 0:
            continue
        bucket = (i >> half_magnitude) - 1
        sub = (i & (half - 1)) + half
        if bucket < 0:
            sub -= half
            bucket = 0
        lowest = sub << (bucket + unit_magnitude)
        size = (<int64_t>1) << (bucket + unit_magnitude)
        cumulative += c
        weighted += <double>c * <double>(lowest + (size >> 1))
        while t < ntargets and cumulative >= next_target:
            values[t] = lowest + size - 1
            t += 1
            if t < ntargets:
                next_target = targets[t]
    return values, weighted


cdef inline uint32_t* arena_chunk(Arena* a, int32_t id) noexcept nogil:
    id -= 1
    return a.blocks[id >> ARENA_BLOCK_SHIFT] + (id & (ARENA_BLOCK_CHUNKS - 1)) * HDR_CHUNK_LEN


cdef int arena_grow(Arena* a) noexcept nogil:
    """One more block of chunks; 0 when no memory is left. The arena's size follows the most
    chunks that any one interval used, however long the run."""
    cdef uint32_t** blocks
    cdef uint32_t* block
    cdef int32_t* ids
    cdef int i
    block = <uint32_t*>calloc(ARENA_BLOCK_CHUNKS * HDR_CHUNK_LEN, sizeof(uint32_t))
    blocks = <uint32_t**>realloc(a.blocks, (a.nblocks + 1) * sizeof(uint32_t*))
    if blocks != NULL:
        a.blocks = blocks
    ids = <int32_t*>realloc(a.free_ids, (a.nblocks + 1) * ARENA_BLOCK_CHUNKS * sizeof(int32_t))
    if ids != NULL:
        a.free_ids = ids
    if block == NULL or blocks == NULL or ids == NULL:
        free(block)
        return 0
    a.blocks[a.nblocks] = block
    for i in range(ARENA_BLOCK_CHUNKS - 1, -1, -1):
        a.free_ids[a.nfree] = a.nblocks * ARENA_BLOCK_CHUNKS + i + 1
        a.nfree += 1
    a.nblocks += 1
    return 1


cdef inline int32_t arena_take(Arena* a) noexcept nogil:
    """A zeroed chunk's id, or 0 when no memory is left."""
    if a.nfree == 0 and not arena_grow(a):
        return 0
    a.nfree -= 1
    return a.free_ids[a.nfree]


cdef inline int hist_record(Arena* a, Hist* h, int64_t value) noexcept nogil:
    """Count one value; -1 (nothing counted) when no memory was left for its chunk."""
    cdef int32_t i, c
    if value < 0:
        value = 0
    elif value > HDR_HIGHEST:
        value = HDR_HIGHEST
    i = hdr_counts_index(value)
    c = h.chunk[i >> HDR_CHUNK_SHIFT]
    if c == 0:
        c = arena_take(a)
        if c == 0:
            return -1
        h.chunk[i >> HDR_CHUNK_SHIFT] = c
    arena_chunk(a, c)[i & HDR_CHUNK_MASK] += 1
    if i < h.lo:
        h.lo = i
    if i > h.hi:
        h.hi = i
    if h.total == 0 or value < h.min_value:
        h.min_value = value
    if value > h.max_value:
        h.max_value = value
    h.total += 1
    return 0


cdef void hist_copy_clear(Arena* a, Hist* h, uint32_t* out) noexcept nogil:
    """Write counts lo..hi to out (when not NULL), give the chunks back zeroed, and clear."""
    cdef int32_t k, c, first, last
    cdef uint32_t* counts
    if h.lo <= h.hi:
        for k in range(h.lo >> HDR_CHUNK_SHIFT, (h.hi >> HDR_CHUNK_SHIFT) + 1):
            c = h.chunk[k]
            first = k << HDR_CHUNK_SHIFT
            last = first + HDR_CHUNK_LEN - 1
            if first < h.lo:
                first = h.lo
            if last > h.hi:
                last = h.hi
            if c == 0:
                if out != NULL:
                    memset(out + first - h.lo, 0, (last - first + 1) * sizeof(uint32_t))
                continue
            counts = arena_chunk(a, c)
            if out != NULL:
                memcpy(out + first - h.lo, counts + (first & HDR_CHUNK_MASK),
                       (last - first + 1) * sizeof(uint32_t))
            memset(counts, 0, HDR_CHUNK_LEN * sizeof(uint32_t))
            h.chunk[k] = 0
            a.free_ids[a.nfree] = c
            a.nfree += 1
    hist_clear(h)


cdef inline void hist_clear(Hist* h) noexcept nogil:
    h.lo = HDR_COUNTS_LEN
    h.hi = -1
    h.total = 0
    h.min_value = 0
    h.max_value = 0
