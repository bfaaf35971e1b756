"""The HTTP/1.1 response parser (`_core.ResponseParser`): table-driven cases for every
transition, and Hypothesis properties (split-invariance, no crash on arbitrary bytes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadforge._core import ResponseParser

CRLF = b"\r\n"


def parse(data: bytes, *, head: bool = False, capture: str | None = None,
          pieces: list[int] | None = None) -> tuple[ResponseParser, int]:
    """Feed `data` whole, or cut at the `pieces` offsets; returns (parser, total consumed)."""
    p = ResponseParser(head=head, capture=capture)
    cuts = sorted(set(pieces or [])) + [len(data)]
    used, at = 0, 0
    for cut in cuts:
        if cut <= at:
            continue
        used += p.feed(data[at:cut])
        at = cut
    return p, used


def response(status: str = "200 OK", headers: list[str] | tuple[str, ...] = (),
             body: bytes = b"") -> bytes:
    head = "HTTP/1.1 " + status + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return head.encode() + body


def chunked(chunks: list[bytes], trailers: tuple[str, ...] = (), hex_upper: bool = False,
            ext: str = "") -> bytes:
    out = b""
    for c in chunks:
        size = f"{len(c):X}" if hex_upper else f"{len(c):x}"
        out += size.encode() + ext.encode() + CRLF + c + CRLF
    out += b"0" + ext.encode() + CRLF + "".join(t + "\r\n" for t in trailers).encode() + CRLF
    return out


# ---------------------------------------------------------------------------------------------
# Complete responses: (id, bytes, head, status, keep_alive). Each is exactly one response, so
# the parser is done and consumed everything.

BIG = bytes(range(256)) * 1024   # 256 KiB, more than one receive buffer

COMPLETE = [
    ("cl-0", response(headers=["Content-Length: 0"]), False, 200, True),
    ("cl-small", response(headers=["Content-Length: 5"], body=b"hello"), False, 200, True),
    ("cl-large", response(headers=[f"Content-Length: {len(BIG)}"], body=BIG), False, 200, True),
    ("cl-padded", response(headers=["Content-Length:   5  "], body=b"hello"), False, 200, True),
    ("cl-duplicate-same",
     response(headers=["Content-Length: 3", "Content-Length: 3"], body=b"abc"),
     False, 200, True),
    ("no-reason", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", False, 200, True),
    # RFC 9110 8.6: a list of identical Content-Length values is that value.
    ("cl-list-same", response(headers=["Content-Length: 5, 5"], body=b"hello"), False, 200, True),
    ("cl-list-same-padded", response(headers=["Content-Length: 2 ,2,  2 "], body=b"ok"), False,
     200, True),
    ("cl-list-and-line", response(headers=["Content-Length: 2,2", "Content-Length: 2"],
                                  body=b"ok"), False, 200, True),
    # RFC 9112 5.2: an obs-fold continues the field before it, read as one space.
    ("obs-fold-unread", response(headers=["X-Long: a,", " b,", "\tc", "Content-Length: 2"],
                                 body=b"ok"), False, 200, True),
    ("chunk-size-trailing-space",
     response(headers=["Transfer-Encoding: chunked"], body=b"1 \r\nx\r\n0\t\r\n\r\n"),
     False, 200, True),
    ("chunk-size-space-before-ext",
     response(headers=["Transfer-Encoding: chunked"], body=b"1 ;a=b\r\nx\r\n0\r\n\r\n"),
     False, 200, True),
    # RFC 9112 9.3: an HTTP/1.0 response keeps the connection only with "keep-alive".
    ("http-1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, 200, False),
    ("http-1.0-keep-alive",
     b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
     False, 200, True),
    ("http-1.0-keep-alive-and-close",
     b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
     False, 200, False),
    ("http-1.0-head", b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n", True, 200, False),
    ("connection-token-not-substring",
     response(headers=["Connection: closed, xclose, keep-alive-ish", "Content-Length: 0"]),
     False, 200, True),
    ("connection-close-padded",
     response(headers=["Connection:  upgrade ,\tclose  ", "Content-Length: 0"]), False, 200,
     False),
    ("te-two-lines-chunked-last",
     response(headers=["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
              body=chunked([b"ab"])), False, 200, True),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", False, 200, True),
    ("status-404", response("404 Not Found", ["Content-Length: 1"], b"x"), False, 404, True),
    ("status-599", response("599 Whatever", ["Content-Length: 0"]), False, 599, True),
    ("chunked-several",
     response(headers=["Transfer-Encoding: chunked"], body=chunked([b"abc", b"d" * 17, b"!"])),
     False, 200, True),
    ("chunked-only-last", response(headers=["Transfer-Encoding: chunked"], body=chunked([])),
     False, 200, True),
    ("chunked-extensions",
     response(headers=["Transfer-Encoding: chunked"],
              body=chunked([b"abc", b"defg"], ext=';name="va;lue";x=1')),
     False, 200, True),
    ("chunked-trailers",
     response(headers=["Transfer-Encoding: chunked"],
              body=chunked([b"abc"], trailers=("X-Checksum: 1234", "X-Other: y"))),
     False, 200, True),
    ("chunked-upper-hex",
     response(headers=["Transfer-Encoding: chunked"],
              body=chunked([b"z" * 0xAB, b"y" * 0x1F], hex_upper=True)),
     False, 200, True),
    ("chunked-gzip-chunked",
     response(headers=["Transfer-Encoding: gzip, chunked"], body=chunked([b"\x1f\x8b\x08"])),
     False, 200, True),
    ("chunked-wins-over-cl",
     response(headers=["Content-Length: 100", "Transfer-Encoding: chunked"],
              body=chunked([b"abc"])),
     False, 200, True),
    ("chunked-bare-lf", b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n",
     False, 200, True),
    ("connection-close", response(headers=["Connection: close", "Content-Length: 2"], body=b"ok"),
     False, 200, False),
    ("connection-list-close",
     response(headers=["Connection: Upgrade, CLOSE", "Content-Length: 0"]), False, 200, False),
    ("connection-keep-alive", response(headers=["Connection: keep-alive", "Content-Length: 0"]),
     False, 200, True),
    ("names-any-case",
     response(headers=["CONTENT-LENGTH: 2", "connection: Close"], body=b"ok"), False, 200, False),
    ("names-mixed-case",
     response(headers=["cOnTeNt-LeNgTh: 2"], body=b"ok"), False, 200, True),
    ("te-any-case",
     response(headers=["transfer-ENCODING: Chunked"], body=chunked([b"ok"])), False, 200, True),
    ("unknown-headers",
     response(headers=["Server: x", "Content-Type: text/plain", "Content-Lengthy: 9",
                       "X-Content-Length: 9", "Connectionless: close", "Content-Length: 2"],
              body=b"ok"),
     False, 200, True),
    ("interim-100",
     response("100 Continue") + response(headers=["Content-Length: 2"], body=b"ok"),
     False, 200, True),
    ("interim-103",
     response("103 Early Hints", ["Link: </s.css>; rel=preload"])
     + response("201 Created", ["Content-Length: 2"], b"ok"),
     False, 201, True),
    ("interim-100-103",
     response("100 Continue") + response("103 Early Hints", ["Link: </a>"])
     + response("500 Oops", ["Transfer-Encoding: chunked"], chunked([b"e"])),
     False, 500, True),
    ("204-with-cl", response("204 No Content", ["Content-Length: 10"]), False, 204, True),
    ("204-with-chunked", response("204 No Content", ["Transfer-Encoding: chunked"]),
     False, 204, True),
    ("304-with-cl", response("304 Not Modified", ["Content-Length: 10"]), False, 304, True),
    ("304-no-length", response("304 Not Modified"), False, 304, True),
    ("head-with-cl", response(headers=["Content-Length: 10"]), True, 200, True),
    ("head-with-chunked", response(headers=["Transfer-Encoding: chunked"]), True, 200, True),
    ("head-no-length", response(), True, 200, True),
]


@pytest.mark.parametrize("data, head, status, keep_alive",
                         [c[1:] for c in COMPLETE], ids=[c[0] for c in COMPLETE])
def test_complete_response(data: bytes, head: bool, status: int, keep_alive: bool) -> None:
    p, used = parse(data, head=head)
    assert (p.done, p.error) == (True, False)
    assert used == len(data)
    assert p.status == status
    assert p.keep_alive is keep_alive


SMALL = [c for c in COMPLETE if len(c[1]) < 4096]


@pytest.mark.parametrize("data, head, status, keep_alive",
                         [c[1:] for c in SMALL], ids=[c[0] for c in SMALL])
def test_complete_response_byte_at_a_time(data: bytes, head: bool, status: int,
                                          keep_alive: bool) -> None:
    p, used = parse(data, head=head, pieces=list(range(len(data))))
    assert (p.done, p.error, used, p.status, p.keep_alive) == (
        True, False, len(data), status, keep_alive)


@pytest.mark.parametrize("data, head, status, keep_alive",
                         [c[1:] for c in COMPLETE], ids=[c[0] for c in COMPLETE])
def test_bytes_after_a_complete_response_are_not_consumed(data: bytes, head: bool, status: int,
                                                          keep_alive: bool) -> None:
    rest = response(headers=["Content-Length: 0"])
    p = ResponseParser(head=head)
    assert p.feed(data + rest) == len(data)
    assert p.done and p.status == status
    # Once done, further input is left alone.
    assert p.feed(rest) == 0
    assert p.done
    # The rest is the next response on the connection (pipelining / keep-alive reuse).
    q = ResponseParser()
    assert q.feed(rest) == len(rest) and q.done


def test_head_leaves_body_bytes_unconsumed() -> None:
    head = response(headers=["Content-Length: 5"])
    p = ResponseParser(head=True)
    assert p.feed(head + b"hello") == len(head)
    assert p.done and p.status == 200


# ---------------------------------------------------------------------------------------------
# Body until close: no Content-Length, not chunked.

@pytest.mark.parametrize("body", [b"", b"x", b"abc" * 10000])
def test_body_until_close(body: bytes) -> None:
    data = response(headers=["Server: x"], body=body)
    p = ResponseParser()
    assert p.feed(data) == len(data)
    assert not p.done and not p.error
    assert p.keep_alive is False
    assert p.feed(b"more") == 4
    assert not p.done
    assert p.eof() is None
    assert p.done and not p.error
    assert p.status == 200


@pytest.mark.parametrize("coding", ["xchunked", "chunkedx", "chunked, gzip", "chun ked",
                                    "gzip"])
def test_transfer_coding_other_than_final_chunked_runs_to_the_close(coding: str) -> None:
    """RFC 9112 6.3: chunked is matched as a whole token, and only as the last coding;
    otherwise the body ends when the server closes, whatever Content-Length says."""
    body = b"3\r\nabc\r\n0\r\n\r\n"
    data = response(headers=[f"Transfer-Encoding: {coding}", "Content-Length: 2"], body=body)
    p = ResponseParser()
    assert p.feed(data) == len(data)
    assert not p.done and not p.error and p.keep_alive is False
    assert p.eof() is None and p.done


# ---------------------------------------------------------------------------------------------
# Errors: (id, bytes, head). The parser must flag the error (it may stop consuming there).

ERRORS = [
    ("http-2", b"HTTP/2 200 OK\r\n\r\n", False),
    ("foo", b"FOO", False),
    ("lowercase-http", b"http/1.1 200 OK\r\n\r\n", False),
    ("leading-space", b" HTTP/1.1 200 OK\r\n\r\n", False),
    ("non-digit-minor", b"HTTP/1.x 200 OK\r\n\r\n", False),
    ("non-digit-status", b"HTTP/1.1 2x0 OK\r\n\r\n", False),
    ("short-status", b"HTTP/1.1 20 OK\r\n\r\n", False),
    ("long-status", b"HTTP/1.1 2000 OK\r\n\r\n", False),
    ("no-space-after-version", b"HTTP/1.1200 OK\r\n\r\n", False),
    ("status-below-100", b"HTTP/1.1 099 Odd\r\n\r\n", False),
    ("status-above-599", b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", False),
    ("status-600-head", b"HTTP/1.1 600 Odd\r\n\r\n", True),
    ("101-switching", response("101 Switching Protocols", ["Upgrade: websocket"]), False),
    ("101-head", response("101 Switching Protocols"), True),
    ("no-colon-known-prefix", response(headers=["Content"]), False),
    ("cr-without-lf-ending-head", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\rX", False),
    ("cl-non-numeric", response(headers=["Content-Length: abc"]), False),
    ("cl-trailing-junk", response(headers=["Content-Length: 12a"]), False),
    ("cl-negative", response(headers=["Content-Length: -1"]), False),
    ("cl-empty", response(headers=["Content-Length: "]), False),
    ("cl-list-differing", response(headers=["Content-Length: 5, 6"]), False),
    ("cl-list-empty-element", response(headers=["Content-Length: 5,"]), False),
    ("cl-list-leading-comma", response(headers=["Content-Length: , 5"]), False),
    ("cl-list-other-line", response(headers=["Content-Length: 5, 5", "Content-Length: 6"]),
     False),
    # RFC 9112 5.1: no whitespace between a field name and its colon; a name is a token.
    ("space-before-colon", response(headers=["Content-Length : 5"], body=b"hello"), False),
    ("tab-before-colon", response(headers=["Content-Length\t: 5"], body=b"hello"), False),
    ("space-before-colon-unknown", response(headers=["X-Thing : 5", "Content-Length: 0"]),
     False),
    ("space-in-name", response(headers=["Content Length: 5"]), False),
    ("empty-name", response(headers=[": 5", "Content-Length: 0"]), False),
    ("non-token-in-name", response(headers=["X(Thing): 5", "Content-Length: 0"]), False),
    # RFC 9112 5.2: obs-fold continues a field; nothing to continue after the status line, and
    # a folded framing header is refused (see the README's table).
    ("fold-first-line", response(headers=[" folded", "Content-Length: 0"]), False),
    ("fold-content-length", response(headers=["Content-Length: 5", " 5"]), False),
    ("fold-transfer-encoding", response(headers=["Transfer-Encoding: gzip,", " chunked"]),
     False),
    ("fold-connection", response(headers=["Connection: keep-alive", " close"]), False),
    # RFC 9112 2.2: a bare CR is no line ending.
    ("cr-inside-cl", response(headers=["Content-Length: 1\r2"]), False),
    ("cr-inside-connection", response(headers=["Connection: clo\rse", "Content-Length: 0"]),
     False),
    ("chunk-size-bare-cr",
     response(headers=["Transfer-Encoding: chunked"], body=b"1\r1\r\n" + b"x" * 17 + b"\r\n0\r\n\r\n"),
     False),
    ("chunk-ext-bare-cr",
     response(headers=["Transfer-Encoding: chunked"], body=b"1;a\rb\r\nx\r\n0\r\n\r\n"),
     False),
    ("chunk-size-space-digits",
     response(headers=["Transfer-Encoding: chunked"], body=b"1 1\r\nx\r\n0\r\n\r\n"), False),
    ("chunk-size-leading-space",
     response(headers=["Transfer-Encoding: chunked"], body=b" 1\r\nx\r\n0\r\n\r\n"), False),
    ("cl-too-many-digits", response(headers=["Content-Length: 1234567890123456"]), False),
    ("cl-conflicting", response(headers=["Content-Length: 3", "Content-Length: 4"], body=b"abcd"),
     False),
    ("cl-conflicting-case", response(headers=["content-length: 3", "CONTENT-LENGTH: 30"]), False),
    ("headers-over-64k", response(headers=["X-Big: " + "a" * 70000, "Content-Length: 0"]), False),
    ("many-headers-over-64k",
     response(headers=[f"X-H{i}: {'v' * 90}" for i in range(800)] + ["Content-Length: 0"]),
     False),
    ("chunk-size-not-hex",
     response(headers=["Transfer-Encoding: chunked"], body=b"zz\r\nab\r\n0\r\n\r\n"), False),
    ("chunk-size-empty", response(headers=["Transfer-Encoding: chunked"], body=b"\r\nab\r\n"),
     False),
    ("chunk-size-only-ext",
     response(headers=["Transfer-Encoding: chunked"], body=b";x=1\r\nab\r\n"), False),
    ("chunk-size-too-long",
     response(headers=["Transfer-Encoding: chunked"], body=b"1" * 16 + b"\r\n"), False),
    ("chunk-size-negative", response(headers=["Transfer-Encoding: chunked"], body=b"-1\r\n"),
     False),
    ("chunk-data-no-crlf",
     response(headers=["Transfer-Encoding: chunked"], body=b"3\r\nabcX\r\n0\r\n\r\n"), False),
    ("chunk-data-cr-no-lf",
     response(headers=["Transfer-Encoding: chunked"], body=b"3\r\nabc\rX0\r\n\r\n"), False),
    ("chunk-last-cr-no-lf",
     response(headers=["Transfer-Encoding: chunked"], body=b"0\r\n\rX"), False),
]


@pytest.mark.parametrize("data, head", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_error(data: bytes, head: bool) -> None:
    p = ResponseParser(head=head)
    used = p.feed(data)
    assert p.error and not p.done
    assert used <= len(data)
    # An errored parser takes nothing more.
    assert p.feed(b"HTTP/1.1 200 OK\r\n\r\n") == 0
    assert p.error


@pytest.mark.parametrize("data, head", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_error_byte_at_a_time(data: bytes, head: bool) -> None:
    p = ResponseParser(head=head)
    for i in range(len(data)):
        p.feed(data[i:i + 1])
        if p.error:
            break
    assert p.error and not p.done


def test_headers_just_under_the_limit_are_fine() -> None:
    data = response(headers=["X-Big: " + "a" * 60000, "Content-Length: 2"], body=b"ok")
    p, used = parse(data)
    assert p.done and used == len(data)


def test_header_line_without_colon_unknown_name() -> None:
    p, _ = parse(response(headers=["BadHeader", "Content-Length: 0"]))
    assert p.error and not p.done


def test_content_length_with_inner_space_is_an_error() -> None:
    p, _ = parse(response(headers=["Content-Length: 1 2"], body=b"x" * 12))
    assert p.error and not p.done


# ---------------------------------------------------------------------------------------------
# EOF.

def test_eof_before_any_byte_is_reset() -> None:
    p = ResponseParser()
    assert p.eof() == "reset"
    assert not p.done


def test_eof_after_empty_feed_is_reset() -> None:
    p = ResponseParser()
    assert p.feed(b"") == 0
    assert p.eof() == "reset"


EOF_PROTOCOL = [
    ("mid-status", b"HT"),
    ("status-line", b"HTTP/1.1 200 OK\r\n"),
    ("mid-headers", b"HTTP/1.1 200 OK\r\nContent-Len"),
    ("before-blank-line", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"),
    ("mid-cl-body", response(headers=["Content-Length: 5"], body=b"hel")),
    ("no-cl-body-yet", response(headers=["Content-Length: 5"])),
    ("mid-chunk-size", response(headers=["Transfer-Encoding: chunked"], body=b"1")),
    ("mid-chunk", response(headers=["Transfer-Encoding: chunked"], body=b"5\r\nab")),
    ("before-last-chunk",
     response(headers=["Transfer-Encoding: chunked"], body=b"2\r\nab\r\n")),
    ("mid-trailers",
     response(headers=["Transfer-Encoding: chunked"], body=b"0\r\nX-T: 1\r\n")),
    ("after-interim", response("100 Continue")),
    ("interim-head", response("103 Early Hints", ["Link: </a>"])[:-2]),
]


@pytest.mark.parametrize("data", [c[1] for c in EOF_PROTOCOL], ids=[c[0] for c in EOF_PROTOCOL])
def test_eof_part_way_is_protocol(data: bytes) -> None:
    p = ResponseParser()
    assert p.feed(data) == len(data)
    assert not p.done and not p.error
    assert p.eof() == "protocol"
    assert p.error and not p.done


# ---------------------------------------------------------------------------------------------
# Capture of one header's value (backend attribution).

CAPTURE = [
    ("plain", "X-Served-By", ["X-Served-By: web-1"], b"web-1"),
    ("trimmed", "X-Served-By", ["X-Served-By: \t  web-2 \t "], b"web-2"),
    ("inner-space-kept", "X-Served-By", ["X-Served-By:  a b  "], b"a b"),
    ("name-case", "X-Served-By", ["x-SERVED-by: web-3"], b"web-3"),
    ("capture-arg-case", "x-served-by", ["X-Served-By: web-4"], b"web-4"),
    ("absent", "X-Served-By", ["Server: x"], b""),
    ("empty", "X-Served-By", ["X-Served-By:"], b""),
    ("longer-name-ignored", "X-Served-By", ["X-Served-By-Proxy: p", "X-Served-By: b"], b"b"),
    ("prefix-name-ignored", "X-Served-By", ["X-Served: p"], b""),
    ("last-wins", "X-Served-By", ["X-Served-By: a", "X-Served-By: b"], b"b"),
    ("no-capture", None, ["X-Served-By: web-1"], b""),
]


@pytest.mark.parametrize("capture, headers, value", [c[1:] for c in CAPTURE],
                         ids=[c[0] for c in CAPTURE])
def test_capture(capture: str | None, headers: list[str], value: bytes) -> None:
    data = response(headers=[*headers, "Content-Length: 2"], body=b"ok")
    for pieces in (None, list(range(len(data)))):
        p, used = parse(data, capture=capture, pieces=pieces)
        assert p.done and used == len(data)
        assert p.captured == value


def test_capture_is_truncated_not_overflowing() -> None:
    data = response(headers=["X-Served-By: " + "b" * 500, "Content-Length: 0"])
    p, used = parse(data, capture="X-Served-By")
    assert p.done and used == len(data)
    assert 0 < len(p.captured) <= 500
    assert set(p.captured) == {ord("b")}


def test_capture_of_interim_response_is_dropped() -> None:
    data = (response("103 Early Hints", ["X-Served-By: edge"])
            + response(headers=["Content-Length: 0"]))
    p, _ = parse(data, capture="X-Served-By")
    assert p.done and p.status == 200 and p.captured == b""


# ---------------------------------------------------------------------------------------------
# Properties.

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
                min_size=1, max_size=12)
header_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                       max_size=30)
extra_headers = st.lists(
    st.tuples(token.map(lambda s: "X-" + s).filter(lambda n: n.lower() != "x-served-by"),
              header_value),
    max_size=6)
statuses = st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304))


@st.composite
def valid_responses(draw: st.DrawFn) -> tuple[bytes, int, bool, bytes]:
    """(bytes, status, keep_alive, served_by) of one well-formed final response."""
    status = draw(statuses)
    headers = [f"{k}: {v}" for k, v in draw(extra_headers)]
    served = draw(st.one_of(st.none(), token))
    if served is not None:
        headers.insert(draw(st.integers(0, len(headers))), f"X-Served-By: {served}")
    close = draw(st.booleans())
    if close:
        headers.append("Connection: close")
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        headers.append(f"Content-Length: {len(body)}")
        framed = body
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
        bounds = [0, *cuts, len(body)]
        chunks = [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        headers.append("Transfer-Encoding: chunked")
        framed = chunked(chunks, hex_upper=draw(st.booleans()),
                         trailers=tuple(f"{k}: {v}" for k, v in draw(extra_headers)))
    if draw(st.booleans()):
        headers = [h.lower() if draw(st.booleans()) else h.upper() for h in headers]
        if served is not None:
            served_line = [h for h in headers if h.lower().startswith("x-served-by:")][0]
            served = served_line.split(":", 1)[1].strip()
    data = response(f"{status} Reason", headers, framed)
    if draw(st.booleans()):
        data = response("100 Continue") + data
    return data, status, not close, (served or "").encode()


@settings(max_examples=150, deadline=None)
@given(valid_responses(), st.data())
def test_split_anywhere_same_result(resp: tuple[bytes, int, bool, bytes], data: st.DataObject,
                                    ) -> None:
    raw, status, keep_alive, served = resp
    whole, used = parse(raw, capture="X-Served-By")
    assert (whole.done, whole.error, used) == (True, False, len(raw))
    assert (whole.status, whole.keep_alive, whole.captured) == (status, keep_alive, served)

    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12), label="cuts")
    split, used = parse(raw, capture="X-Served-By", pieces=cuts)
    assert (split.done, split.error, used) == (True, False, len(raw))
    assert (split.status, split.keep_alive, split.captured) == (status, keep_alive, served)


@settings(max_examples=100, deadline=None)
@given(valid_responses(), st.binary(min_size=1, max_size=50))
def test_trailing_bytes_never_consumed(resp: tuple[bytes, int, bool, bytes],
                                       extra: bytes) -> None:
    raw, status, _, _ = resp
    p = ResponseParser()
    assert p.feed(raw + extra) == len(raw)
    assert p.done and p.status == status


@settings(max_examples=100, deadline=None)
@given(valid_responses(), st.data())
def test_truncated_response_then_eof_is_protocol(resp: tuple[bytes, int, bool, bytes],
                                                 data: st.DataObject) -> None:
    raw, _, _, _ = resp
    cut = data.draw(st.integers(1, len(raw) - 1), label="cut")
    p = ResponseParser()
    assert p.feed(raw[:cut]) == cut
    assert not p.done and not p.error
    assert p.eof() == "protocol"
    assert p.error


garbage = st.one_of(
    st.binary(max_size=200),
    # Mostly-valid prefixes make the parser go deeper than the status line.
    st.tuples(st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 C\r\n\r\nHTTP/1.1 ",
                               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                               b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",
                               b"HTTP/1.0 404 X\n"]),
              st.binary(max_size=200)).map(lambda t: t[0] + t[1]),
)


@settings(max_examples=300, deadline=None)
@given(garbage, st.booleans(), st.one_of(st.none(), st.just("X-Served-By")),
       st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_never_crash(raw: bytes, head: bool, capture: str | None,
                                  cuts: list[int]) -> None:
    p = ResponseParser(head=head, capture=capture)
    at, used = 0, 0
    for cut in sorted(c for c in cuts if c <= len(raw)) + [len(raw)]:
        piece = raw[at:cut]
        n = p.feed(piece)
        assert 0 <= n <= len(piece)
        if not (p.done or p.error):
            assert n == len(piece)   # wanting more: everything so far was taken
        used += n
        at = max(at, cut)
    assert used <= len(raw)
    assert not (p.done and p.error)
    if p.done or p.error:
        return
    assert used == len(raw)
    assert p.eof() in (None, "reset", "protocol")
    assert p.done or p.error or not raw
    assert isinstance(p.status, int) and isinstance(p.captured, bytes)


@pytest.mark.parametrize("status, body, keep_alive", [
    ("413 Content Too Large", True, False), ("417 Expectation Failed", True, False),
    ("413 Content Too Large", False, True), ("400 Bad Request", True, True),
    ("201 Created", True, True)])
def test_a_refused_body_ends_the_connection(status: str, body: bool, keep_alive: bool) -> None:
    """After a 413 or 417 to a request with a body the connection is not reused: the server
    may not have read the body, and may take it for the next request."""
    p = ResponseParser(body=body)
    data = response("100 Continue") + response(status, ["Content-Length: 0"])
    assert p.feed(data) == len(data) and p.done and p.keep_alive is keep_alive
