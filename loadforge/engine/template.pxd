# Declarations of feeders and request templates (engine/template.pxi; compiled by
# loadforge/config/feeders.py).

from libc.stdint cimport int32_t, int64_t, uint64_t


cdef enum:
    MAX_TABLES = 64
    SEG_LITERAL = 0      # bytes of the literal pool
    SEG_CELL = 1         # the value of (table, view) in the arrival's row
    SEG_LENGTH = 2       # the body's length in decimal (the segments from body_from on)
    ORDER_SEQUENTIAL = 0
    ORDER_RANDOM = 1
    ORDER_UNIQUE = 2


cdef struct Seg:
    int32_t kind
    int32_t table
    int32_t view
    int64_t off          # literal: offset in the pool
    int64_t len


cdef struct Tpl:
    int32_t first        # first segment in Templates.segs; -1: a fixed request
    int32_t nseg
    int32_t body_from    # absolute index of the body's first segment
    int64_t max_len
    uint64_t tables      # bit per table whose rows it takes (tables 0..63)


cdef struct FeedTable:
    const char* data
    const uint64_t* offsets   # rows * views + 1, column-major (view v, row r: v * rows + r)
    int64_t rows
    int32_t views
    int32_t order
    uint64_t seed
    int64_t per_cycle    # positions of the request cycle whose request takes this table's rows
    int64_t* rank        # per cycle position: such positions before it
    int64_t open_rows    # feeder indices the open-model stages take, all workers together


cdef struct Templates:
    int ntables
    FeedTable* tables
    Tpl* tpl             # per request
    Seg* segs
    char* pool           # literals
    char* block          # per connection (HTTP/1.1) or stream slot (HTTP/2), buf_size bytes
    int64_t buf_size     # each: where its templated request (or HTTP/2 values) is assembled
    const char** out     # per connection: the request being sent (fixed or assembled)
    int64_t* out_len
    int unique           # tables of order `unique`
    int exhausted        # table index + 1 of a `unique` feeder that ran out; 0: none
    int64_t exhausted_at_ns
    int64_t rows_used    # that feeder's rows, all workers together
    int64_t seq          # the next arrival's index: run-wide (open model) or this worker's
    int closed           # ... closed-model sequence number
