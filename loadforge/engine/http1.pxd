# Declarations of the HTTP/1.1 response parser (engine/http1.pxi).

from libc.stdint cimport int64_t, uint32_t


cdef enum ParseState:
    P_STATUS            # "HTTP/1.x NNN", byte by byte
    P_STATUS_REST       # reason phrase, up to LF
    P_LINE_START        # start of a header line, or the blank line ending the headers
    P_HEADERS_LF        # CR of the blank line seen, LF expected
    P_NAME
    P_VALUE
    P_VALUE_LF          # CR inside a value read: LF must follow (RFC 9112 2.2: no bare CR)
    P_SKIP_NAME         # the name of a header nobody asked for, up to its colon
    P_SKIP_LINE         # the rest of a header line nobody asked for
    P_BODY_LENGTH
    P_BODY_EOF          # no length, not chunked: the body ends when the server closes
    P_CHUNK_SIZE
    P_CHUNK_EXT
    P_CHUNK_LF          # CR of a chunk-size line: LF must follow
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
    H_START = 5         # no header line yet (after the status line): nothing to fold into


cdef enum:             # what parser_reset is told of the request (Engine.req_head)
    REQ_HEAD = 1        # a HEAD request: the response has no body
    REQ_BODY = 2        # the request carries a body


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
    int sent_body        # the request carried a body
    int minor            # HTTP/1.minor: 1.0 closes unless the server says keep-alive
    int chunked          # Transfer-Encoding's last token so far is "chunked"
    int te_present       # a Transfer-Encoding with at least one token
    int conn_close       # Connection lists "close"
    int conn_keep        # Connection lists "keep-alive"
    uint32_t tmask       # tokens the current list element may still be (bit per token)
    int tws              # whitespace seen after the current element's first byte
    int close            # the connection ends with this response (known after the head)
    int drop             # ... because the client drops it: the server refused the body
    int64_t content_length   # -1 when absent
    int64_t remaining
    int64_t header_bytes
    int64_t received
    int capture_len
    char capture[CAPTURE_MAX]


cdef struct HeaderNames:
    const char* name[N_HEADERS]   # lower case
    int length[N_HEADERS]
