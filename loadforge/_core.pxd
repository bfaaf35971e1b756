# cython: language_level=3
# The engine's data: connection table, response parser, histograms. Declared before the
# implementation so the layout of the hot path can be read in one place.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from loadforge._system cimport epoll_event, sockaddr_storage, socklen_t


cdef enum ParseState:
    P_STATUS            # "HTTP/1.x NNN", byte by byte
    P_STATUS_REST       # reason phrase, up to LF
    P_LINE_START        # start of a header line, or the blank line ending the headers
    P_HEADERS_LF        # CR of the blank line seen, LF expected
    P_NAME
    P_VALUE
    P_SKIP_NAME         # the name of a header nobody asked for, up to its colon
    P_SKIP_LINE         # the rest of a header line nobody asked for
    P_BODY_LENGTH
    P_BODY_EOF          # no length, not chunked: the body ends when the server closes
    P_CHUNK_SIZE
    P_CHUNK_EXT
    P_CHUNK_DATA
    P_CHUNK_DATA_CR
    P_CHUNK_DATA_LF
    P_TRAILER_START
    P_TRAILER_SKIP
    P_TRAILER_LF
    P_DONE
    P_ERROR


cdef enum:             # header ids, bit positions in Parser.candidates
    H_CONTENT_LENGTH = 0
    H_TRANSFER_ENCODING = 1
    H_CONNECTION = 2
    H_CAPTURE = 3       # optional header whose value is captured (backend attribution)
    H_NONE = 4


cdef enum:
    N_HEADERS = 4
    CAPTURE_MAX = 48
    MAX_BACKENDS = 63    # distinct values of the captured header; more go to slot 0
    MAX_HEADER_BYTES = 65536


cdef struct Parser:
    int state
    int status
    int pos              # position in the status line or header name
    uint32_t candidates  # bit per HeaderId still matching the current name
    int header           # HeaderId of the value being read
    int vmatch           # progress matching "chunked" / "close" inside a value
    int digits
    int head             # response to HEAD: headers only
    int minor            # HTTP/1.minor: 1.0 closes unless the server says keep-alive
    int chunked          # Transfer-Encoding's last token so far is "chunked"
    int te_present       # a Transfer-Encoding with at least one token
    int conn_close       # Connection lists "close"
    int conn_keep        # Connection lists "keep-alive"
    uint32_t tmask       # tokens the current list element may still be (bit per token)
    int tws              # whitespace seen after the current element's first byte
    int close            # the connection ends with this response (known after the head)
    int64_t content_length   # -1 when absent
    int64_t remaining
    int64_t header_bytes
    int64_t received
    int capture_len
    char capture[CAPTURE_MAX]


cdef struct HeaderNames:
    const char* name[N_HEADERS]   # lower case
    int length[N_HEADERS]


cdef enum Outcome:
    O_1XX
    O_2XX
    O_3XX
    O_4XX
    O_5XX
    O_CONNECT
    O_TIMEOUT
    O_RESET
    O_PROTOCOL
    N_OUTCOMES


cdef enum ConnState:
    C_CLOSED
    C_CONNECTING
    C_IDLE
    C_BUSY               # request being written or response awaited
    C_BACKOFF            # closed: its last connect failed, the next waits until retry_at_ns


cdef struct Conn:
    int fd
    int state
    int has_arrival
    int want_write       # EPOLLOUT registered for a partial write
    int in_idle          # on the idle stack
    int in_closed        # on the closed stack
    int fresh            # the request went out on a connection opened for it
    int retried          # the arrival was already retried once on a new connection
    int big              # counted in Engine.eventful: its response may not fit a socket buffer
    int write_failed     # send failed: what the server sent before closing is still read
    int peer_closed      # the server ended the connection (close, reset, Connection: close)
    int32_t served       # responses this connection carried (requests_per_connection)
    int32_t request
    int32_t stage
    int64_t intended_ns
    int64_t sent_ns
    int64_t deadline_ns
    int64_t written
    int64_t backoff_ns   # delay before the next connect after a failed one; 0 once connected
    int64_t retry_at_ns
    int64_t last_rx_ns   # receive timestamp of the latest bytes of a body that ends at close
    int64_t connect_ns   # when connect() was called: the connect time ends when it completes
    Parser parser


# HdrHistogram layout for lowest 1, highest 3_600_000_000 (1 h in µs), 3 significant digits.
cdef enum:
    HDR_SUB_BUCKET_HALF_COUNT_MAGNITUDE = 10
    HDR_SUB_BUCKET_HALF_COUNT = 1024
    HDR_SUB_BUCKET_MASK = 2047
    HDR_COUNTS_LEN = 23552


# A histogram's counts are chunks of HDR_CHUNK_LEN counters from the engine's arena, taken on
# first use in an interval and given back when the interval is flushed: a cell costs memory for
# the value ranges it saw in the current interval, not 2 x 92 KiB for every range it could.
cdef enum:
    HDR_CHUNK_SHIFT = 8
    HDR_CHUNK_LEN = 256
    HDR_CHUNK_MASK = 255
    HDR_NCHUNKS = 92          # HDR_COUNTS_LEN / HDR_CHUNK_LEN
    ARENA_BLOCK_SHIFT = 8     # 256 chunks (256 KiB) per block the arena grows by
    ARENA_BLOCK_CHUNKS = 256


cdef struct Arena:
    uint32_t** blocks    # each ARENA_BLOCK_CHUNKS x HDR_CHUNK_LEN zeroed counters
    int nblocks
    int32_t* free_ids    # chunk ids (1-based) not in use
    int nfree


cdef struct Hist:
    int32_t chunk[HDR_NCHUNKS]   # arena chunk id per range of counters, 0 when none
    int32_t lo           # touched index range, lo > hi when empty
    int32_t hi
    uint64_t total
    int64_t min_value
    int64_t max_value


cdef struct Cell:
    Hist latency
    Hist service
    uint64_t count
    int touched          # recorded in the current interval
    int32_t stage
    int32_t request
    int32_t outcome
    int32_t backend      # slot in the engine's backend table, 0 when not attributed


cdef struct StagePlan:
    int open_model
    double rate_from
    double rate_to
    double duration_s
    int64_t start_ns     # offset from the run's start
    int64_t end_ns
    int64_t arrivals     # all workers together (open model)
    int64_t base         # global index of the stage's first arrival
    int concurrency      # this worker's share (closed model)
    int64_t think_ns


cdef struct StageCounters:
    uint64_t scheduled   # arrivals due in the interval (this worker's stripe)
    uint64_t sent
    uint64_t unsent      # due but never sent by the stage's end
    # Why sends were late (open model), to name the cause of unsent arrivals: `waited` were
    # sent after waiting for a free connection, `late` were sent LATE_SEND_NS or more after
    # their time on a connection that was free, i.e. the loop itself was late (short of CPU).
    uint64_t waited
    uint64_t late
