# Included by loadforge/_core.pyx: the HTTP/1.1 response parser.

# ---------------------------------------------------------------------------------------------
# HTTP/1.1 response parser: sans-IO, a state machine over the head, by length through bodies.
# It reads only what the engine needs: the status, Content-Length, Transfer-Encoding: chunked,
# Connection: close and, optionally, one header whose value is captured (backend attribution).
# Header names and lines nobody reads are scanned in tight loops when they lie whole in the
# buffer; a head split across reads goes byte by byte through the same states.

cdef inline void parser_reset(Parser* p, int request) noexcept nogil:
    """Ready for the response to a request of flags `request` (REQ_HEAD, REQ_BODY)."""
    p.state = P_STATUS
    p.status = 0
    p.pos = 0
    p.candidates = 0
    p.header = H_START   # no header line yet: a folded line here has nothing to continue
    p.vmatch = 0
    p.digits = 0
    p.head = request & REQ_HEAD
    p.sent_body = request & REQ_BODY
    p.minor = 1
    p.chunked = 0
    p.te_present = 0
    p.conn_close = 0
    p.conn_keep = 0
    p.tmask = 3
    p.tws = 0
    p.close = 0
    p.drop = 0
    p.content_length = -1
    p.remaining = 0
    p.header_bytes = 0
    p.received = 0
    p.capture_len = 0


# RFC 9110 5.6.2: tchar, the bytes of a header name (1 where allowed).
cdef unsigned char TCHAR[256]
memset(TCHAR, 0, sizeof(TCHAR))
for _c in bytearray(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):
    TCHAR[_c] = 1


cdef inline char lower(char c) noexcept nogil:
    if c >= c'A' and c <= c'Z':
        return c | 0x20
    return c


cdef inline int hex_value(char c) noexcept nogil:
    if c >= c'0' and c <= c'9':
        return c - c'0'
    c = lower(c)
    if c >= c'a' and c <= c'f':
        return c - c'a' + 10
    return -1


cdef inline int after_headers(Parser* p) noexcept nogil:
    """The state that follows the blank line ending a response head."""
    cdef int head
    cdef int64_t received
    if p.status < 200:
        # 1xx: an interim response (100 Continue, 103 Early Hints); the final one follows.
        # 101 would switch protocols, which no request of ours asks for.
        if p.status == 101 or p.status < 100:
            return P_ERROR
        head = p.head | p.sent_body
        received = p.received
        parser_reset(p, head)
        p.received = received
        return P_STATUS
    if p.status > 599:
        return P_ERROR       # RFC 9110 15: status codes are 100-599
    # RFC 9112 9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
    p.close = 1 if p.conn_close or (p.minor == 0 and not p.conn_keep) else 0
    if p.sent_body and (p.status == 413 or p.status == 417):
        # The server refused the body (RFC 9110 15.5.14, 15.5.18), maybe before reading it,
        # and nothing says where it will look for the next request: a client cannot tell
        # whether the body it wrote into the socket buffer was read or will be taken for a
        # request. The connection is not reused (as curl does after an answer before the
        # upload's end); the server may also have answered before it was written at all.
        p.close = 1
        p.drop = 1
    if p.head or p.status == 204 or p.status == 304:
        return P_DONE
    if p.te_present and not p.chunked:
        # RFC 9112 6.3: a response whose last coding is not chunked runs to the close.
        p.close = 1
        return P_BODY_EOF
    if p.chunked:
        p.remaining = 0
        p.digits = 0
        p.vmatch = 0
        return P_CHUNK_SIZE
    if p.content_length >= 0:
        if p.content_length == 0:
            return P_DONE
        p.remaining = p.content_length
        return P_BODY_LENGTH
    p.close = 1    # RFC 9112 6.3: no length, not chunked, so the body runs to the close
    return P_BODY_EOF


cdef inline int length_element_end(Parser* p) noexcept nogil:
    """The end of one Content-Length value (a line may list several, comma-separated:
    RFC 9110 8.6 lets a recipient take "2, 2" as 2); 0 when it is empty or differs from the
    others (RFC 9112 6.3: unrecoverable)."""
    if p.digits == 0:
        return 0
    if p.content_length >= 0 and p.content_length != p.remaining:
        return 0
    p.content_length = p.remaining
    p.remaining = 0
    p.digits = 0
    p.vmatch = 0
    return 1


cdef inline int end_of_value(Parser* p) noexcept nogil:
    cdef int n
    if p.header == H_CONTENT_LENGTH:
        return P_LINE_START if length_element_end(p) else P_ERROR
    elif p.header == H_TRANSFER_ENCODING or p.header == H_CONNECTION:
        token_end(p)
    elif p.header == H_CAPTURE:
        n = p.capture_len
        while n > 0 and (p.capture[n - 1] == c' ' or p.capture[n - 1] == c'\t'):
            n -= 1
        p.capture_len = n
    return P_LINE_START


cdef inline void token_end(Parser* p) noexcept nogil:
    """The end of one element of a Transfer-Encoding or Connection list (RFC 9110 5.6.1)."""
    if p.vmatch > 0:
        if p.header == H_TRANSFER_ENCODING:
            p.te_present = 1
            p.chunked = 1 if (p.tmask & 1) and p.vmatch == 7 else 0
        else:
            if (p.tmask & 1) and p.vmatch == 5:
                p.conn_close = 1
            if (p.tmask & 2) and p.vmatch == 10:
                p.conn_keep = 1
    p.vmatch = 0
    p.tmask = 3
    p.tws = 0


cdef inline void token_byte(Parser* p, char c) noexcept nogil:
    """Feed one value byte of a Transfer-Encoding or Connection list: tokens are matched
    whole and case-insensitively, so "xchunked" or "closed" is not "chunked" or "close"."""
    if c == c',':
        token_end(p)
        return
    if c == c' ' or c == c'\t':
        if p.vmatch > 0:
            p.tws = 1
        return
    if p.tws:
        p.tmask = 0
    c = lower(c)
    if p.header == H_TRANSFER_ENCODING:
        if p.vmatch >= 7 or TOKEN_CHUNKED[p.vmatch] != c:
            p.tmask &= ~1u
    else:
        if p.vmatch >= 5 or TOKEN_CLOSE[p.vmatch] != c:
            p.tmask &= ~1u
        if p.vmatch >= 10 or TOKEN_KEEP_ALIVE[p.vmatch] != c:
            p.tmask &= ~2u
    if p.vmatch < 1000000:
        p.vmatch += 1


cdef inline int header_id(const HeaderNames* names, const char* name, Py_ssize_t length) \
        noexcept nogil:
    """Which header a whole name is (case-insensitive), or H_NONE."""
    cdef int h
    cdef Py_ssize_t k
    for h in range(N_HEADERS):
        if names.length[h] == length and length > 0:
            k = 0
            while k < length and lower(name[k]) == names.name[h][k]:
                k += 1
            if k == length:
                return h
    return H_NONE


cdef inline int is_digit(char c) noexcept nogil:
    return c >= c'0' and c <= c'9'


cdef inline int status_line_start(const char* s) noexcept nogil:
    """Whether s begins with "HTTP/1.d ddd"."""
    return (memcmp(s, STATUS_PREFIX, 7) == 0 and is_digit(s[7]) and s[8] == c' '
            and is_digit(s[9]) and is_digit(s[10]) and is_digit(s[11]))


cdef inline int after_status_code(char c) noexcept nogil:
    """The state after the byte that follows "HTTP/1.x NNN"."""
    if c == c' ' or c == c'\r':
        return P_STATUS_REST
    if c == c'\n':
        return P_LINE_START
    return P_ERROR


cdef inline void start_value(Parser* p) noexcept nogil:
    p.state = P_VALUE
    p.vmatch = 0
    p.digits = 0
    p.remaining = 0
    p.tmask = 3
    p.tws = 0
    if p.header == H_CAPTURE:
        p.capture_len = 0


cdef Py_ssize_t parser_feed(Parser* p, const HeaderNames* names,
                            const char* buf, Py_ssize_t n) noexcept nogil:
    """Consume bytes of one response; returns how many were used. p.state says the rest:
    P_DONE (complete, bytes past the return value belong to no request), P_ERROR, or more
    input needed."""
    cdef Py_ssize_t i = 0, j
    cdef int64_t take
    cdef int st, k, h, d
    cdef char c
    cdef const char* nl
    p.received += n
    while i < n:
        st = p.state
        if st == P_SKIP_LINE or st == P_STATUS_REST:
            # The rest of a line nobody reads: straight to its LF.
            nl = <const char*>memchr(buf + i, c'\n', <size_t>(n - i))
            take = (nl - buf) + 1 - i if nl != NULL else n - i
            p.header_bytes += take
            if p.header_bytes > MAX_HEADER_BYTES:
                p.state = P_ERROR
                return i
            i += take
            if nl != NULL:
                p.state = P_LINE_START
            continue
        if st == P_STATUS and p.pos == 0 and n - i >= 13 and status_line_start(buf + i):
            # "HTTP/1.x NNN" and the byte after it, whole in this buffer; anything else
            # goes byte by byte below, to fail where it fails.
            p.status = (buf[i + 9] - c'0') * 100 + (buf[i + 10] - c'0') * 10 + (buf[i + 11] - c'0')
            p.minor = buf[i + 7] - c'0'
            p.header_bytes += 13
            p.pos = 13
            i += 13
            p.state = after_status_code(buf[i - 1])
            if p.state == P_ERROR:
                return i
            continue
        if st == P_BODY_LENGTH or st == P_CHUNK_DATA:
            take = n - i
            if take > p.remaining:
                take = p.remaining
            i += take
            p.remaining -= take
            if p.remaining == 0:
                if st == P_BODY_LENGTH:
                    p.state = P_DONE
                    return i
                p.state = P_CHUNK_DATA_CR
            continue
        if st == P_BODY_EOF:
            return n
        if st == P_DONE or st == P_ERROR:
            return i
        c = buf[i]
        i += 1
        if st <= P_SKIP_LINE:
            p.header_bytes += 1
            if p.header_bytes > MAX_HEADER_BYTES:
                p.state = P_ERROR
                return i

        if st == P_STATUS:
            k = p.pos
            if k < 7:
                if c != STATUS_PREFIX[k]:
                    p.state = P_ERROR
                    return i
            elif k == 7:
                if c < c'0' or c > c'9':
                    p.state = P_ERROR
                    return i
                p.minor = c - c'0'
            elif k == 8:
                if c != c' ':
                    p.state = P_ERROR
                    return i
            elif k <= 11:
                if c < c'0' or c > c'9':
                    p.state = P_ERROR
                    return i
                p.status = p.status * 10 + (c - c'0')
            else:
                p.state = after_status_code(c)
                if p.state == P_ERROR:
                    return i
            p.pos = k + 1
        elif st == P_SKIP_NAME:
            if c == c':':
                p.state = P_SKIP_LINE
            elif not TCHAR[<unsigned char>c]:
                # No colon, or a byte no name holds: whitespace before the colon too (RFC
                # 9112 5.1: it must be refused, "Content-Length : 5" is no Content-Length).
                p.state = P_ERROR
                return i
        elif st == P_LINE_START or st == P_NAME:
            if st == P_LINE_START:
                if c == c'\r':
                    p.state = P_HEADERS_LF
                    continue
                if c == c'\n':
                    p.state = after_headers(p)
                    if p.state == P_DONE or p.state == P_ERROR:
                        return i
                    continue
                if c == c' ' or c == c'\t':
                    # obs-fold (RFC 9112 5.2): the line continues the previous field's value,
                    # which a user agent reads as if joined by a space. The continuation of a
                    # value nobody reads is skipped (a captured value keeps its first line); a
                    # folded framing header (Content-Length, Transfer-Encoding, Connection) is
                    # refused, where request smuggling hides, as is a fold with no field before.
                    if p.header == H_NONE or p.header == H_CAPTURE:
                        p.state = P_SKIP_LINE
                        continue
                    p.state = P_ERROR
                    return i
                # The whole name in this buffer: look it up at once.
                j = i - 1
                while j < n and TCHAR[<unsigned char>buf[j]]:
                    j += 1
                if j < n:
                    if buf[j] != c':' or j == i - 1:
                        # No colon, an empty name, or a byte no name holds: whitespace
                        # before the colon too (RFC 9112 5.1).
                        p.state = P_ERROR
                        return j + 1
                    p.header_bytes += j - i + 1
                    if p.header_bytes > MAX_HEADER_BYTES:
                        p.state = P_ERROR
                        return i
                    p.header = header_id(names, buf + i - 1, j - i + 1)
                    i = j + 1
                    if p.header == H_NONE:
                        p.state = P_SKIP_LINE
                    else:
                        start_value(p)
                    continue
                p.state = P_NAME
                p.header = H_NONE
                p.pos = 0
                p.candidates = 0
                for h in range(N_HEADERS):
                    if names.length[h] > 0:
                        p.candidates |= 1u << h
            if c == c':':
                if p.pos == 0:
                    p.state = P_ERROR    # an empty name
                    return i
                p.header = H_NONE
                for h in range(N_HEADERS):
                    if (p.candidates >> h) & 1 and names.length[h] == p.pos:
                        p.header = h
                if p.header == H_NONE:
                    p.state = P_SKIP_LINE
                else:
                    start_value(p)
            elif not TCHAR[<unsigned char>c]:
                p.state = P_ERROR    # no colon, or a byte no name holds (RFC 9112 5.1)
                return i
            else:
                c = lower(c)
                for h in range(N_HEADERS):
                    if (p.candidates >> h) & 1 and (
                            p.pos >= names.length[h] or names.name[h][p.pos] != c):
                        p.candidates &= ~(1u << h)
                p.pos += 1
                if p.candidates == 0:
                    p.state = P_SKIP_NAME
        elif st == P_HEADERS_LF:
            if c != c'\n':
                p.state = P_ERROR
                return i
            p.state = after_headers(p)
            if p.state == P_DONE or p.state == P_ERROR:
                return i
        elif st == P_VALUE:
            if c == c'\n':
                p.state = end_of_value(p)
                if p.state == P_ERROR:
                    return i
            elif c == c'\r':
                p.state = P_VALUE_LF
            elif p.header == H_CONTENT_LENGTH:
                if c >= c'0' and c <= c'9':
                    # vmatch marks whitespace after the digits: "1 2" is not twelve.
                    if p.vmatch or p.digits >= 15:
                        p.state = P_ERROR
                        return i
                    p.remaining = p.remaining * 10 + (c - c'0')
                    p.digits += 1
                elif c == c' ' or c == c'\t':
                    if p.digits:
                        p.vmatch = 1
                elif c == c',':
                    if not length_element_end(p):
                        p.state = P_ERROR
                        return i
                else:
                    p.state = P_ERROR
                    return i
            elif p.header == H_TRANSFER_ENCODING or p.header == H_CONNECTION:
                token_byte(p, c)
            else:
                if (c == c' ' or c == c'\t') and p.capture_len == 0:
                    pass
                elif p.capture_len < CAPTURE_MAX:
                    p.capture[p.capture_len] = c
                    p.capture_len += 1
        elif st == P_VALUE_LF:
            if c != c'\n':
                p.state = P_ERROR    # a bare CR inside a value (RFC 9112 2.2)
                return i
            p.state = end_of_value(p)
            if p.state == P_ERROR:
                return i
        elif st == P_CHUNK_SIZE or st == P_CHUNK_EXT or st == P_CHUNK_LF:
            if c == c'\n':
                if p.digits == 0:
                    p.state = P_ERROR
                    return i
                p.digits = 0
                p.vmatch = 0
                p.state = P_TRAILER_START if p.remaining == 0 else P_CHUNK_DATA
            elif st == P_CHUNK_LF:
                p.state = P_ERROR    # a bare CR inside a chunk-size line (RFC 9112 7.1)
                return i
            elif c == c'\r':
                p.state = P_CHUNK_LF
            elif st == P_CHUNK_EXT:
                pass
            elif c == c';':
                p.state = P_CHUNK_EXT
            elif c == c' ' or c == c'\t':
                # Whitespace after the size (BWS before ";", RFC 9112 7.1.1): no more digits.
                if p.digits == 0:
                    p.state = P_ERROR
                    return i
                p.vmatch = 1
            else:
                d = hex_value(c)
                if d < 0 or p.vmatch or p.digits >= 15:
                    p.state = P_ERROR
                    return i
                p.remaining = p.remaining * 16 + d
                p.digits += 1
        elif st == P_CHUNK_DATA_CR:
            if c == c'\r':
                p.state = P_CHUNK_DATA_LF
            elif c == c'\n':
                p.state = P_CHUNK_SIZE
            else:
                p.state = P_ERROR
                return i
        elif st == P_CHUNK_DATA_LF:
            if c != c'\n':
                p.state = P_ERROR
                return i
            p.state = P_CHUNK_SIZE
        elif st == P_TRAILER_START:
            if c == c'\r':
                p.state = P_TRAILER_LF
            elif c == c'\n':
                p.state = P_DONE
                return i
            else:
                p.state = P_TRAILER_SKIP
        elif st == P_TRAILER_SKIP:
            if c == c'\n':
                p.state = P_TRAILER_START
        elif st == P_TRAILER_LF:
            p.state = P_DONE if c == c'\n' else P_ERROR
            return i
    return i


cdef inline int parser_eof(Parser* p) noexcept nogil:
    """The server closed the connection: the outcome, or -1 when that completed the body."""
    if p.state == P_BODY_EOF:
        p.state = P_DONE
        return -1
    if p.received == 0:
        return O_RESET       # closed before a byte of the response
    p.state = P_ERROR
    return O_PROTOCOL        # closed part way through


cdef const char* IDEMPOTENCY_KEY = "idempotency-key:"


cdef int request_idempotent(const char* data, Py_ssize_t n) noexcept nogil:
    """Whether a request may go out again after a reused connection closed without a byte of
    answer: its method is idempotent (RFC 9110 9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE)
    or it carries an Idempotency-Key header (as Go's net/http Transport decides). Read once
    per request template, never per request."""
    cdef Py_ssize_t m = 0, i, k
    while m < n and data[m] != c' ':
        m += 1
    if ((m == 3 and (memcmp(data, b"GET", 3) == 0 or memcmp(data, b"PUT", 3) == 0))
            or (m == 4 and memcmp(data, b"HEAD", 4) == 0)
            or (m == 5 and memcmp(data, b"TRACE", 5) == 0)
            or (m == 6 and memcmp(data, b"DELETE", 6) == 0)
            or (m == 7 and memcmp(data, b"OPTIONS", 7) == 0)):
        return 1
    # The head's lines, up to the blank one: does one begin with "Idempotency-Key:"?
    i = 0
    while i + 1 < n:
        if data[i] == c'\n':
            if data[i + 1] == c'\r' or data[i + 1] == c'\n':
                return 0
            k = 0
            while k < 16 and i + 1 + k < n and lower(data[i + 1 + k]) == IDEMPOTENCY_KEY[k]:
                k += 1
            if k == 16:
                return 1
        i += 1
    return 0


cdef int request_flags(const char* data, Py_ssize_t n, int head) noexcept nogil:
    """parser_reset's flags for an encoded request: REQ_HEAD, and REQ_BODY when bytes follow
    the blank line that ends its head."""
    cdef Py_ssize_t i
    cdef int flags = REQ_HEAD if head else 0
    for i in range(n - 3):
        if data[i] == c'\r' and data[i + 1] == c'\n' and data[i + 2] == c'\r' \
                and data[i + 3] == c'\n':
            if i + 4 < n:
                flags |= REQ_BODY
            break
    return flags


cdef inline int status_outcome(int status) noexcept nogil:
    if status < 200:
        return O_1XX
    if status < 300:
        return O_2XX
    if status < 400:
        return O_3XX
    if status < 500:
        return O_4XX
    return O_5XX


cdef inline bint is_response(int outcome) noexcept nogil:
    """A response (status class, gRPC code, expect_status verdict), not a transport failure:
    the verdicts come after the gRPC codes, so `outcome < O_CONNECT` alone misses them."""
    return outcome < O_CONNECT or outcome >= O_GRPC


cdef inline int response_outcome(const uint64_t* expect, int status) noexcept nogil:
    """A response's outcome: its status class, or for a request with expect_status (`expect`,
    EXPECT_WORDS words from config/outcomes.py expect_words; NULL: none) O_UNEXPECTED outside
    the set, and inside it O_EXPECTED where fail_status (word 10) counts the class."""
    cdef int outcome = status_outcome(status)
    if expect == NULL:
        return outcome
    if status < 0 or status >= 640 or not (expect[status >> 6] >> (status & 63)) & 1:
        return O_UNEXPECTED
    if (expect[10] >> (outcome - O_1XX)) & 1:
        return O_EXPECTED
    return outcome


cdef void names_init(HeaderNames* names, bytes capture):
    names.name[H_CONTENT_LENGTH] = "content-length"
    names.length[H_CONTENT_LENGTH] = 14
    names.name[H_TRANSFER_ENCODING] = "transfer-encoding"
    names.length[H_TRANSFER_ENCODING] = 17
    names.name[H_CONNECTION] = "connection"
    names.length[H_CONNECTION] = 10
    if capture:
        names.name[H_CAPTURE] = PyBytes_AS_STRING(capture)
        names.length[H_CAPTURE] = <int>PyBytes_GET_SIZE(capture)
    else:
        names.name[H_CAPTURE] = ""
        names.length[H_CAPTURE] = 0


cdef class ResponseParser:
    """The engine's response parser, one response at a time, for tests and tools."""

    cdef Parser p
    cdef HeaderNames names
    cdef bytes _capture_name

    def __init__(self, bint head=False, capture=None, bint body=False):
        self._capture_name = capture.lower().encode() if capture else b""
        names_init(&self.names, self._capture_name)
        parser_reset(&self.p, (REQ_HEAD if head else 0) | (REQ_BODY if body else 0))

    def feed(self, bytes data):
        """Feed bytes; returns how many were consumed (fewer than given once complete)."""
        return parser_feed(&self.p, &self.names, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    def eof(self):
        """The peer closed; returns the error kind, or None when that completed the body."""
        r = parser_eof(&self.p)
        return None if r < 0 else ("reset" if r == O_RESET else "protocol")

    @property
    def done(self):
        return self.p.state == P_DONE

    @property
    def error(self):
        return self.p.state == P_ERROR

    @property
    def status(self):
        return self.p.status

    @property
    def keep_alive(self):
        return not self.p.close

    @property
    def captured(self):
        return self.p.capture[:self.p.capture_len]


def idempotent_request(bytes request):
    """Whether the engine may send this encoded request again after a reused connection
    closed without an answer (`[load] retry = "idempotent"`), for tests and tools."""
    return bool(request_idempotent(PyBytes_AS_STRING(request), PyBytes_GET_SIZE(request)))
