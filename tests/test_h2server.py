"""The misbehaving HTTP/2 test server (tests/h2server.py) does what each mode says, on the wire,
and its counts reconcile with what an `h2` client saw."""

from __future__ import annotations

import importlib.util
from collections import Counter

import h2.events
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from h2client import H2Client
from h2server import H2Server
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, PingFrame

REFUSED, INTERNAL = int(ErrorCodes.REFUSED_STREAM), int(ErrorCodes.INTERNAL_ERROR)


def _all(client: H2Client, streams: list[int]) -> None:
    client.run(lambda: client.done(*streams))


def _sync(client: H2Client) -> None:
    """A PING round trip: once its ACK is back, the server has handled everything sent before."""
    acks = sum(isinstance(e, h2.events.PingAckReceived) for e in client.events)
    client.ping()
    client.run(lambda: sum(isinstance(e, h2.events.PingAckReceived)
                           for e in client.events) > acks)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode 'bogus'"):
        H2Server("bogus")


def test_normal() -> None:
    with H2Server() as server, H2Client(server.port) as client:
        streams = [client.request("/") for _ in range(5)]
        sized = client.request("/?size=70000")       # over the client's 64 kB window
        _all(client, [*streams, sized])
        for sid in streams:
            reply = client.replies[sid]
            assert (reply.status, reply.body) == (200, b"x" * 16)
            assert reply.header(b"x-stream-id") == str(sid).encode()
        assert len(client.replies[sized].body) == 70_000
        counts = server.counts()
        assert (counts["connections"], counts["opened"], counts["answered"]) == (1, 6, 6)
        assert counts["frames_sent"]["HEADERS"] == 6
        assert counts["reset"] == {} and counts["protocol_errors"] == 0


def test_continuation_frames() -> None:
    with H2Server("continuation") as server, H2Client(server.port) as client:
        streams = [client.request("/") for _ in range(2)]
        _all(client, streams)
        types = client.frame_types()
        assert types.count("CONTINUATION") >= 2
        # Every HEADERS frame without END_HEADERS is followed by CONTINUATION frames only.
        for i, frame in enumerate(client.frames):
            if isinstance(frame, HeadersFrame) and "END_HEADERS" not in frame.flags:
                assert isinstance(client.frames[i + 1], ContinuationFrame)
        for sid in streams:
            big = [v for k, v in client.replies[sid].headers if k.startswith(b"x-big-")]
            assert sum(map(len, big)) == 36_000
        assert server.counts()["frames_sent"]["CONTINUATION"] == types.count("CONTINUATION")
        assert server.counts()["answered"] == 2


def _header_blocks(client: H2Client) -> list[bytes]:
    return [bytes(f.data) for f in client.frames if isinstance(f, HeadersFrame)]


def test_hpack_indexed_headers_and_table_size_updates() -> None:
    with H2Server("hpack") as server, H2Client(server.port) as client:
        for _ in range(4):                       # one at a time: ordinals 1..4 in order
            sid = client.request("/")
            _all(client, [sid])
        blocks = _header_blocks(client)
        assert len(blocks) == 4
        # The second response repeats the first's 24 headers from the dynamic table.
        assert len(blocks[1]) * 4 < len(blocks[0])
        # The third starts with two dynamic table size updates (001xxxxx): to 0, then 4096 ...
        assert blocks[2][0] == 0x20 and blocks[2][1] & 0xE0 == 0x20
        assert not blocks[0][0] & 0xE0 == 0x20
        # ... so its headers are literal again, and the fourth is indexed again.
        assert len(blocks[2]) > len(blocks[0]) // 2 and len(blocks[3]) * 4 < len(blocks[0])
        lists = [[h for h in r.headers if h[0] != b"x-stream-id"] for r in client.replies.values()]
        assert all(h == lists[0] for h in lists) and len(lists[0]) > 24
        assert server.counts()["answered"] == 4


def test_tiny_windows() -> None:
    with H2Server("window", body_size=100_000) as server, H2Client(server.port) as client:
        client.run(lambda: client.conn.remote_settings.initial_window_size == 256)
        streams = [client.request("/upload", "POST", body=b"u" * 3000) for _ in range(2)]
        _all(client, streams)
        assert [len(client.replies[s].body) for s in streams] == [100_000] * 2
        counts = server.counts()
        assert counts["request_bytes"] == 6000 and counts["answered"] == 2
        # The server opened the request windows bit by bit; the client opened the response's.
        assert counts["frames_sent"]["WINDOW_UPDATE"] >= 6000 // 512
        assert client.window_updates_sent > 0
        assert max(len(f.data) for f in client.frames if type(f).__name__ == "DataFrame") \
            <= 16_384


def test_ping_from_the_server() -> None:
    with H2Server("ping") as server, H2Client(server.port) as client:
        streams = [client.request("/") for _ in range(3)]
        _all(client, streams)
        _sync(client)
        pings = [f for f in client.frames if isinstance(f, PingFrame) and "ACK" not in f.flags]
        assert len(pings) == 3
        counts = server.counts()
        assert counts["pings_sent"] == counts["ping_acks"] == 3


def test_goaway_mid_run() -> None:
    with H2Server("goaway") as server:
        with H2Client(server.port) as client:
            streams = [client.request("/") for _ in range(4)]      # ids 1, 3, 5, 7
            client.run_until_closed()
            assert client.goaway is not None and client.goaway.last_stream_id == 3
            assert client.goaway.error_code == ErrorCodes.NO_ERROR
            assert [client.replies[s].ended for s in streams] == [True, True, False, False]
            assert client.frame_types().count("GOAWAY") == 1
        # The client retries the two unprocessed streams on a new connection: served normally.
        with H2Client(server.port) as retry:
            again = [retry.request("/") for _ in range(2)]
            _all(retry, again)
        counts = server.counts()
        assert counts["connections"] == 2 and counts["goaways_sent"] == 1
        assert counts["opened"] == 6 and counts["answered"] == 4
        assert counts["refused_goaway"] == 2
        assert counts["opened"] == counts["answered"] + counts["refused_goaway"]
        assert counts["frames_sent"]["GOAWAY"] == 1


def test_lowered_max_concurrent_streams() -> None:
    with H2Server("settings", delay=0.1) as server, H2Client(server.port) as client:
        first = [client.request("/") for _ in range(2)]
        _all(client, first)
        changes = [e for e in client.events if isinstance(e, h2.events.RemoteSettingsChanged)
                   and SettingCodes.MAX_CONCURRENT_STREAMS in e.changed_settings]
        assert changes[-1].changed_settings[SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 1
        _sync(client)                          # the server has our SETTINGS ACK
        # A client that keeps to the new limit: one stream at a time, all answered.
        for _ in range(2):
            sid = client.request("/")
            _all(client, [sid])
            assert client.replies[sid].status == 200
        assert server.counts()["over_limit"] == 0
        # One that ignores it (told by a doctored view of the server's settings) has every
        # stream beyond the first refused.
        client.conn.remote_settings = Settings(client=False)
        burst = [client.request("/") for _ in range(3)]
        _all(client, burst)
        assert [client.replies[s].reset for s in burst] == [None, REFUSED, REFUSED]
        assert client.replies[burst[0]].status == 200
        counts = server.counts()
        assert counts["settings_sent"] == 1 and counts["over_limit"] == 2
        assert counts["opened"] == 7 and counts["answered"] == 5


def test_rst_stream_codes() -> None:
    with H2Server("reset") as server, H2Client(server.port) as client:
        streams = [client.request("/") for _ in range(6)]
        _all(client, streams)
        assert [client.replies[s].reset for s in streams] == \
            [None, REFUSED, INTERNAL, None, REFUSED, INTERNAL]
        assert [client.replies[s].status for s in streams[::3]] == [200, 200]
        counts = server.counts()
        assert counts["reset"] == {REFUSED: 2, INTERNAL: 2}
        assert counts["answered"] == 2 and counts["opened"] == 6
        assert counts["frames_sent"]["RST_STREAM"] == client.frame_types().count("RST_STREAM") == 4


def test_response_delay_reorders_answers() -> None:
    with H2Server("delay") as server, H2Client(server.port) as client:
        streams = [client.request("/") for _ in range(3)]     # delays 0.2 s, 0, 0.1 s
        _all(client, streams)
        ended = [e.stream_id for e in client.events if isinstance(e, h2.events.StreamEnded)]
        assert ended == [streams[1], streams[2], streams[0]]
        assert server.counts()["answered"] == 3


@pytest.mark.parametrize("cert_tool", ["trustme", "openssl"])
def test_tls_with_alpn(cert_tool: str) -> None:
    if cert_tool == "trustme" and importlib.util.find_spec("trustme") is None:
        pytest.skip("trustme is not installed (pip install trustme); openssl covers TLS")
    with H2Server(tls=True, cert_tool=cert_tool) as server:
        assert server.url.startswith("https://")
        with H2Client(server.port, ssl_context=server.client_context()) as client:
            assert client.alpn == "h2"
            sid = client.request("/")
            _all(client, [sid])
            assert client.replies[sid].status == 200
        assert Counter(server.counts()["frames_sent"])["HEADERS"] == 1


def test_frames_from_goaway_frame_parse() -> None:
    # The client's frame log is what h2 was fed: a GOAWAY it saw is a parsed GoAwayFrame.
    with H2Server("goaway", goaway_after=1, goaway_keep=0) as server, \
            H2Client(server.port) as client:
        client.request("/")
        client.run_until_closed()
        frames = [f for f in client.frames if isinstance(f, GoAwayFrame)]
        assert [f.last_stream_id for f in frames] == [0]
        assert server.counts()["refused_goaway"] == 1


def test_tls_server_that_will_not_negotiate_h2() -> None:
    with H2Server(tls=True, cert_tool="openssl", alpn=("http/1.1",)) as server, \
            H2Client(server.port, ssl_context=server.client_context()) as client:
        assert client.alpn is None          # offered h2 only: no protocol in common
