"""The coordinator of one run: target, preflight, workers, the exact merge, the rows.

Workers report each 1 s interval; once every worker has reported an interval, its cells are
merged with hdrh into interval rows and streamed to the Parquet file, and folded into the
per-stage histograms. Only those per-stage histograms stay in memory, so memory does not grow
with the length of a run. What a run is from plan to summary (sandbox, observers, verdicts)
is loadforge/runner.py's, above this.
"""

from __future__ import annotations

import gc
import os
import re
import secrets
import signal
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from loadforge import __version__, _core, schedule
from loadforge.config import feeders
from loadforge.config.files import RELATIVE_HINT, check_regular
from loadforge.config.plan import (
    ERROR_KINDS,
    FLOW_PREFIX,
    OUTCOMES,
    STATUS_OUTCOMES,
    Plan,
    Request,
)
from loadforge.config.tls import TLS
from loadforge.errors import (
    InputError,
    RunError,
    TargetUnreachable,
    WorkerCrashed,
)
from loadforge.results import histogram
from loadforge.run.progress import LiveProgress
from loadforge.run.workers import (
    DONE,
    FAILED,
    INTERVAL,
    WorkerPool,
    WorkerSpec,
    decode_done,
    decode_done_counts,
    decode_done_tls,
    decode_interval,
    failure_words,
    fd_limit,
)

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

    from loadforge.run.shards import ShardPool

USER_AGENT = f"loadforge/{__version__}"
READY_TIMEOUT_S = 30.0
# Time zero lies this far after the last worker is ready. Each worker then waits in recv()
# for it, woken within microseconds; the margin covers a busy machine's scheduling delay (a
# worker woken later sends its first arrivals late, timed from when they were due).
START_DELAY_NS = 20_000_000


@dataclass
class RunOptions:
    target: str | None = None         # overrides the profile's target
    workers: int | None = None
    out_dir: str = "results"
    labels: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    preflight: bool = True
    interval_s: float = 1.0
    backend_header: str | None = None
    # --slo objectives, archived apart from the profile so that `ls` judges them again.
    slo_flags: dict[str, float] = field(default_factory=dict)
    # Sharded runs (shards.py): how many shard processes, who starts them, the clock tolerance.
    shards: int = 0
    launcher: str = "local"
    max_clock_offset_s: float = 0.05
    kube: Any = None                  # kube.KubeOptions, with --launcher kubernetes
    # --coordinator-address (local, external), --shard-token-file and --shard-start-timeout
    coordinator_address: tuple[str, int] | None = None
    shard_token_file: str | None = None
    shard_start_timeout_s: float | None = None


@dataclass
class Target:
    url: str
    host: str          # for the Host header
    address: str       # what the engine connects to
    port: int
    path: str = ""     # the URL's path: a prefix of every request's path
    hostname: str = ""  # the URL's host without port: TLS verifies the certificate against it
    https: bool = False


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    path: str | None          # None when not even a partial result could be saved
    ok: bool
    signum: int = 0           # the signal that interrupted the run, 0 if none
    failure: str | None = None    # why the run could not go on (results kept, incomplete)

    @property
    def exit_code(self) -> int:
        """DESIGN.md's: 3 could not go on, 128 + N interrupted, 1 an SLO failed, else 0."""
        if self.failure:
            return 3
        if self.signum:
            return 128 + self.signum
        return 0 if self.ok else 1


def parse_target(url: str) -> Target:
    try:
        parts = urlsplit(url)
    except ValueError:          # an unbalanced "[" (an IPv6 literal)
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"target {url}: expected an http:// or https:// URL such as "
                         "http://127.0.0.1:8080/")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InputError(f"target {url}: {exc}") from None
    try:
        info = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetUnreachable(f"target {url}: cannot resolve {parts.hostname} ({exc.strerror})") from None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return Target(url, host, str(info[0][4][0]), port, parts.path, parts.hostname,
                  parts.scheme == "https")


def request_path(prefix: str, path: str) -> str:
    """The request target sent for `path` under the target URL's path `prefix`:
    http://h/api + /users -> /api/users (one slash between them). A path that does not start
    with "/" (the flags-only run's "" or "?query") is appended to the prefix as it is."""
    if not path.startswith("/"):
        return (prefix or "/") + path
    return prefix.rstrip("/") + path


def host_header(req: Request, host: str) -> str:
    """The request's own Host header (a virtual host on a load balancer reached by address),
    else the target's."""
    return next((value for name, value in req.headers if name.lower() == "host"), host)


def encode_request(req: Request, host: str, prefix: str = "") -> bytes:
    lines = [f"{req.method} {request_path(prefix, req.path)} HTTP/1.1",
             f"Host: {host_header(req, host)}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{name}: {value}" for name, value in req.headers if name.lower() != "host"]
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(req.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + req.body


# HTTP/2 forbids connection-specific headers (RFC 9113 8.2.2); Host becomes :authority.
_H2_DROPPED = ("host", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
               "upgrade", "content-length")


def h2_headers(req: Request, host: str, prefix: str = "",
               scheme: str = "http") -> list[tuple[str, str]]:
    """The request's HTTP/2 header list, pseudo-headers first, names in lower case; scheme is
    the target URL's (https once TLS carries h2)."""
    headers = [(":method", req.method), (":path", request_path(prefix, req.path) or "/"),
               (":scheme", scheme), (":authority", host_header(req, host)),
               ("user-agent", USER_AGENT)]
    headers += [(name.lower(), value) for name, value in req.headers
                if name.lower() not in _H2_DROPPED]
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        headers.append(("content-length", str(len(req.body))))
    return headers


def h2_template_head(req: Request, tpl: feeders.Template, host: str, prefix: str = "",
                     scheme: str = "http") -> list[tuple[str, feeders.Parts | None]]:
    """A templated request's HTTP/2 header block as h2_headers lays it out, its values as
    template parts (feeders.compile_h2_templates): the path and header values from the
    template (their ${VAR} resolved), the content-length computed when the body has slots."""
    head: list[tuple[str, feeders.Parts | None]] = [
        (":method", (req.method,)), (":path", (prefix.rstrip("/"), *tpl.path)),
        (":scheme", (scheme,)), (":authority", (host_header(req, host),)),
        ("user-agent", (USER_AGENT,))]
    head += [(name.lower(), parts) for name, parts in tpl.headers
             if name.lower() not in _H2_DROPPED]
    if any(isinstance(p, feeders.Slot) for p in tpl.body):
        head.append(("content-length", feeders.BODY_LENGTH))
    elif tpl.body or req.method in ("POST", "PUT", "PATCH"):
        length = sum(len(p) if isinstance(p, bytes) else len(p.encode("utf-8", "surrogateescape"))
                     for p in tpl.body if not isinstance(p, feeders.Slot))
        head.append(("content-length", (str(length),)))
    return head


def encode_h2_request(req: Request, host: str, prefix: str = "", scheme: str = "http",
                      ) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """What the engine's HTTP/2 side sends for req: its header list and body, as bytes."""
    return ([(k.encode("latin-1"), v.encode("latin-1"))
             for k, v in h2_headers(req, host, prefix, scheme)], req.body)


# Headers that describe a body: the preflight sends none.
_BODY_HEADERS = ("content-type", "content-length", "transfer-encoding", "content-encoding")


GRPC_CONTENT_TYPE = "application/grpc"
GRPC_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def preflight_request(requests: tuple[Request, ...],
                      templates: tuple[Any, ...] = ()) -> tuple[Request, bool]:
    """What the preflight sends, and whether its status is judged (a 404 stops the run).

    The first request of the mix that is a GET or HEAD without a body, as it stands; else (every
    request sends a body or changes state) a GET of the first request's path without its body
    headers, whose status says nothing about that path and is not judged. Never a body, never
    a method that changes state: the preflight reaches the target outside the run's counts.
    A gRPC run's (its first request a gRPC call) is the standard health check,
    `grpc.health.v1.Health/Check` without a message, not judged: a gRPC server answers it
    (UNIMPLEMENTED where it has no health service) where it resets a GET, which a proxy such
    as nginx's grpc_pass would count against the backend and take it out of rotation.
    """
    first = requests[0]
    if any(k.lower() == "content-type" and v.startswith(GRPC_CONTENT_TYPE)
           for k, v in first.headers):
        return Request(first.name, "POST", GRPC_HEALTH_CHECK,
                       (("content-type", GRPC_CONTENT_TYPE), ("te", "trailers")), b"",
                       first.weight), False
    templated = [i < len(templates) and templates[i] is not None for i in range(len(requests))]
    for req, t in zip(requests, templated, strict=True):
        if req.method in ("GET", "HEAD") and not req.body and not t:
            return req, True
    if templated[0]:
        # Its path holds {feeder.column} slots: the target's root, without the feeder's
        # values, judged by nothing but being answered.
        headers = tuple((k, v) for k, v in first.headers
                        if k.lower() not in _BODY_HEADERS and "{" not in v)
        return Request(first.name, "GET", "/", headers, b"", first.weight), False
    headers = tuple((k, v) for k, v in first.headers if k.lower() not in _BODY_HEADERS)
    return Request(first.name, "GET", first.path, headers, b"", first.weight), False


def preflight(target: Target, req: Request, timeout_s: float, judge_status: bool = True,
              tls: TLS | None = None, http: str = "1.1",
              fail_status: tuple[str, ...] = ("4xx", "5xx")) -> dict[str, Any]:
    """One request before the run, so a wrong URL fails in seconds with a clear message. Over
    TLS it verifies the certificate with the run's settings (a rejection is one line that
    names the reason and the fix) and returns what was negotiated. With http "2" it speaks
    HTTP/2: h2c by prior knowledge over TCP, h2 by ALPN over TLS. When tls.alpn offers
    http/1.1 too and the server chose it, the request goes out in HTTP/1.1, as the engine
    sends it on such a connection (one protocol per connection, from its ALPN)."""
    from dataclasses import replace

    scheme = "https" if target.https else "http"
    url = f"{scheme}://{target.host}{request_path(target.path, req.path)}"
    negotiated: dict[str, Any] = {}
    try:
        if http == "2":
            from loadforge.run.h2preflight import h2_status

            wrap = None if tls is None else _tls_wrapper(target, tls, negotiated)
            try:
                status = h2_status(target.address, target.port,
                                   h2_headers(req, target.host, target.path, scheme),
                                   min(timeout_s, 5.0), wrap,
                                   reset_answers=not judge_status)
            except _ChoseHttp1:
                # the h2 connection is closed unused; a fresh one asks for http/1.1 only,
                # should a balancer send it to another backend
                assert tls is not None
                status = _preflight_status(target, req, min(timeout_s, 5.0),
                                           replace(tls, alpn=("http/1.1",)), negotiated)
        else:
            status = _preflight_status(target, req, min(timeout_s, 5.0), tls, negotiated)
    except ssl.SSLError as exc:
        raise TargetUnreachable(f"target {target.url}: "
                                f"{tls_failure(exc, tls or TLS(), target)}") from None
    except (OSError, HTTPException) as exc:
        over = " over HTTP/2" if http == "2" else ""
        raise TargetUnreachable(f"target {target.url} is unreachable: {req.method} {url}{over} "
                                f"failed: {unreachable_reason(exc, target, timeout_s)}"
                                ) from None
    failing = f"{status // 100}xx" in fail_status
    if status == 404 and judge_status and failing:
        raise TargetUnreachable(f"target {target.url}: {req.method} {url} returned 404 Not Found, "
                                "an error by load.fail_status; check the URL and the request "
                                "paths (if a 404 is what this target answers, pass "
                                "--no-preflight, and set load.fail_status = [\"5xx\"] to count "
                                "4xx as successes)")
    if judge_status and failing:
        # Judged with the run's rule, but not fatal: a load test of a login wall is legitimate.
        cls = f"{status // 100}xx"
        negotiated["preflight_warning"] = (
            f"{req.method} {url} returned {status}, which the run counts as an error "
            f"(load.fail_status: {', '.join(fail_status)})" + (
                f"; if {status} is expected, set load.fail_status = "
                f"[{', '.join(repr(c).replace(chr(39), chr(34)) for c in fail_status if c != cls)}]"
                if cls == "4xx" else ""))
    if tls is not None and status == 400 and negotiated.get("client_cert_refused"):
        # nginx completes the handshake without a client certificate and answers 400 to
        # every request instead; as good as a refused handshake for a load test.
        raise TargetUnreachable(
            f"target {target.url}: TLS client certificate refused: {req.method} {url} returned "
            f"400 \"{negotiated['client_cert_refused']}\"; pass --client-cert and --client-key "
            "(tls.cert, tls.key) with a certificate the server trusts")
    negotiated.pop("client_cert_refused", None)
    if http == "2" and tls is not None and negotiated.get("alpn") != "h2" and not (
            negotiated.get("alpn") == "http/1.1" and "http/1.1" in tls.alpn):
        raise TargetUnreachable(
            f"target {target.url}: the server will not speak HTTP/2 over TLS (ALPN chose "
            f"{negotiated.get('alpn') or 'nothing'} when offered h2); drop --http 2, or point "
            "at a listener with HTTP/2 enabled")
    if http != "2" and negotiated.get("alpn") not in (None, "http/1.1"):
        raise TargetUnreachable(
            f"target {target.url}: the server chose {negotiated['alpn']} by ALPN, and the "
            "engine speaks http/1.1 over TLS: offer only http/1.1 in tls.alpn")
    return negotiated


class _ChoseHttp1(Exception):
    """The HTTP/2 preflight's server chose http/1.1 by ALPN, which tls.alpn offered."""


def unreachable_reason(exc: BaseException, target: Target, timeout_s: float) -> str:
    """Why the preflight got no answer, and what to do, in words (no exception names)."""
    where = f"{target.address}:{target.port}"
    if isinstance(exc, ConnectionRefusedError):
        return (f"nothing listens on {where} (connection refused): check the port or start "
                "the server")
    if isinstance(exc, socket.gaierror):
        return (f"cannot resolve {target.hostname} ({exc.strerror}): check the host name")
    if isinstance(exc, TimeoutError) and "whole exchange" in str(exc):
        return (f"no complete answer from {where} within {min(timeout_s, 5.0):g} s: is the "
                "server up, overloaded, or trickling its answer?")
    if isinstance(exc, TimeoutError | socket.timeout):
        return (f"no answer from {where} within {min(timeout_s, 5.0):g} s: is it up, and "
                "is a firewall dropping packets?")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return (f"{where} closed the connection (reset) before answering: does it speak "
                f"{'https' if target.https else 'plain http'} on this port?")
    if isinstance(exc, HTTPException):
        return (f"not an HTTP/1.1 answer from {where} ({exc.__class__.__name__.lower()}): "
                "does the port speak HTTP?")
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror.lower()} ({where})"
    return str(exc) or exc.__class__.__name__


def _tls_wrapper(target: Target, tls: TLS, negotiated: dict[str, Any]
                 ) -> Callable[[socket.socket], socket.socket]:
    """Wraps the HTTP/2 preflight's socket in TLS as the engine will: the run's verification
    settings and ALPN, and notes what was negotiated; raises _ChoseHttp1 when the server
    chose http/1.1 and tls.alpn offered it."""
    context = tls.ssl_context()
    name = tls.verify_name(target.hostname)

    def wrap(sock: socket.socket) -> socket.socket:
        wrapped = context.wrap_socket(sock, server_hostname=name)
        cipher = wrapped.cipher()
        negotiated.update({"protocol": wrapped.version(), "cipher": cipher[0] if cipher else None,
                           "alpn": wrapped.selected_alpn_protocol()})
        if negotiated["alpn"] == "http/1.1" and "http/1.1" in tls.alpn:
            wrapped.close()
            raise _ChoseHttp1()
        return wrapped

    return wrap


# OpenSSL's X509_V_ERR_* codes, by the reason a user can act on.
_EXPIRED = {9: "not yet valid", 10: "expired"}
_UNKNOWN_ISSUER = (2, 18, 19, 20, 21)
_NAME_MISMATCH = (62, 64)


def tls_failure(exc: ssl.SSLError, tls: TLS, target: Target) -> str:
    """One line: why the TLS handshake failed, and what to do about it."""
    name = tls.verify_name(target.hostname)
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _EXPIRED:
            return (f"certificate rejected: {_EXPIRED[code]} ({exc.verify_message}); renew the "
                    "server's certificate (or check this machine's clock)")
        if code in _UNKNOWN_ISSUER:
            return ("certificate rejected: unknown issuer (not signed by a trusted CA: "
                    f"{exc.verify_message}); pass --ca-cert CA.pem (tls.ca) with the CA that "
                    "signed it, or --insecure to skip verification")
        if code in _NAME_MISMATCH:
            return (f"certificate rejected: name mismatch (not valid for {name}); pass "
                    "--server-name NAME (tls.server_name) with a name the certificate carries")
        return (f"certificate rejected: {exc.verify_message}; fix the server's certificate, or "
                "pass --insecure to skip verification")
    reason = (exc.reason or str(exc)).upper().replace(" ", "_")
    if "CERTIFICATE_REQUIRED" in reason or ("HANDSHAKE_FAILURE" in reason and not tls.cert):
        return ("TLS handshake failed: the server requires a client certificate "
                f"({exc.reason}); pass --client-cert and --client-key (tls.cert, tls.key)")
    if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason \
            or "NO_PROTOCOLS_AVAILABLE" in reason:
        return (f"TLS handshake failed: no TLS version in common ({exc.reason}); the server "
                f"does not accept tls.versions {list(tls.versions)}")
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
        return (f"TLS handshake failed: the server rejected the client certificate "
                f"({exc.reason}); pass one signed by a CA it trusts (--client-cert)")
    if "NO_APPLICATION_PROTOCOL" in reason:
        hint = ("the server will not speak HTTP/2 over TLS; drop --http 2, or point at a "
                "listener with HTTP/2 enabled" if "h2" in tls.alpn else "check tls.alpn")
        return (f"TLS handshake failed: the server accepts none of the protocols offered by "
                f"ALPN ({', '.join(tls.alpn)}): {hint}")
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
        return (f"TLS handshake failed ({exc.reason}): the target does not speak TLS on this "
                "port; use http:// or the server's TLS port")
    return f"TLS handshake failed ({exc.reason or exc}); check the target's TLS settings"


class _TLSConnection(HTTPConnection):
    """http.client over TLS to the resolved address, verifying the certificate against the
    name the engine verifies (tls.server_name or the URL's host), not the address."""

    def __init__(self, target: Target, timeout_s: float, tls: TLS,
                 negotiated: dict[str, Any]) -> None:
        super().__init__(target.address, target.port, timeout=timeout_s)
        self.context = tls.ssl_context()
        self.server_name = tls.verify_name(target.hostname)
        self.negotiated = negotiated

    def connect(self) -> None:
        super().connect()
        sock = self.context.wrap_socket(self.sock, server_hostname=self.server_name)
        self.sock = sock
        cipher = sock.cipher()
        self.negotiated.update({"protocol": sock.version(),
                                "cipher": cipher[0] if cipher else None,
                                "alpn": sock.selected_alpn_protocol()})


def _preflight_status(target: Target, req: Request, timeout_s: float, tls: TLS | None = None,
                      negotiated: dict[str, Any] | None = None) -> int:
    """The status of one request sent where the engine sends (the resolved address: no proxy
    from the environment). http.client rather than httpx: importing httpx cost 60 ms of
    start-up CPU, a third of the coordinator's before its first request."""
    conn = (HTTPConnection(target.address, target.port, timeout=timeout_s) if tls is None
            else _TLSConnection(target, timeout_s, tls, {} if negotiated is None else negotiated))
    deadline = ExchangeDeadline(timeout_s)
    try:
        conn.connect()
        deadline.watch(conn.sock)
        # One Host header: the request's own (a virtual host) or the target's.
        headers = {"Host": host_header(req, target.host), "User-Agent": USER_AGENT}
        headers.update((k, v) for k, v in req.headers if k.lower() != "host")
        try:
            conn.request(req.method, request_path(target.path, req.path), headers=headers)
            resp = conn.getresponse()
            body = resp.read(1 << 20)
        except (OSError, HTTPException):
            if deadline.expired:
                raise TimeoutError("the whole exchange took longer than the timeout") from None
            raise
        if tls is not None and negotiated is not None and resp.status == 400:
            # nginx's page for a missing or rejected client certificate
            match = re.search(rb"<center>([^<]*SSL certificate[^<]*)</center>", body)
            if match:
                negotiated["client_cert_refused"] = match.group(1).decode("latin-1")
        return resp.status
    finally:
        deadline.cancel()
        conn.close()


class ExchangeDeadline:
    """The preflight's whole exchange within its timeout, not each read: a server that
    trickles a byte a second keeps every read under the socket's timeout and would hold the
    preflight forever. A timer shuts the socket down when the time is up; the reader then
    fails, and `expired` says why."""

    def __init__(self, timeout_s: float) -> None:
        import threading

        self.expired = False
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket | None) -> None:
        self._sock = sock
        if self.expired:
            self._expire()

    def _expire(self) -> None:
        self.expired = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


class StageTotals:
    def __init__(self) -> None:
        self.scheduled = 0
        self.sent = 0
        self.unsent = 0
        self.waited = 0      # sends that waited for a free connection
        self.late = 0        # sends late on a free connection (the loop was late)
        self.cpu_ns = 0      # workers' CPU time in the stage's intervals
        self.wall_ns = 0     # and the time those intervals spanned, per worker

    @property
    def worker_cpu(self) -> float | None:
        """The share of its core each worker used during the stage."""
        return self.cpu_ns / self.wall_ns if self.wall_ns else None

    @staticmethod
    def combined_cpu(totals: list[StageTotals]) -> float | None:
        wall = sum(t.wall_ns for t in totals)
        return sum(t.cpu_ns for t in totals) / wall if wall else None


class RowSink(Protocol):
    """Where the merged rows go: results/store.ResultWriter, given by the runner."""

    failure: str | None

    def write(self, rows: list[dict[str, Any]]) -> None: ...


@dataclass
class ScopeRun:
    """Of one stage, or of the run ("all"): what its rows do not hold. How long it ran, its
    target rate (None: closed model), the generator's own figures (sends delayed, CPU)."""

    name: str
    duration_s: float
    target_rps: float | None
    open_model: bool = True
    waited: int = 0
    late: int = 0
    worker_cpu: float | None = None


@dataclass
class RunInputs:
    """What the summary takes from the live merge besides the rows (Aggregator.finish)."""

    stages: list[ScopeRun]
    run: ScopeRun
    connections: dict[str, Any]       # opened, failed, open_peak, closed_by_*, retried,
                                      # tls_handshakes (https:// runs)
    extra: dict[str, Any]             # dropped_samples, clamped_samples, report_lag_ms
    http2: bool = False               # an HTTP/2 run: its stream error kinds are listed


@dataclass
class MergedInterval:
    """One interval once every worker's report of it is merged: what Aggregator.observers
    receive. `rows` are the interval rows just written; their histograms are also the
    coordinator's accumulators, so an observer reads them during the call and keeps none."""

    index: int
    start_s: float
    end_s: float
    stage: str                    # the stage running at the interval's middle
    target_rps: float | None      # None in a closed-model stage
    achieved_rps: float
    rows: list[dict[str, Any]]


class Aggregator:
    """Merges interval reports from all workers, exactly, in interval order.

    judge: called with each merged interval's index and rows, returns a reason to stop the
    run or None (the runner passes analysis/slo.LiveSLO's, for `abort_after`).
    observers: called with each MergedInterval in the coordinator's thread, after the rows
    are written (the live outputs, live/); nothing of theirs reaches the workers."""

    def __init__(self, plan: Plan, writer: RowSink, workers: int, interval_s: float,
                 progress: LiveProgress,
                 judge: Callable[[int, list[dict[str, Any]]], str | None] | None = None):
        self.plan = plan
        self.writer = writer
        self.workers = workers
        self.interval_ms = int(interval_s * 1000)
        self.interval_s = interval_s
        self.progress = progress
        self.windows = schedule.layout(plan)
        self.pending: dict[int, list[Any]] = defaultdict(list)
        self.final_index: dict[int, int] = {}
        self.next_index = 0
        # (stage, request, outcome, backend) -> [latency, service, count], whole stage
        self.cells: dict[tuple[int, int, str, str], list[Any]] = {}
        self.totals = [StageTotals() for _ in plan.stages]
        self.requests = 0
        self.errors = 0
        self.sent_by_workers = 0
        self.last_index = -1
        # per worker: connects and failed connects so far (cumulative), open connections
        self.connects: dict[int, tuple[int, int]] = {}
        # per worker, cumulative: arrivals retried on a new connection, outcomes dropped,
        # connections closed by the server, by the engine, latencies clamped to 1 h
        self.engine_counts: dict[int, tuple[int, int, int, int, int]] = {}
        self.t0_ns = 0               # time zero, once the workers started
        self.report_lag_ns = 0       # the latest an interval report reached the coordinator
        # per stage: TCP connect times of the connections opened in its intervals
        self.connect_times = [histogram.new_histogram() for _ in plan.stages]
        # ... and their TLS handshake times; per worker, handshakes so far (full, resumed,
        # failed)
        self.tls_times = [histogram.new_histogram() for _ in plan.stages]
        self.tls_handshakes: dict[int, tuple[int, int, int]] = {}
        self.open_peak = 0
        # Windowed objectives with abort_after, judged as each interval is merged.
        self.judge = judge
        self.abort_reason: str | None = None
        # (feeder table, when) of the first `unique` feeder that ran out and ended the run
        self.exhausted: tuple[int, int] | None = None
        # What the engine's first completed TLS handshake negotiated (a worker's DONE), for
        # runs without the preflight: {"protocol", "cipher", "alpn"}, None until known.
        self.negotiated: dict[str, Any] | None = None
        # The engines' end-of-run counts (workers.ENGINE_COUNTS), summed over the workers
        self.done_counts: dict[str, int] = {}
        self.error_outcomes = set(ERROR_KINDS) | set(plan.fail_status)
        self.cpu_ns: dict[int, int] = {}      # per worker: CPU time reported so far
        self.write_failed = False
        # A sharded run: the shard of a worker (its engine stripe), for the per-shard rows.
        self.shard_of: Callable[[int], int] | None = None
        # Scripted flows: checks {name: [passed, failed]} and flow failures
        # {"flow|ExceptionType": count}, the whole run's so far.
        self.checks: dict[str, list[int]] = {}
        self.flow_errors: dict[str, int] = {}
        self.flow_samples: dict[str, str] = {}
        # Request indices of flows' own rows ("flow:<name>"): named rows only, never part of
        # the stage's and the run's totals and headline latency, which are the steps'.
        self.flow_requests = frozenset(
            i for i, r in enumerate(plan.requests)
            if plan.flows is not None and r.name.startswith(FLOW_PREFIX))
        self.observers: list[Callable[[MergedInterval], None]] = []

    def flow_figures(self) -> dict[str, Any]:
        """The summary's `flows`: checks passed and failed by name, with the run's total and
        pass fraction, and failed flows by flow and exception type."""
        passed = sum(p for p, _ in self.checks.values())
        failed = sum(f for _, f in self.checks.values())
        errors: dict[str, dict[str, int]] = {}
        samples: dict[str, dict[str, str]] = {}
        for key, n in sorted(self.flow_errors.items()):
            flow, _, kind = key.partition("|")
            errors.setdefault(flow, {})[kind] = n
            if key in self.flow_samples:
                samples.setdefault(flow, {})[kind] = self.flow_samples[key]
        return {"checks": {name: {"passed": p, "failed": f}
                           for name, (p, f) in sorted(self.checks.items())},
                "checks_passed": passed, "checks_failed": failed,
                "checks_rate": round(passed / (passed + failed), 6) if passed + failed else None,
                "failed_flows": errors, "failed_flow_samples": samples}

    def add(self, report: Any) -> None:
        if self.t0_ns and not report.final:
            # How late the report reached us after its interval ended: the engine never waits
            # for the coordinator (workers.ReportSender), but a busy coordinator sees the run
            # late, and so do the live view and abort_after.
            due = self.t0_ns + (report.index + 1) * self.interval_ms * 1_000_000
            self.report_lag_ns = max(self.report_lag_ns, _core.now_ns() - due)
        self.pending[report.index].append(report)
        if report.checks:
            for name, (p, f) in report.checks.items():
                counts = self.checks.setdefault(name, [0, 0])
                counts[0] += p
                counts[1] += f
        if report.flow_errors:
            for key, n in report.flow_errors.items():
                self.flow_errors[key] = self.flow_errors.get(key, 0) + n
        if report.flow_samples:
            for key, message in report.flow_samples.items():
                self.flow_samples.setdefault(key, message)
        if report.final:
            self.final_index[report.worker] = report.index
        merged = False
        while self._complete(self.next_index):
            self._merge(self.pending.pop(self.next_index, []), self.next_index)
            self.next_index += 1
            merged = True
        if merged:
            # hdrh histograms are reference cycles (histogram <-> encoder) of 184 KiB each;
            # collect an interval's as soon as it is merged rather than whenever the cyclic
            # GC gets round to it, so the coordinator's memory stays flat however long the run.
            gc.collect(1)

    def note_counts(self, message: bytes) -> None:
        """Adds a worker's end-of-run engine counts (its DONE message) to the run's."""
        for key, n in decode_done_counts(message).items():
            self.done_counts[key] = self.done_counts.get(key, 0) + n

    def note_done(self, message: bytes, stop: Stop) -> None:
        """A worker's DONE: a `unique` feeder that ran out ended its part of the run (every
        worker's, as the rows follow the run-wide arrival sequence); the run ran until then.
        Over TLS it also says what the worker's handshakes negotiated; the first kept."""
        self.note_counts(message)
        if self.negotiated is None:
            self.negotiated = decode_done_tls(message)
        exhausted = decode_done(message)
        if exhausted is None:
            return
        if self.exhausted is None or exhausted[1] < self.exhausted[1]:
            self.exhausted = exhausted
        if not stop.at_ns or exhausted[1] < stop.at_ns:
            stop.at_ns = exhausted[1]

    def _complete(self, index: int) -> bool:
        # Every worker reports every interval up to its final one, so an interval is whole
        # once each worker has reported it or has already sent its final report.
        if index not in self.pending:
            return False
        reported = {r.worker for r in self.pending[index]}
        return all(w in reported or self.final_index.get(w, 1 << 62) < index
                   for w in range(self.workers))

    def drain(self) -> None:
        for index in sorted(self.pending):
            self._merge(self.pending.pop(index), index)

    def _merge(self, reports: list[Any], index: int) -> None:
        if not reports:
            return
        self.last_index = max(self.last_index, index)
        start_ms, end_ms = index * self.interval_ms, (index + 1) * self.interval_ms
        merged: dict[tuple[int, int, str, str], list[Any]] = {}
        nstages = len(self.plan.stages)
        scheduled, unsent, sent = [0] * nstages, [0] * nstages, [0] * nstages
        waited, late = [0] * nstages, [0] * nstages
        self.open_peak = max(self.open_peak, sum(r.open_connections for r in reports))
        # The workers' CPU time and connect times go to the stage running at the interval's
        # middle.
        mid_s = (index + 0.5) * self.interval_s
        cpu_stage = next((i for i, w in enumerate(self.windows) if w.start_s <= mid_s < w.end_s),
                         len(self.windows) - 1)
        connect_time = histogram.new_histogram()
        tls_time = histogram.new_histogram()
        for r in reports:
            for ct, into in ((r.connect_time, connect_time), (r.tls_time, tls_time)):
                if ct is not None:
                    histogram.add_slice(into, ct.lo, ct.counts, ct.total, ct.min_us, ct.max_us)
            self.tls_handshakes[r.worker] = r.tls_handshakes
            self.connects[r.worker] = (r.connects, r.connect_failures)
            self.totals[cpu_stage].cpu_ns += r.cpu_ns - self.cpu_ns.get(r.worker, 0)
            self.totals[cpu_stage].wall_ns += self.interval_ms * 1_000_000
            self.cpu_ns[r.worker] = r.cpu_ns
            self.engine_counts[r.worker] = (r.retried, r.dropped, r.closed_by_server,
                                            r.closed_by_us, r.clamped)
            for i in range(nstages):
                scheduled[i] += r.scheduled[i]
                unsent[i] += r.unsent[i]
                sent[i] += r.sent[i]
                waited[i] += r.waited[i]
                late[i] += r.late[i]
            for c in r.cells:
                key = (c.stage, c.request, c.outcome, c.backend)
                m = merged.get(key)
                if m is None:
                    m = merged[key] = [histogram.new_histogram(), histogram.new_histogram(), 0]
                histogram.add_slice(m[0], c.latency.lo, c.latency.counts, c.latency.total,
                                    c.latency.min_us, c.latency.max_us)
                histogram.add_slice(m[1], c.service.lo, c.service.counts, c.service.total,
                                    c.service.min_us, c.service.max_us)
                m[2] += c.count
        rows: list[dict[str, Any]] = []
        per_stage: dict[int, list[Any]] = {}
        # latency of the successful responses, responses, errors
        interval_all = [histogram.new_histogram(), 0, 0, 0]
        rows += self._ok_rows("interval", merged, lambda stage: (start_ms, end_ms))
        for key, (lat, svc, count) in sorted(merged.items()):
            stage, request, outcome, backend = key
            rows.append(self._row("interval", stage, request, outcome, backend, start_ms, end_ms,
                                  count, lat, svc))
            acc = self.cells.get(key)
            if acc is None:
                self.cells[key] = [lat, svc, count]
            else:
                histogram.merge(acc[0], lat)
                histogram.merge(acc[1], svc)
                acc[2] += count
            if request in self.flow_requests:
                continue
            s = per_stage.get(stage)
            if s is None:
                s = per_stage[stage] = [histogram.new_histogram(), histogram.new_histogram(), 0]
            histogram.merge(s[0], lat)
            histogram.merge(s[1], svc)
            s[2] += count
            if outcome not in self.error_outcomes:
                histogram.merge(interval_all[0], lat)
            if outcome in STATUS_OUTCOMES:
                interval_all[1] += count
            if outcome in self.error_outcomes:
                interval_all[2] += count
        for i in range(nstages):
            t = self.totals[i]
            t.scheduled += scheduled[i]
            t.unsent += unsent[i]
            t.sent += sent[i]
            t.waited += waited[i]
            t.late += late[i]
            self.sent_by_workers += sent[i]
            connects = connect_time if i == cpu_stage else None
            handshakes = tls_time if i == cpu_stage else None
            if connects is not None:
                histogram.merge(self.connect_times[i], connects)
            if handshakes is not None:
                histogram.merge(self.tls_times[i], handshakes)
            if i in per_stage or scheduled[i] or unsent[i] or (connects and
                                                                connects.total_count):
                lat, svc, count = per_stage.get(i) or (histogram.new_histogram(),
                                                        histogram.new_histogram(), 0)
                row = self._row("interval", i, None, "*", "*", start_ms, end_ms, count, lat, svc)
                row["scheduled"], row["unsent"] = scheduled[i], unsent[i]
                row["connect"] = connects
                row["tls"] = handshakes if self.plan.tls is not None else None
                rows.append(row)
        self.writer.write(rows)
        if self.shard_of is not None:
            self.writer.write(self._shard_rows(reports, start_ms, end_ms))
        if self.writer.failure:
            # A full disk or a removed folder stops the run as an abort does: workers stop
            # scheduling and report what is in flight, so the counts kept are whole.
            self.write_failed = True
        reason = self.judge(index, rows) if self.judge is not None else None
        if reason and self.abort_reason is None:
            self.abort_reason = reason
        self.requests += interval_all[1]
        self.errors += interval_all[2]
        shown = self._show(index, interval_all)
        for observe in self.observers:
            observe(MergedInterval(index, start_ms / 1000, end_ms / 1000, *shown, rows))

    def stop_asked(self) -> bool:
        """Whether the run should stop scheduling now: an objective's abort_after, or the
        result file could no longer be written."""
        return self.abort_reason is not None or self.write_failed

    def _shard_rows(self, reports: list[Any], start_ms: int, end_ms: int
                    ) -> list[dict[str, Any]]:
        """A sharded run's interval, per shard and stage (scope "shard", name and outcome
        "*"): what each shard scheduled, left unsent and got back, kept for diagnosis."""
        assert self.shard_of is not None
        acc: dict[tuple[int, int], list[Any]] = {}
        nstages = len(self.plan.stages)
        for r in reports:
            shard = self.shard_of(r.worker)
            for i in range(nstages):
                if r.scheduled[i] or r.unsent[i]:
                    a = acc.setdefault((shard, i), [histogram.new_histogram(),
                                                    histogram.new_histogram(), 0, 0, 0])
                    a[3] += r.scheduled[i]
                    a[4] += r.unsent[i]
            for c in r.cells:
                a = acc.setdefault((shard, c.stage), [histogram.new_histogram(),
                                                      histogram.new_histogram(), 0, 0, 0])
                histogram.add_slice(a[0], c.latency.lo, c.latency.counts, c.latency.total,
                                    c.latency.min_us, c.latency.max_us)
                histogram.add_slice(a[1], c.service.lo, c.service.counts, c.service.total,
                                    c.service.min_us, c.service.max_us)
                a[2] += c.count
        rows = []
        for (shard, stage), (lat, svc, count, scheduled, unsent) in sorted(acc.items()):
            row = self._row("shard", stage, None, "*", "*", start_ms, end_ms, count, lat, svc)
            row["scheduled"], row["unsent"], row["shard"] = scheduled, unsent, str(shard)
            rows.append(row)
        return rows

    def _show(self, index: int, interval_all: list[Any]) -> tuple[str, float | None, float]:
        t = (index + 0.5) * self.interval_s
        window = next((w for w in self.windows if w.start_s <= t < w.end_s), self.windows[-1])
        stage = window.stage.name
        expected = schedule.expected_between(self.windows, index * self.interval_s,
                                             (index + 1) * self.interval_s)
        st = histogram.stats(interval_all[0])
        # A closed-model stage has no target rate to show.
        target = expected / self.interval_s if window.stage.open_model else None
        achieved = interval_all[1] / self.interval_s
        # An interval after the schedule's end that saw no response (the wait for the last
        # ones) is no frame of its own: "rps 0/0 p50 0µs" would be the last one people see.
        if index * self.interval_s < self.plan.duration_s - 1e-9 or interval_all[1]:
            self.progress.update(stage, min((index + 1) * self.interval_s,
                                            self.plan.duration_s),
                                 target, achieved, st["p50"], st["p99"], self.errors,
                                 self.requests)
        return stage, target, achieved

    def _row(self, scope: str, stage: int | None, request: int | None, outcome: str,
             backend: str, start_ms: int, end_ms: int, count: int, lat: HdrHistogram,
             svc: HdrHistogram) -> dict[str, Any]:
        return {
            "scope": scope,
            "stage": "*" if stage is None else self.plan.stages[stage].name,
            "name": "*" if request is None else self.plan.requests[request].name,
            "outcome": outcome, "backend": backend,
            "start_ms": start_ms, "end_ms": end_ms, "count": count,
            "latency": lat, "service": svc,
        }

    def _ok_rows(self, scope: str, cells: dict[tuple[Any, Any, str, str], list[Any]],
                 span: Any) -> list[dict[str, Any]]:
        """Rows merged over the successful responses (outcome "ok", backend "*"), per stage
        and request name and per stage with name "*": where every reader takes the headline
        latency from (DESIGN.md "Parquet results"). One per (stage, name) that had any
        outcome, with count 0 when everything failed. `span(stage)` gives (start_ms, end_ms).
        """
        merged: dict[tuple[Any, Any], list[Any]] = {}
        for (stage, request, outcome, _), (lat, svc, count) in cells.items():
            for key in ((stage, request), (stage, None)):
                if key[1] is None and request in self.flow_requests:
                    continue
                acc = merged.get(key)
                if acc is None:
                    acc = merged[key] = [histogram.new_histogram(), histogram.new_histogram(), 0]
                if outcome not in self.error_outcomes:
                    histogram.merge(acc[0], lat)
                    histogram.merge(acc[1], svc)
                    acc[2] += count
        rows = []
        for (stage, request), (lat, svc, count) in sorted(
                merged.items(), key=lambda kv: (-1 if kv[0][0] is None else kv[0][0],
                                                -1 if kv[0][1] is None else kv[0][1])):
            start_ms, end_ms = span(stage)
            rows.append(self._row(scope, stage, request, "ok", "*", start_ms, end_ms, count,
                                  lat, svc))
        return rows

    # -- the end of the run -----------------------------------------------------------------

    def finish(self, elapsed_s: float, stopped_s: float | None = None
               ) -> tuple[list[dict[str, Any]], RunInputs]:
        """Stage and run rows, and what the summary needs besides them (RunInputs): the
        summary's figures are folded from these rows (analysis/figures.summary_figures), as
        `compare` and `ls` fold the same rows read back from the file.

        stopped_s: when a run stopped early (a signal, an SLO abort, a crash), how long it
        ran; the rates of the stages it cut short are over the time they ran."""
        rows: list[dict[str, Any]] = []
        run_cells: dict[tuple[int, str, str], list[Any]] = {}
        run_all = [histogram.new_histogram(), histogram.new_histogram()]
        run_count = 0
        stages: list[ScopeRun] = []
        end_ms = int((elapsed_s if stopped_s is None else stopped_s) * 1000)
        for i, w in enumerate(self.windows):
            s_lat, s_svc = histogram.new_histogram(), histogram.new_histogram()
            s_count = 0
            ran = _ran_in(w, stopped_s)
            s_ms, e_ms = int(w.start_s * 1000), int((w.start_s + ran) * 1000)
            for key in sorted(k for k in self.cells if k[0] == i):
                lat, svc, count = self.cells[key]
                _, request, outcome, backend = key
                rows.append(self._row("stage", i, request, outcome, backend, s_ms, e_ms,
                                      count, lat, svc))
                if request not in self.flow_requests:
                    histogram.merge(s_lat, lat)
                    histogram.merge(s_svc, svc)
                    s_count += count
                rk = (request, outcome, backend)
                acc = run_cells.get(rk)
                if acc is None:
                    run_cells[rk] = [histogram.copy(lat), histogram.copy(svc), count]
                else:
                    histogram.merge(acc[0], lat)
                    histogram.merge(acc[1], svc)
                    acc[2] += count
            t = self.totals[i]
            row = self._row("stage", i, None, "*", "*", s_ms, e_ms, s_count, s_lat, s_svc)
            row["scheduled"], row["unsent"] = t.scheduled, t.unsent
            row["connect"] = self.connect_times[i]
            row["tls"] = self.tls_times[i] if self.plan.tls is not None else None
            rows.append(row)
            rows += self._ok_rows("stage", {k: v for k, v in self.cells.items() if k[0] == i},
                                  lambda _, span=(s_ms, e_ms): span)
            histogram.merge(run_all[0], s_lat)
            histogram.merge(run_all[1], s_svc)
            run_count += s_count
            # A closed-model stage has no arrival schedule, hence no target rate; one cut
            # short is judged over the time it ran.
            target = None
            if w.stage.open_model:
                target = schedule.arrivals(w.stage) / w.stage.duration_s
                if 0 < ran < w.stage.duration_s:
                    target = schedule.expected_between(self.windows, w.start_s,
                                                       w.start_s + ran) / ran
            stages.append(ScopeRun(w.stage.name, ran, target, w.stage.open_model,
                                   t.waited, t.late, t.worker_cpu))
        for (request, outcome, backend), (lat, svc, count) in sorted(run_cells.items()):
            rows.append(self._row("run", None, request, outcome, backend, 0, end_ms, count,
                                  lat, svc))
        rows += self._ok_rows("run", {(None, *k): v for k, v in run_cells.items()},
                              lambda _: (0, end_ms))
        row = self._row("run", None, None, "*", "*", 0, end_ms, run_count,
                        run_all[0], run_all[1])
        row["scheduled"] = sum(t.scheduled for t in self.totals)
        row["unsent"] = sum(t.unsent for t in self.totals)
        run_connect = histogram.new_histogram()
        for h in self.connect_times:
            histogram.merge(run_connect, h)
        row["connect"] = run_connect
        run_tls = histogram.new_histogram()
        for h in self.tls_times:
            histogram.merge(run_tls, h)
        row["tls"] = run_tls if self.plan.tls is not None else None
        rows.append(row)
        duration = (min(elapsed_s, self.plan.duration_s) or self.plan.duration_s
                    if stopped_s is None else stopped_s)
        run = ScopeRun("all", duration, self._run_target(stopped_s), True,
                       sum(t.waited for t in self.totals), sum(t.late for t in self.totals),
                       StageTotals.combined_cpu(self.totals))
        connections: dict[str, Any] = {
            "opened": sum(c for c, _ in self.connects.values()),
            "failed": sum(f for _, f in self.connects.values()),
            "open_peak": self.open_peak,
            "closed_by_server": sum(c[2] for c in self.engine_counts.values()),
            "closed_by_us": sum(c[3] for c in self.engine_counts.values()),
            "retried": sum(c[0] for c in self.engine_counts.values())}
        if self.done_counts:
            # Connections by the protocol they spoke: over TLS the one ALPN chose for each.
            connections["by_protocol"] = {
                "http/1.1": self.done_counts.get("protocol_h1", 0),
                "h2": self.done_counts.get("protocol_h2", 0)}
        if self.plan.http == "2":
            connections["h2_zero_streams"] = self.done_counts.get("h2_zero_streams", 0)
        if self.plan.tls is not None:
            full, resumed, failed = (sum(h[k] for h in self.tls_handshakes.values())
                                     for k in range(3))
            connections["tls_handshakes"] = {"full": full, "resumed": resumed,
                                             "failed": failed}
        dropped = sum(c[1] for c in self.engine_counts.values())
        return rows, RunInputs(stages, run, connections, {
            "dropped_samples": dropped,
            "clamped_samples": sum(c[4] for c in self.engine_counts.values()),
            "report_lag_ms": round(max(0, self.report_lag_ns) / 1e6, 1)},
            http2=self.plan.http == "2")

    def _run_target(self, stopped_s: float | None) -> float | None:
        """The run's target rate: its open-model arrivals over the open-model stages' time
        (up to where the run stopped); None when no stage is open-model."""
        if stopped_s is None:
            return run_target_rps(self.plan)
        open_s = sum(_ran_in(w, stopped_s) for w in self.windows if w.stage.open_model)
        if not open_s:
            return None
        return schedule.expected_between(self.windows, 0.0, stopped_s) / open_s


def run_target_rps(plan: Plan) -> float | None:
    """The run's target rate: its open-model arrivals over the open-model stages' time.
    Closed-model stages have no target and stay out of it; None when every stage is closed."""
    open_s = sum(s.duration_s for s in plan.stages if s.open_model)
    if not open_s:
        return None
    return sum(schedule.arrivals(s) for s in plan.stages if s.open_model) / open_s


def _ran_in(window: Any, stopped_s: float | None) -> float:
    """How long a stage ran: all of it, unless the run stopped before its end."""
    if stopped_s is None:
        return float(window.stage.duration_s)
    return min(max(0.0, stopped_s - window.start_s), float(window.stage.duration_s))


def compile_feeders(plan: Plan, target: Target, inline: bool = False) -> feeders.Compiled:
    """The plan's feeder tables and request templates, compiled for the engine (exit 2 naming
    a missing column, an unreadable file or a value that would break the request framing)."""
    label = "profile" if plan.path in ("", "<profile>") else f"profile {os.path.basename(plan.path)}"
    for i, feeder in enumerate(plan.feeders):
        # A feeder no slot uses is not loaded, but a file that is not there is still an error.
        # Regular files only: a FIFO would block the read below for ever.
        check_regular(feeder.path, f"{label}: feeders[{i}]", RELATIVE_HINT)
        if not os.access(feeder.path, os.R_OK):
            raise InputError(f"{label}: feeders[{i}]: cannot read {feeder.path} (permission "
                             "denied)")
    if plan.flows is not None:
        # Flows read every feeder's rows (user.rows) from tables of their own: table i is
        # feeder i, its columns as they are in the file.
        return feeders.compile_rows(plan.feeders, label, inline=inline)
    if not plan.templates:
        return feeders.Compiled()
    if plan.http == "2":
        scheme = urlsplit(target.url).scheme
        h2_heads = [None if t is None else h2_template_head(r, t, target.host, target.path, scheme)
                    for r, t in zip(plan.requests, plan.templates, strict=True)]
        return feeders.compile_h2_templates(plan.feeders, list(plan.templates), h2_heads, label,
                                            inline=inline)
    heads = [(f"{r.method} {target.path.rstrip('/')}",
              f" HTTP/1.1\r\nHost: {host_header(r, target.host)}\r\nUser-Agent: {USER_AGENT}\r\n",
              r.method in ("POST", "PUT", "PATCH")) for r in plan.requests]
    return feeders.compile_templates(plan.feeders, list(plan.templates), heads, label,
                                     inline=inline)


def _worker_specs(plan: Plan, target: Target, workers: int, interval_s: float,
                  backend_header: str | None,
                  compiled: feeders.Compiled | None = None) -> list[WorkerSpec]:
    requests = [(encode_request(r, target.host, target.path), r.method == "HEAD")
                for r in plan.requests]
    tables = [t.spec() for t in compiled.tables] if compiled else []
    templates = list(compiled.templates) if compiled and compiled.templates else []
    h2_templated = compiled.h2 if compiled and compiled.h2 else [None] * len(plan.requests)
    http2 = ([t if t is not None else
              encode_h2_request(r, target.host, target.path, urlsplit(target.url).scheme)
              for r, t in zip(plan.requests, h2_templated, strict=True)]
             if plan.http == "2" else None)
    mix = schedule.request_mix(plan.requests)
    stages = [(s.open_model, s.rate_from or 0.0, s.rate_to or 0.0, s.duration_s,
               s.concurrency or 0, s.think_s) for s in plan.stages]
    closed = max((s.concurrency or 0 for s in plan.stages), default=0)
    flows = None
    if plan.flows is not None:
        open_rows = sum(schedule.arrivals(s) for s in plan.stages if s.open_model)
        # The module's text goes with the spec: a shard on another machine (Kubernetes) has
        # no copy of it, and every worker runs the text the coordinator checked.
        with open(plan.flows, "rb") as f:
            source = f.read()
        flows = ((plan.flows, source), (target.host, target.path.rstrip("/"), USER_AGENT),
                 [(t.feeder.name, feeders.raw_columns(t)) for t in compiled.tables]
                 if compiled else [], open_rows)
    specs = []
    for w in range(workers):
        share = plan.connections // workers + (1 if w < plan.connections % workers else 0)
        closed_share = closed // workers + (1 if w < closed % workers else 0)
        if http2 is not None:
            # a closed-model user holds a stream, not a connection
            closed_share = -(-closed_share // plan.streams)
        specs.append(WorkerSpec(w, workers, target.address, target.port, requests, mix, stages,
                                max(share, closed_share, 1), plan.timeout_s, interval_s,
                                backend_header, plan.timer_resolution_s,
                                plan.requests_per_connection, tables, templates,
                                None if plan.tls is None else
                                plan.tls.engine_settings(target.hostname),
                                http2, plan.streams, flows, retry=plan.retry))
    return specs


def _check_fd_limit(specs: list[WorkerSpec], plan: Plan) -> None:
    limit = fd_limit()
    need = max(s.connections for s in specs) + 64
    if need > limit:
        raise InputError(
            f"connections: {plan.connections} connections over {len(specs)} worker(s) need "
            f"{need} open files per worker, but the limit is {limit}; raise it (ulimit -n) "
            "or use more workers")


# Each connection of a worker (each stream slot over HTTP/2: connections x streams) holds a
# buffer for the largest templated request.
MAX_TEMPLATE_BUFFERS = 512 << 20


def _check_template_buffers(specs: list[WorkerSpec], compiled: feeders.Compiled) -> None:
    largest = max((t[2] for t in compiled.templates if t is not None), default=0)
    conns = max(s.connections * (s.streams if s.http2 is not None else 1) for s in specs)
    what = "connections" if specs[0].http2 is None else "streams (connections x streams)"
    if largest * conns > MAX_TEMPLATE_BUFFERS:
        raise InputError(
            f"requests: templated requests expand to up to {largest:,} bytes and each of a "
            f"worker's {conns:,} {what} holds one: {largest * conns / 2**20:,.0f} MiB per "
            f"worker, more than {MAX_TEMPLATE_BUFFERS >> 20} MiB; use fewer "
            f"{'connections' if specs[0].http2 is None else 'connections or streams'}, "
            "more workers or a smaller templated body")


# The signals that end a run early and keep its results (exit 128 + N): Ctrl-C, a service
# manager's stop, and the hang-up of a closed terminal or SSH session.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Stop:
    """How the collection ended early, if it did."""

    signum: int = 0       # the signal that interrupted the run (SIGINT, SIGTERM), 0 if none
    at_ns: int = 0        # when scheduling was asked to stop (a signal, an SLO abort)
    hard: bool = False    # a second signal: workers killed, in-flight requests not awaited

    def ran_s(self, t0: int, elapsed_s: float, planned_s: float) -> float:
        """How long the run ran: to the stop, else to its planned end."""
        if self.at_ns:
            return min(max(0.0, (self.at_ns - t0) / 1e9), planned_s)
        return min(elapsed_s, planned_s)


def _collect(pool: WorkerPool | ShardPool, agg: Aggregator, plan: Plan, t0: int,
             stop: Stop) -> None:
    done = [False] * len(pool.channels)
    deadline = t0 + int((plan.duration_s + plan.timeout_s + 10.0) * 1e9)

    def on_signal(signum: int, frame: Any) -> None:
        # Ctrl-C, SIGTERM or SIGHUP (a closed terminal or SSH session) ends the run early but
        # keeps it: workers stop scheduling, report what is in flight, and the results are
        # written as usual. A second one kills the workers at once; what they reported is
        # still written.
        if stop.signum:
            stop.hard = True
            pool.kill()
            return
        stop.signum, stop.at_ns = signum, _core.now_ns()
        pool.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        if isinstance(pool, WorkerPool):
            _collect_until_done(pool, agg, plan, done, deadline, stop)
        else:
            pool.collect_until_done(agg, plan, done, deadline, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _collect_until_done(pool: WorkerPool, agg: Aggregator, plan: Plan, done: list[bool],
                        deadline: int, stop: Stop) -> None:
    stopping = False
    while not all(done) and not stop.hard:
        ready = pool.ready([i for i in range(len(done)) if not done[i]], timeout=0.5)
        for i in ready:
            try:
                msg = pool.channels[i].recv_bytes()
            except (EOFError, OSError):
                if stop.hard:
                    return
                raise WorkerCrashed(f"worker {i} exited unexpectedly "
                                    f"({exit_words(pool.exitcode(i, wait_s=2.0))})") from None
            tag = msg[:1]
            if tag == INTERVAL:
                agg.add(decode_interval(msg))
            elif tag == DONE:
                done[i] = True
                agg.note_done(msg, stop)
            elif tag == FAILED:
                raise WorkerCrashed(f"worker {i} failed: {failure_words(msg[1:])}")
        for i in range(len(done)):
            if not done[i] and pool.exitcode(i) is not None and not ready and not stop.hard:
                raise WorkerCrashed(f"worker {i} exited unexpectedly "
                                    f"({exit_words(pool.exitcode(i))})")
        if agg.stop_asked() and not stopping:
            pool.stop()
            stopping = True
            stop.at_ns = stop.at_ns or _core.now_ns()
        now = _core.now_ns()
        if now > deadline and not stopping:
            pool.stop()
            stopping = True
            deadline = now + int((plan.timeout_s + 5.0) * 1e9)
        elif now > deadline:
            raise WorkerCrashed("workers did not finish within the run's time plus its timeout")
    if stop.hard:
        _read_what_was_sent(pool, agg)


def exit_words(code: int | None) -> str:
    """A worker's exit status in words: "exit code 7", "killed by SIGKILL"."""
    if code is None:
        return "still running, its socket closed"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _read_what_was_sent(pool: WorkerPool, agg: Aggregator) -> None:
    """The intervals killed workers had already sent (bounded: their sockets only drain)."""
    for channel in pool.channels:
        try:
            while channel.poll(0):
                msg = channel.recv_bytes()
                if msg[:1] == INTERVAL:
                    agg.add(decode_interval(msg))
        except (EOFError, OSError):
            continue


def _start(pool: WorkerPool) -> int:
    pool.wait_ready(READY_TIMEOUT_S)
    t0 = _core.now_ns() + START_DELAY_NS
    for ch in pool.channels:
        ch.send_bytes(str(t0).encode())
    return t0


def new_run_id(plan: Plan) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in plan.name)[:40]
    return f"{stamp}-{name}-{secrets.token_hex(3)}"


def with_tls(plan: Plan, target: Target) -> Plan:
    """The plan with the TLS settings its target uses: an https:// target verifies by default;
    TLS settings for an http:// target are a mistake, said as one. Files that do not load
    (not PEM, a key that does not match) are bad input too, found before any worker starts."""
    from dataclasses import replace

    if not target.https:
        if plan.tls is not None:
            raise InputError(f"target {target.url}: TLS settings ([tls], --ca-cert, "
                             "--client-cert, --server-name, --insecure) need an https:// target")
        return plan
    tls = plan.tls or TLS()
    if plan.http == "2":
        # HTTP/2 over TLS is negotiated by ALPN: offer h2 (only h2, unless tls.alpn says more)
        if tls.alpn == TLS().alpn:
            tls = replace(tls, alpn=("h2",))
        elif "h2" not in tls.alpn:
            raise InputError(f"tls.alpn {list(tls.alpn)} does not offer h2, and --http 2 needs "
                             "it over TLS: add \"h2\" to tls.alpn")
    try:
        tls.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (tls.ca, tls.cert, tls.key) if f)
        raise InputError(f"tls: cannot load {files}: {getattr(exc, 'reason', None) or exc}"
                         ) from None
    return replace(plan, tls=tls)


__all__ = ["RunOptions", "RunOutcome", "Aggregator", "parse_target", "encode_request",
           "RunError", "OUTCOMES"]
