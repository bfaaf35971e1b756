# Included by loadforge/_core.pyx: the open-model schedule (arrival times).

# ---------------------------------------------------------------------------------------------
# Schedule: arrival k of an open-model stage whose rate goes linearly from r0 to r1 over T
# seconds is due when the integral of the rate reaches k, that is at the root of
# (r1 - r0) / (2T) t^2 + r0 t = k. The form 2k / (r0 + sqrt(r0^2 + 2ak)) stays exact for
# a -> 0 (steady), r0 = 0 (ramp from zero) and a < 0 (ramp down).

cdef inline double arrival_offset(double r0, double r1, double duration, int64_t k) noexcept nogil:
    cdef double a, disc
    if k <= 0:
        return 0.0
    if r0 == r1:
        return k / r0
    a = (r1 - r0) / duration
    disc = r0 * r0 + 2.0 * a * k
    if disc < 0.0:
        disc = 0.0
    return 2.0 * k / (r0 + sqrt(disc))


cdef inline int64_t stage_arrivals(double r0, double r1, double duration) noexcept nogil:
    # Arrivals with offset < duration: every k < integral. The epsilon keeps an integral that
    # floating point puts at 5.0000000001 from gaining a sixth arrival.
    cdef double n = (r0 + r1) * 0.5 * duration
    if n <= 0.0:
        return 0
    return <int64_t>ceil(n - 1e-9)


def arrival_count(double rate_from, double rate_to, double duration_s):
    """How many arrivals an open-model stage has, all workers together."""
    return stage_arrivals(rate_from, rate_to, duration_s)


def arrival_offsets(double rate_from, double rate_to, double duration_s,
                    int64_t start=0, int64_t step=1, int64_t stop=-1):
    """Intended send offsets (seconds from the stage start) of arrivals start, start+step, ...

    The same function the engine uses; exposed for the schedule's tests and for plotting.
    """
    cdef int64_t n = stage_arrivals(rate_from, rate_to, duration_s)
    cdef int64_t k
    if stop < 0 or stop > n:
        stop = n
    out = []
    k = start
    while k < stop:
        out.append(arrival_offset(rate_from, rate_to, duration_s, k))
        k += step
    return out
