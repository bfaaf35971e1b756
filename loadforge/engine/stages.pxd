# Declarations of the plan a worker runs: its stages and their counters (engine/loop.pxi).

from libc.stdint cimport int64_t, uint64_t


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
