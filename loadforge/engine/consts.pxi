# Included by loadforge/_core.pyx: constants shared by every part of the engine.

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil


cdef enum:
    RECV_BUFFER_SIZE = 65536
    MAX_EVENTS = 512                   # the least room for events (Engine.max_events)
    CONTROL_TAG = 0x7fffffff
    CMSG_BUFFER_WORDS = 8              # 64 bytes: one SCM_TIMESTAMPNS takes CMSG_SPACE(16) = 32
    SCAN_PERIOD_NS = 10000000          # timeouts are checked every 10 ms
    # A send this late on a free connection means the loop, not the target, held it back:
    # far above the timer resolution and the scheduling jitter of a busy machine.
    LATE_SEND_NS = 10000000
    BACKOFF_FIRST_NS = 1000000         # a slot whose connect failed waits 1 ms, then 2, 4, ...
    BACKOFF_MAX_NS = 1000000000        # ... up to 1 s between attempts
    # A response up to this size fits the receive buffer of a fresh loopback socket, so the
    # server never waits for the loop to read it and its last segment's timestamp is exact.
    # Requests whose responses were bigger keep the loop woken by their bytes.
    SMALL_RESPONSE_BYTES = 32768
    MAX_READS_PER_EVENT = 32           # 2 MiB per connection per turn of the loop

cdef int64_t HDR_HIGHEST = 3600000000  # 1 h in µs
cdef int64_t NEVER = 0x7fffffffffffffff
cdef const char* STATUS_PREFIX = "HTTP/1."
cdef const char* TOKEN_CHUNKED = "chunked"
cdef const char* TOKEN_CLOSE = "close"
cdef const char* TOKEN_KEEP_ALIVE = "keep-alive"

HDR_COUNTS = HDR_COUNTS_LEN
OUTCOME_COUNT = N_OUTCOMES
