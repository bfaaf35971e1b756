"""The engine's HTTP/1.1 response parser against h11, a well-kept reference parser.

Hypothesis builds HTTP/1.1 responses (status lines with and without reasons, Content-Length
and Transfer-Encoding variants, lists, duplicates, odd whitespace, obs-fold, interim
responses, chunked bodies with extensions and trailers, bodies shorter or longer than their
framing, bare-LF line ends) and feeds each, whole or cut anywhere, to both. Wherever h11 reads
a response (its status and where it ends), loadforge reads the same; wherever h11 refuses it,
loadforge refuses it too (the engine counts `protocol`). Where the two part on purpose, the
cases are in DELIBERATE below, each with the RFC reason; the README's table "What loadforge
reports when the server misbehaves" lists the decisions.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadforge._core import ResponseParser

Reading = tuple[int, int] | None    # (status, bytes the response took), None: refused


def h11_reads(data: bytes) -> Reading:
    """What h11 makes of `data` as the answer to a GET; the peer closes after it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    status, closed = 0, False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if closed:
                    return None
                conn.receive_data(b"")
                closed = True
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status, len(data) - len(conn.trailing_data[0])
            elif isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None


def loadforge_reads(data: bytes, cuts: list[int] = ()) -> Reading:  # type: ignore[assignment]
    """What the engine's parser makes of `data` fed in pieces; the peer closes after it."""
    p = ResponseParser()
    used, at = 0, 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if at < cut <= len(data):
            used += p.feed(data[at:cut])
            at = cut
        if p.done or p.error:
            break
    if p.error:
        return None
    if p.done:
        return p.status, used
    return None if p.eof() is not None else (p.status, len(data))


# -- generated responses ------------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = st.text(TCHARS, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "connection"))
# Visible characters with single inner spaces: a value both parsers read the same way.
values = st.from_regex(r"[!-~]{1,8}( [!-~]{1,8}){0,2}", fullmatch=True)
ows = st.sampled_from(["", " ", "  ", "\t", " \t"])


def case_variants(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda ups: "".join(c.upper() if u else c for c, u in zip(word, ups, strict=True)))


@st.composite
def length_value(draw: st.DrawFn) -> str:
    """A Content-Length value: a number, a list of (mostly) the same number, or junk."""
    n = draw(st.integers(0, 40))
    kind = draw(st.sampled_from(["plain", "list", "list-differing", "junk"]))
    if kind == "plain":
        return draw(ows) + str(n) + draw(ows)
    if kind == "list":
        return (draw(ows) + "," .join(draw(ows) + str(n) + draw(ows)
                                      for _ in range(draw(st.integers(2, 3)))))
    if kind == "list-differing":
        return f"{n}, {n + draw(st.integers(1, 3))}"
    return draw(st.sampled_from(["", "+5", "5a", "-1", "0x5", "5 5", ",5", "5,", "1,,1"]))


@st.composite
def header_lines(draw: st.DrawFn) -> list[str]:
    """Header lines (no line ends), framing ones among others."""
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["other", "other", "fold", "length", "length", "chunked",
                                     "chunked", "connection"] + ["odd"] * (_ == 0)))
        if kind == "other":
            lines.append(f"{draw(names)}:{draw(ows)}{draw(values)}{draw(ows)}")
        elif kind == "fold" and lines and lines[-1][:1] not in (" ", "\t") \
                and lines[-1].split(":")[0].lower() not in (
                    "content-length", "transfer-encoding", "connection"):
            # RFC 9112 5.2: obs-fold after a field nobody reads (see DELIBERATE for the rest)
            lines.append(draw(st.sampled_from([" ", "\t", "  "])) + draw(values))
        elif kind == "length":
            lines.append(f"{draw(case_variants('content-length'))}:{draw(length_value())}")
        elif kind == "chunked":
            lines.append(f"{draw(case_variants('transfer-encoding'))}:{draw(ows)}"
                         f"{draw(case_variants('chunked'))}{draw(ows)}")
        elif kind == "connection":
            token = draw(st.sampled_from(["close", "keep-alive", "upgrade", "close, upgrade"]))
            lines.append(f"Connection:{draw(ows)}{token}")
        elif kind == "odd":
            # Both refuse these (RFC 9112 5.1): whitespace before the colon, no colon, no name,
            # a byte no name holds.
            lines.append(draw(st.sampled_from([
                "Content-Length : 1", "X-A\t: b", "NoColon", ": empty", "X A: b", "X(a): b",
                "Content-Length:\t1 1"])))
    # h11 takes one Transfer-Encoding line only (DELIBERATE: loadforge takes the list)
    seen_te = False
    kept = []
    for line in lines:
        if line.lower().startswith("transfer-encoding"):
            if seen_te:
                continue
            seen_te = True
        kept.append(line)
    return kept


@st.composite
def chunked_body(draw: st.DrawFn, eol: str) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=20))
        size = f"{len(data):x}"
        size = draw(st.sampled_from([size, size.upper(), "0" + size]))
        ext = draw(st.sampled_from(["", ";a", ";a=b", ';name="v;al"', ";a=1;b=2"]))
        trail = draw(st.sampled_from(["", " ", "\t"]))
        out += (size + ext + trail + "\r\n").encode() + data + b"\r\n"
    out += b"0" + draw(st.sampled_from([b"", b";last"])) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += f"{draw(names)}: {draw(values)}{eol}".encode()
    out += eol.encode()
    if draw(st.booleans()):
        # cut short: both must refuse at the close
        out = out[:draw(st.integers(0, max(len(out) - 1, 0)))]
    return out


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        code = draw(st.sampled_from(["100 Continue", "103 Early Hints", "102"]))
        extra = draw(st.lists(st.sampled_from(["Link: </a>", "X-I: 1"]), max_size=2))
        out += ("HTTP/1.1 " + code + eol + "".join(h + eol for h in extra) + eol).encode()
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    status = draw(st.sampled_from([200, 200, 201, 204, 206, 301, 304, 404, 413, 500, 503, 599]))
    reason = draw(st.sampled_from([" OK", "", " ", " Some Reason", " \tx"]))
    lines = draw(header_lines())
    out += (f"HTTP/{version} {status}{reason}{eol}"
            + "".join(line + eol for line in lines) + eol).encode()
    if any(line.lower().startswith("transfer-encoding") for line in lines) \
            and draw(st.integers(0, 3)):
        out += draw(chunked_body(eol))
    else:
        out += draw(st.binary(max_size=48))
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.lists(st.integers(0, 400), max_size=4))
def test_loadforge_reads_what_h11_reads(data: bytes, cuts: list[int]) -> None:
    expected = h11_reads(data)
    assert loadforge_reads(data) == expected, data
    # The same, fed in pieces cut anywhere (the byte-at-a-time states).
    assert loadforge_reads(data, cuts) == expected, (data, cuts)


# -- where loadforge parts from h11 on purpose ---------------------------------------------------

HEAD = b"HTTP/1.1 200 OK\r\n"
TE = b"Transfer-Encoding: chunked\r\n\r\n"

ALL = -1     # the whole response

# (id, response, what loadforge reads, what h11 reads, why)
DELIBERATE = [
    ("te-gzip-chunked", HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
     (200, ALL), None, "RFC 9112 6.3: chunked last is chunked; h11 knows chunked alone"),
    ("te-gzip", HEAD + b"Transfer-Encoding: gzip\r\n\r\nabc", (200, ALL), None,
     "RFC 9112 6.3: a final coding other than chunked runs to the close"),
    ("te-two-lines", HEAD + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", (200, ALL), None, "RFC 9110 5.3: two lines are one list"),
    ("status-600", b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", None, (600, ALL),
     "RFC 9110 15: status codes are 100-599"),
    ("http-2.0", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", None, (200, ALL),
     "an HTTP/1.x connection answers in HTTP/1.x"),
    ("fold-after-length", HEAD + b"Content-Length: 2\r\n 2\r\n\r\nok", None, None,
     "both refuse: h11 reads \"2 2\""),
    ("fold-after-connection", HEAD + b"Connection: keep-alive,\r\n close\r\nContent-Length: 0"
     b"\r\n\r\n", None, (200, ALL), "a folded framing header is refused (request smuggling)"),
    ("control-byte-in-unread-value", HEAD + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
     (200, ALL), None, "values nobody reads are not validated"),
    ("bare-cr-in-unread-value", HEAD + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n", (200, ALL),
     None, "values nobody reads are not validated"),
    ("bad-trailer-line", HEAD + TE + b"0\r\nnot a field\r\n\r\n", (200, ALL), None,
     "trailer fields are skipped unread"),
    ("bare-cr-in-chunk-ext", HEAD + TE + b"1;a\rb\r\nx\r\n0\r\n\r\n", None, (200, ALL),
     "RFC 9112 2.2, 7.1.1: a chunk extension holds no CR; h11 takes any byte"),
    ("space-before-chunk-ext", HEAD + TE + b"1 ;a\r\nx\r\n0\r\n\r\n", (200, ALL), None,
     "RFC 9112 7.1.1: BWS before \";\""),
    ("bare-lf-chunk-lines", HEAD + TE + b"1\nx\n0\r\n\r\n", (200, ALL), None,
     "RFC 9112 2.2: a recipient may take LF alone as a line end"),
    ("chunk-size-16-digits", HEAD + TE + b"0000000000000001\r\nx\r\n0\r\n\r\n", None,
     (200, ALL), "at most 15 hex digits: a size past 2^60 is no real chunk"),
]


@pytest.mark.parametrize("data, ours, theirs",
                         [(c[1], c[2], c[3]) for c in DELIBERATE], ids=[c[0] for c in DELIBERATE])
def test_deliberate_differences(data: bytes, ours: Reading, theirs: Reading) -> None:
    ours = None if ours is None else (ours[0], len(data))
    theirs = None if theirs is None else (theirs[0], len(data))
    assert h11_reads(data) == theirs
    assert loadforge_reads(data) == ours
    assert loadforge_reads(data, list(range(len(data)))) == ours


def test_a_captured_value_keeps_its_first_line() -> None:
    p = ResponseParser(capture="X-Backend")
    data = HEAD + b"X-Backend: b1\r\n more\r\nContent-Length: 0\r\n\r\n"
    assert p.feed(data) == len(data) and p.done and p.captured == b"b1"
