# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The load engine: one epoll loop per worker process, an HTTP/1.1 response state machine or
HTTP/2 sessions (libnghttp2, loaded at run time), and HdrHistogram counts in C.

Nothing on the per-request path creates a Python object: requests are pre-encoded bytes, the
connection table and the receive buffer are allocated once, latencies go into C count arrays.
Python is called once per interval, with that interval's histogram deltas packed in one bytes
object (the worker wire format: `loadforge/engine/wire.pxd`, read by `loadforge/run/wire.py`).
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport ceil, sqrt
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

from loadforge._openssl cimport *
from loadforge._system cimport *

# One extension built from includes, in data-flow order (declarations: loadforge/_core.pxd and
# the .pxd files it includes from loadforge/engine/).
include "engine/consts.pxi"
include "engine/clock.pxi"
include "engine/arrivals.pxi"
include "engine/recorder.pxi"
include "engine/http1.pxi"
include "engine/tcp.pxi"
include "engine/tls.pxi"
include "engine/transport.pxi"
include "engine/loop.pxi"
include "engine/h1conn.pxi"
include "engine/http2.pxi"
include "engine/h2conn.pxi"
include "engine/pool.pxi"
include "engine/writer.pxi"
include "engine/cells.pxi"
include "engine/template.pxi"
include "engine/flows.pxi"
include "engine/probe.pxi"
include "engine/protocol.pxi"
