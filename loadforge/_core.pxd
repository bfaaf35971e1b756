# cython: language_level=3
# The engine's data: connection table, response parser, histograms. Declared before the
# implementation so the layout of the hot path can be read in one place.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from loadforge._system cimport epoll_event, sockaddr_storage, socklen_t


include "engine/http1.pxd"
include "engine/http2.pxd"
include "engine/recorder.pxd"
include "engine/conn.pxd"
include "engine/transport.pxd"
include "engine/stages.pxd"
include "engine/wire.pxd"
include "engine/template.pxd"
