# Declarations of the recorder: outcomes, histograms, the arena, cells (engine/recorder.pxi).

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t


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
    O_STREAM_RESET       # HTTP/2: the server reset the stream (RST_STREAM)
    O_GOAWAY             # HTTP/2: not processed before a GOAWAY, and already retried once
    O_FLOW_CONTROL       # HTTP/2: timed out with the request body held by a closed window
    # gRPC calls (HTTP/2 streams of content-type application/grpc): the call's grpc-status,
    # O_GRPC + code for codes 0 (OK) to 16 (UNAUTHENTICATED); responses, like the status classes
    O_GRPC
    O_GRPC_1             # CANCELLED
    O_GRPC_2             # UNKNOWN
    O_GRPC_3             # INVALID_ARGUMENT
    O_GRPC_4             # DEADLINE_EXCEEDED
    O_GRPC_5             # NOT_FOUND
    O_GRPC_6             # ALREADY_EXISTS
    O_GRPC_7             # PERMISSION_DENIED
    O_GRPC_8             # RESOURCE_EXHAUSTED
    O_GRPC_9             # FAILED_PRECONDITION
    O_GRPC_10            # ABORTED
    O_GRPC_11            # OUT_OF_RANGE
    O_GRPC_12            # UNIMPLEMENTED
    O_GRPC_13            # INTERNAL
    O_GRPC_14            # UNAVAILABLE
    O_GRPC_15            # DATA_LOSS
    O_GRPC_16            # UNAUTHENTICATED
    # A request with expect_status (config/outcomes.py): a status outside its set; a status in
    # its set whose class fail_status counts as errors. Responses, like the status classes.
    O_UNEXPECTED
    O_EXPECTED
    N_OUTCOMES

cdef enum:
    GRPC_CODES = 17
    EXPECT_WORDS = 11    # per request with expect_status: bits of statuses 0-639, fail classes

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
