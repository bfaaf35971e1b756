# Declarations of the HTTP/2 protocol layer (engine/http2.pxi): libnghttp2 as loaded at run
# time, and the stream table that sits beside the connection table.
#
# libnghttp2 (h2load's library) does the framing, HPACK, flow control, SETTINGS and PING
# acknowledgement. Its runtime library (libnghttp2.so.14) is on a fresh Debian machine, its
# headers and unversioned .so are not, so the few declarations used are written here from
# nghttp2.h (1.52, the ABI of .so.14) and the library is dlopen'ed when an HTTP/2 engine is
# built: `pip install .` needs nothing more, and HTTP/1.1 runs never touch it.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef extern from *:
    """
    #include <dlfcn.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <sys/types.h>

    typedef struct nghttp2_session nghttp2_session;
    typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
    typedef struct nghttp2_option nghttp2_option;
    typedef struct { uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen;
                     uint8_t flags; } nghttp2_nv;
    typedef struct { size_t length; int32_t stream_id; uint8_t type; uint8_t flags;
                     uint8_t reserved; } nghttp2_frame_hd;
    typedef struct { nghttp2_frame_hd hd; int32_t last_stream_id; uint32_t error_code;
                     uint8_t *opaque_data; size_t opaque_data_len; uint8_t reserved; }
        nghttp2_goaway;
    typedef struct { nghttp2_frame_hd hd; uint32_t error_code; } nghttp2_rst_stream;
    /* Only the members read here; every frame struct starts with its nghttp2_frame_hd. */
    typedef union { nghttp2_frame_hd hd; nghttp2_goaway goaway; nghttp2_rst_stream rst_stream; }
        nghttp2_frame;
    typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;
    typedef union { int fd; void *ptr; } nghttp2_data_source;
    typedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *, int32_t, uint8_t *,
        size_t, uint32_t *, nghttp2_data_source *, void *);
    typedef struct { nghttp2_data_source source; nghttp2_data_source_read_callback read_callback; }
        nghttp2_data_provider;
    typedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session *, const nghttp2_frame *, void *);
    typedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *, uint8_t, int32_t,
        const uint8_t *, size_t, void *);
    typedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *, int32_t, uint32_t, void *);
    typedef int (*nghttp2_on_header_callback)(nghttp2_session *, const nghttp2_frame *,
        const uint8_t *, size_t, const uint8_t *, size_t, uint8_t, void *);

    /* The library's entry points, filled by lf_nghttp2_load(). */
    typedef struct {
        int loaded;
        int (*callbacks_new)(nghttp2_session_callbacks **);
        void (*set_on_frame_recv)(nghttp2_session_callbacks *, nghttp2_on_frame_recv_callback);
        void (*set_on_data_chunk_recv)(nghttp2_session_callbacks *,
                                       nghttp2_on_data_chunk_recv_callback);
        void (*set_on_stream_close)(nghttp2_session_callbacks *, nghttp2_on_stream_close_callback);
        void (*set_on_header)(nghttp2_session_callbacks *, nghttp2_on_header_callback);
        int (*option_new)(nghttp2_option **);
        void (*option_del)(nghttp2_option *);
        void (*option_set_peer_max_concurrent_streams)(nghttp2_option *, uint32_t);
        int (*client_new2)(nghttp2_session **, const nghttp2_session_callbacks *, void *,
                           const nghttp2_option *);
        void (*session_del)(nghttp2_session *);
        ssize_t (*mem_send)(nghttp2_session *, const uint8_t **);
        ssize_t (*mem_recv)(nghttp2_session *, const uint8_t *, size_t);
        int32_t (*submit_request)(nghttp2_session *, const void *, const nghttp2_nv *, size_t,
                                  const nghttp2_data_provider *, void *);
        int (*submit_rst_stream)(nghttp2_session *, uint8_t, int32_t, uint32_t);
        int (*submit_settings)(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t);
        int (*set_local_window_size)(nghttp2_session *, uint8_t, int32_t, int32_t);
        uint32_t (*get_remote_settings)(nghttp2_session *, int);
        int32_t (*get_stream_remote_window_size)(nghttp2_session *, int32_t);
        int (*want_read)(nghttp2_session *);
        int (*want_write)(nghttp2_session *);
        void *(*get_stream_user_data)(nghttp2_session *, int32_t);
        const char *(*strerror)(int);
    } LfNghttp2;
    static LfNghttp2 lf_ng;

    /* dlopen the runtime library once; 0 on success, else -1 with a message in err. */
    static int lf_nghttp2_load(char *err, size_t errlen) {
        void *lib;
        if (lf_ng.loaded) return 0;
        lib = dlopen("libnghttp2.so.14", RTLD_NOW | RTLD_LOCAL);
        if (lib == NULL) {
            snprintf(err, errlen, "%s", dlerror());
            return -1;
        }
        #define LF_SYM(field, name) \
            if ((*(void **)&lf_ng.field = dlsym(lib, name)) == NULL) { \
                snprintf(err, errlen, "libnghttp2.so.14 has no %s", name); return -1; }
        LF_SYM(callbacks_new, "nghttp2_session_callbacks_new")
        LF_SYM(set_on_frame_recv, "nghttp2_session_callbacks_set_on_frame_recv_callback")
        LF_SYM(set_on_data_chunk_recv, "nghttp2_session_callbacks_set_on_data_chunk_recv_callback")
        LF_SYM(set_on_stream_close, "nghttp2_session_callbacks_set_on_stream_close_callback")
        LF_SYM(set_on_header, "nghttp2_session_callbacks_set_on_header_callback")
        LF_SYM(option_new, "nghttp2_option_new")
        LF_SYM(option_del, "nghttp2_option_del")
        LF_SYM(option_set_peer_max_concurrent_streams,
               "nghttp2_option_set_peer_max_concurrent_streams")
        LF_SYM(client_new2, "nghttp2_session_client_new2")
        LF_SYM(session_del, "nghttp2_session_del")
        LF_SYM(mem_send, "nghttp2_session_mem_send")
        LF_SYM(mem_recv, "nghttp2_session_mem_recv")
        LF_SYM(submit_request, "nghttp2_submit_request")
        LF_SYM(submit_rst_stream, "nghttp2_submit_rst_stream")
        LF_SYM(submit_settings, "nghttp2_submit_settings")
        LF_SYM(set_local_window_size, "nghttp2_session_set_local_window_size")
        LF_SYM(get_remote_settings, "nghttp2_session_get_remote_settings")
        LF_SYM(get_stream_remote_window_size, "nghttp2_session_get_stream_remote_window_size")
        LF_SYM(want_read, "nghttp2_session_want_read")
        LF_SYM(want_write, "nghttp2_session_want_write")
        LF_SYM(get_stream_user_data, "nghttp2_session_get_stream_user_data")
        LF_SYM(strerror, "nghttp2_strerror")
        #undef LF_SYM
        lf_ng.loaded = 1;
        return 0;
    }
    """
    ctypedef struct nghttp2_session
    ctypedef struct nghttp2_session_callbacks
    ctypedef struct nghttp2_option
    ctypedef struct nghttp2_nv:
        uint8_t* name
        uint8_t* value
        size_t namelen
        size_t valuelen
        uint8_t flags
    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags
    ctypedef struct nghttp2_goaway:
        int32_t last_stream_id
        uint32_t error_code
    ctypedef struct nghttp2_rst_stream:
        uint32_t error_code
    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_goaway goaway
        nghttp2_rst_stream rst_stream
    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value
    ctypedef union nghttp2_data_source:
        int fd
        void* ptr
    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session*, int32_t, uint8_t*, size_t, uint32_t*, nghttp2_data_source*, void*)
    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback
    ctypedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session*, const nghttp2_frame*, void*)
    ctypedef int (*nghttp2_on_data_chunk_recv_callback)(
        nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t, void*)
    ctypedef int (*nghttp2_on_stream_close_callback)(nghttp2_session*, int32_t, uint32_t, void*)
    ctypedef int (*nghttp2_on_header_callback)(
        nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t, const uint8_t*, size_t,
        uint8_t, void*)

    ctypedef struct LfNghttp2:
        int (*callbacks_new)(nghttp2_session_callbacks**) noexcept nogil
        void (*set_on_frame_recv)(nghttp2_session_callbacks*, nghttp2_on_frame_recv_callback) noexcept nogil
        void (*set_on_data_chunk_recv)(nghttp2_session_callbacks*,
                                       nghttp2_on_data_chunk_recv_callback) noexcept nogil
        void (*set_on_stream_close)(nghttp2_session_callbacks*,
                                    nghttp2_on_stream_close_callback) noexcept nogil
        void (*set_on_header)(nghttp2_session_callbacks*, nghttp2_on_header_callback) noexcept nogil
        int (*option_new)(nghttp2_option**) noexcept nogil
        void (*option_del)(nghttp2_option*) noexcept nogil
        void (*option_set_peer_max_concurrent_streams)(nghttp2_option*, uint32_t) noexcept nogil
        int (*client_new2)(nghttp2_session**, const nghttp2_session_callbacks*, void*,
                           const nghttp2_option*) noexcept
        void (*session_del)(nghttp2_session*) noexcept
        ssize_t (*mem_send)(nghttp2_session*, const uint8_t**) noexcept
        ssize_t (*mem_recv)(nghttp2_session*, const uint8_t*, size_t) noexcept
        int32_t (*submit_request)(nghttp2_session*, const void*, const nghttp2_nv*, size_t,
                                  const nghttp2_data_provider*, void*) noexcept
        int (*submit_rst_stream)(nghttp2_session*, uint8_t, int32_t, uint32_t) noexcept
        int (*submit_settings)(nghttp2_session*, uint8_t, const nghttp2_settings_entry*,
                               size_t) noexcept
        int (*set_local_window_size)(nghttp2_session*, uint8_t, int32_t, int32_t) noexcept
        uint32_t (*get_remote_settings)(nghttp2_session*, int) noexcept
        int32_t (*get_stream_remote_window_size)(nghttp2_session*, int32_t) noexcept
        int (*want_read)(nghttp2_session*) noexcept
        int (*want_write)(nghttp2_session*) noexcept
        void* (*get_stream_user_data)(nghttp2_session*, int32_t) noexcept
        const char* (*strerror)(int) noexcept

    LfNghttp2 lf_ng
    int lf_nghttp2_load(char* err, size_t errlen) noexcept


cdef enum:
    NGHTTP2_NV_FLAG_NO_COPY_NAME = 0x02
    NGHTTP2_NV_FLAG_NO_COPY_VALUE = 0x04
    NGHTTP2_DATA_FLAG_EOF = 0x01
    NGHTTP2_FLAG_NONE = 0
    NGHTTP2_FLAG_END_STREAM = 0x01
    NGHTTP2_FLAG_ACK = 0x01
    NGHTTP2_HEADERS = 0x01
    NGHTTP2_RST_STREAM = 0x03
    NGHTTP2_SETTINGS = 0x04
    NGHTTP2_GOAWAY = 0x07
    NGHTTP2_SETTINGS_ENABLE_PUSH = 0x02
    NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS = 0x03
    NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE = 0x04
    NGHTTP2_NO_ERROR = 0x00
    NGHTTP2_PROTOCOL_ERROR = 0x01
    NGHTTP2_FLOW_CONTROL_ERROR = 0x03
    NGHTTP2_REFUSED_STREAM = 0x07
    NGHTTP2_CANCEL = 0x08
    NGHTTP2_ERR_CALLBACK_FAILURE = -902
    # Windows opened wide, as h2load does by default (-w 30, -W 30): the server never waits
    # for a WINDOW_UPDATE, and one is sent only after 2^29 bytes of a stream or connection.
    H2_WINDOW = (1 << 30) - 1
    H2_OUT_CHUNK = 65536     # bytes gathered from the session before each write


cdef enum StreamState:
    S_FREE
    S_OPEN               # submitted, its response awaited
    S_ENDED              # outcome recorded (timeout, cancelled), the stream not closed yet


cdef struct H2Stream:    # one slot of a connection's stream table
    int state            # StreamState
    int32_t id           # stream id, 0 before submission
    int32_t conn
    int32_t stage
    int32_t request
    int retried          # already sent again once (GOAWAY or REFUSED_STREAM)
    int status
    int got_response     # response HEADERS seen
    int peer_reset       # the server sent RST_STREAM (else a reset is nghttp2's own verdict)
    int big              # counted in Engine.eventful: the loop must watch its socket
    int64_t intended_ns
    int64_t sent_ns
    int64_t deadline_ns
    int64_t seq          # the arrival's index (Templates.seq) and model: its feeder rows
    int closed
    const char* body     # the request body: the request's, or expanded in the slot's buffer
    int64_t body_len
    int64_t body_sent
    int64_t received     # response bytes: body, and header names and values
    # gRPC (H2Engine.grpc): the grpc-status seen (-1 none, -2 not a number), and the walk
    # over the response's length-prefixed messages: bytes of the 5-byte prefix read so far,
    # the message length it gives, the message bytes still to come; grpc_bad: a prefix
    # whose compressed flag is neither 0 nor 1
    int grpc_status
    int grpc_prefix
    uint32_t grpc_len
    uint32_t grpc_left
    int grpc_bad
    int capture_len
    char capture[CAPTURE_MAX]


cdef struct H2Conn:
    nghttp2_session* session
    void* engine         # the Engine (borrowed: it owns the session)
    int32_t ci
    int active           # streams in S_OPEN or S_ENDED
    int limit            # min(streams, the server's SETTINGS_MAX_CONCURRENT_STREAMS)
    int goaway           # GOAWAY received: no new streams
    int draining         # requests_per_connection reached: no new streams, closed when idle
    int32_t goaway_last  # its last stream id
    int dirty            # frames may be waiting in the session: on the dirty list
    int dead             # the session failed: close at the next chance
    int answered         # a response (HEADERS) came on it: the server speaks HTTP/2 here
    int zero_noted       # its server allowed 0 concurrent streams, counted once
    int heard            # bytes came on it: the first are a SETTINGS frame, not "HTTP/"
    int32_t* free_slots  # stack of free slot indices into H2Engine.slots
    int nfree
    char* out            # bytes from the session not yet written
    Py_ssize_t out_len
    Py_ssize_t out_pos
    Py_ssize_t out_cap


cdef struct H2Pending:   # an arrival waiting for a stream (retry, closed-model continuation)
    int32_t stage
    int32_t request
    int retried
    int closed
    int64_t intended_ns
    int64_t seq


cdef struct H2Part:      # a templated request's value expanded per stream (engine/template.pxi)
    int32_t nv           # index in the request's header block; -1: the body
    int32_t lo           # its segments in Templates.segs (absolute)
    int32_t hi


cdef struct H2Engine:
    int streams          # most concurrent streams per connection (ours)
    H2Conn* conns
    H2Stream* slots      # nconns x streams
    int32_t* free_all    # backing store of every H2Conn.free_slots
    nghttp2_session_callbacks* callbacks
    nghttp2_option* option
    nghttp2_nv* nva      # every request's header block, one after the other
    int* nv_first
    int* nv_count
    int64_t* response_max   # per request: most response bytes seen, -1 before the first
    int* grpc            # per request: 1 for a gRPC call (content-type application/grpc)
    const char** body
    Py_ssize_t* body_len
    H2Part* parts        # every templated request's parts, one after the other
    int* part_first      # per request; part_count 0: a fixed request
    int* part_count
    int64_t rx_ns        # receive timestamp of the bytes being fed to a session
    int64_t now_ns
    int cursor           # next connection to offer a stream (round robin)
    int* dirty_list
    int ndirty
    H2Pending* pending   # FIFO ring
    int pending_head
    int pending_len
    int pacing           # h2_fail_conn is ending an unanswered connection's streams: their
                         # closed-model users come back after its backoff, not at once
    uint64_t zero_streams   # connections whose server allowed 0 concurrent streams
    int pending_cap
