# The worker wire format: the interval payload Engine.run hands to Python once an interval
# (engine/cells.pxi `flush` writes it, loadforge/run/wire.py reads it). These packed structs and
# the struct.Struct definitions in loadforge/run/wire.py are its only two descriptions; a test
# (tests/test_wire.py) checks one against the other field by field. Byte order: little-endian,
# the host's (the build refuses a big-endian host), read with "<" in Python. No padding.
#
# Layout, in this order:
#   WireHeader
#   WireStage       x nstages
#   WireBackend     x nbackends         (captured header values, slots 1..nbackends)
#   per cell, x ncells: WireCell, then WireHist + uint32 counts x2 (latency, service)
#   WireTrailer
#   WireHist + uint32 counts            (the interval's connect times)
#   WireTls                             (TLS handshakes so far; zeros over plain TCP)
#   WireHist + uint32 counts            (the interval's TLS handshake times)
#   FLOWS, optional: uint32 length + JSON (appended by loadforge/flows/driver.py; run/wire.py)
# A WireHist is followed by its n uint32 counts, of histogram indices lo, lo+1, ...
#
# Change anything here and in loadforge/run/wire.py together, and bump WIRE_VERSION.

from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t


cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    #error "loadforge's worker wire format is little-endian: this host is not"
    #endif
    """


cdef enum:
    WIRE_MAGIC = 0x4957464c       # b"LFWI" read little-endian
    WIRE_VERSION = 6              # 6: clamped latencies in the trailer; 5: TLS, HTTP/2 stream
                                  # kinds and the FLOWS section; 2: b"LFWI"; 1: b"LFI1"


cdef packed struct WireHeader:
    uint32_t magic
    uint16_t version
    uint16_t final       # 1 in the run's last payload
    uint32_t worker
    uint32_t nstages
    int64_t interval     # index of the interval, from 0
    uint32_t ncells
    uint32_t nbackends
    uint64_t connects    # so far
    uint64_t connect_failures   # so far


cdef packed struct WireStage:   # counts of this interval
    uint64_t scheduled
    uint64_t sent
    uint64_t unsent
    uint64_t waited
    uint64_t late


cdef packed struct WireBackend:
    uint32_t length
    char name[48]        # CAPTURE_MAX


cdef packed struct WireCell:
    uint32_t stage
    uint32_t request
    uint32_t outcome     # Outcome
    uint32_t backend     # 0: none, else a WireBackend's slot
    uint64_t count


cdef packed struct WireHist:
    int32_t lo           # first histogram index of the counts (0 when n is 0)
    int32_t n            # uint32 counts that follow
    uint64_t total
    int64_t min_value
    int64_t max_value


cdef packed struct WireTrailer:   # so far
    uint64_t retried
    uint64_t dropped
    uint64_t closed_by_server
    uint64_t closed_by_us
    uint64_t clamped     # latencies past the histograms' 1 h, recorded as 1 h


cdef packed struct WireTls:       # so far
    uint64_t full        # handshakes that negotiated a new session
    uint64_t resumed     # ... and that resumed one
    uint64_t failed      # handshakes that failed
