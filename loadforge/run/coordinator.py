"""The preflight: one request before the run, so that a wrong URL fails in seconds.

What was the coordinator is split by job (run/target.py, engine/requests.py, run/merge.py,
run/session.py); the preflight stays here until it moves to run/preflight.py.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from http.client import HTTPConnection, HTTPException
from typing import Any

from loadforge.config.outcomes import status_fix
from loadforge.config.plan import Request
from loadforge.config.tls import TLS
from loadforge.engine.requests import USER_AGENT, h2_headers, host_header, request_path
from loadforge.errors import TargetUnreachable
from loadforge.run.target import Target

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
    # The run's rule (config/outcomes.py): the request's expect_status, else fail_status.
    fix = status_fix(status, fail_status, req.expect_status, f"request {req.name!r}")
    rule = (f"expect_status: {', '.join(str(s) for s in req.expect_status)}"
            if req.expect_status else f"load.fail_status: {', '.join(fail_status)}")
    if status == 404 and judge_status and fix:
        raise TargetUnreachable(f"target {target.url}: {req.method} {url} returned 404 Not Found, "
                                f"an error by the run's rule ({rule}); check the URL and the "
                                f"request paths ({fix}; --no-preflight runs without this check)")
    if judge_status and fix:
        # Judged with the run's rule, but not fatal: a load test of a login wall is legitimate.
        negotiated["preflight_warning"] = (
            f"{req.method} {url} returned {status}, which the run counts as an error "
            f"({rule}); {fix}")
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
