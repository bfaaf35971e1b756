"""The preflight: one request before the run, so that a wrong URL, a rejected certificate or a
server that does not speak the run's protocol fails in seconds with one line and exit 3.

It goes through the engine: the run's own `_core.Engine`, in the coordinator process, on a plan
of one arrival and one connection, with the run's transport (TCP or TLS with the run's
settings and ALPN), protocol (HTTP/1.1, or HTTP/2 with ALPN's http/1.1 fallback per connection)
and parser, and the run's timeout (at most 5 s) as one deadline for the connect, handshake
and exchange together. What it accepts is what the run accepts;
its figures are thrown away (the target sees it: summary `preflight.requests`). The engine
reports the outcome as the run counts it, and `_core.engine_probe` the rest a diagnosis needs:
the status, the connect's errno, the TLS verification result and OpenSSL's reason, and the
bytes of the last read (nginx's page for a refused client certificate is found there). The
status is judged by the run's one rule, `config.outcomes.status_fix`.
"""

from __future__ import annotations

import errno as errnos
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loadforge import _core
from loadforge.config.outcomes import EXPECTED, UNEXPECTED, status_fix
from loadforge.config.plan import Request
from loadforge.engine.requests import encode_h2_request, encode_request, request_path
from loadforge.errors import TargetUnreachable
from loadforge.run.target import Target
from loadforge.run.workers import decode_interval, interval_message

if TYPE_CHECKING:
    from loadforge.config.tls import TLS

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
    HTTP/2: h2c by prior knowledge over TCP, h2 by ALPN over TLS; when tls.alpn offers
    http/1.1 too and the server chose it, the request goes out in HTTP/1.1, as the engine
    sends it on such a connection (one protocol per connection, from its ALPN)."""
    scheme = "https" if target.https else "http"
    url = f"{scheme}://{target.host}{request_path(target.path, req.path)}"
    answer = exchange(target, req, min(timeout_s, 5.0), tls, http)
    negotiated: dict[str, Any] = dict(answer.negotiated or {})
    if http == "2" and tls is not None and answer.negotiated is not None \
            and negotiated.get("alpn") != "h2" and not (
                negotiated.get("alpn") == "http/1.1" and "http/1.1" in tls.alpn):
        raise TargetUnreachable(
            f"target {target.url}: the server will not speak HTTP/2 over TLS (ALPN chose "
            f"{negotiated.get('alpn') or 'nothing'} when offered h2); drop --http 2, or point "
            "at a listener with HTTP/2 enabled")
    if http != "2" and negotiated.get("alpn") not in (None, "http/1.1"):
        raise TargetUnreachable(
            f"target {target.url}: the server chose {negotiated['alpn']} by ALPN, and the "
            "engine speaks http/1.1 over TLS: offer only http/1.1 in tls.alpn")
    if not judge_status and (answer.outcome == "stream_reset" or (
            answer.outcome == "protocol" and answer.status)):
        # An unjudged request (not one the run sends as it is) is judged by nothing but being
        # answered: a reset before any status answers too (grpcio resets a gRPC run's GET),
        # and so does a status followed by what the engine cannot read (a gRPC health check
        # answered without its grpc-status: the run counts its own calls' outcomes).
        return negotiated
    if not answer.answered:
        if answer.outcome == "connect" and tls is not None and answer.tls_reason(tls):
            raise TargetUnreachable(f"target {target.url}: "
                                    f"{tls_failure(answer, tls, target)}")
        over = " over HTTP/2" if http == "2" else ""
        raise TargetUnreachable(f"target {target.url} is unreachable: {req.method} {url}{over} "
                                f"failed: {unreachable_reason(answer, target, timeout_s, http)}")
    status = answer.status
    # The run's rule (config/outcomes.py): the request's expect_status, else fail_status.
    fix = status_fix(status, fail_status, req.expect_status, f"request {req.name!r}") \
        if status and judge_status else None
    rule = (f"expect_status: {', '.join(str(s) for s in req.expect_status)}"
            if req.expect_status else f"load.fail_status: {', '.join(fail_status)}")
    if status == 404 and fix:
        raise TargetUnreachable(f"target {target.url}: {req.method} {url} returned 404 Not Found, "
                                f"an error by the run's rule ({rule}); check the URL and the "
                                f"request paths ({fix}; --no-preflight runs without this check)")
    if fix:
        # Judged with the run's rule, but not fatal: a load test of a login wall is legitimate.
        negotiated["preflight_warning"] = (
            f"{req.method} {url} returned {status}, which the run counts as an error "
            f"({rule}); {fix}")
    refused = answer.client_cert_refused() if tls is not None and status == 400 else None
    if refused:
        # nginx completes the handshake without a client certificate and answers 400 to
        # every request instead; as good as a refused handshake for a load test.
        raise TargetUnreachable(
            f"target {target.url}: TLS client certificate refused: {req.method} {url} returned "
            f"400 \"{refused}\"; pass --client-cert and --client-key (tls.cert, tls.key) with "
            "a certificate the server trusts")
    return negotiated


@dataclass(eq=False)
class Answer:
    """What the engine made of the preflight's one request: the outcome as the run counts it
    (config/outcomes.py; "" when none was recorded), what TLS negotiated (None: no handshake
    completed) and _core.engine_probe's diagnosis."""

    outcome: str
    negotiated: dict[str, Any] | None
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        """A response: a status class, or a gRPC call's status."""
        return (self.outcome[:1].isdigit() or self.outcome.startswith("grpc:")
                or self.outcome in (EXPECTED, UNEXPECTED))

    @property
    def status(self) -> int:
        status = int(self.probe.get("status") or 0)
        if not status and self.outcome[:1].isdigit():
            status = int(self.outcome[0]) * 100     # the class, should the code be unknown
        return status

    def tls_reason(self, tls: TLS | None) -> str:
        """OpenSSL's reason for a failed handshake, as Python's ssl module spells it
        (CERTIFICATE_VERIFY_FAILED); "" when the connect failed before or outside TLS."""
        if tls is None:
            return ""
        return str(self.probe.get("reason") or "").upper().replace(" ", "_")

    def client_cert_refused(self) -> str | None:
        """nginx's error page for a missing or rejected client certificate, if that is what
        the last read brought."""
        match = re.search(rb"<center>([^<]*SSL certificate[^<]*)</center>",
                          self.probe.get("tail") or b"")
        return match.group(1).decode("latin-1") if match else None


def exchange(target: Target, req: Request, timeout_s: float, tls: TLS | None,
             http: str) -> Answer:
    """req sent once by the engine as the run sends it: one open-model arrival at time zero
    (a stage of 1 µs, so that the engine's run ends with the answer), one connection opened
    for it, timeout_s for the connect and the exchange together (the whole response, however
    it trickles in): the engine's `within_s`."""
    scheme = "https" if target.https else "http"
    http2: list[Any] | None = ([encode_h2_request(req, target.host, target.path, scheme)]
                               if http == "2" else None)
    engine = _core.Engine(
        target.address, target.port,
        [(encode_request(req, target.host, target.path), req.method == "HEAD")], [0],
        [(True, 1e6, 1e6, 1e-6, 0, 0.0)], 1, timeout_s=timeout_s, within_s=timeout_s,
        tls=None if tls is None else tls.engine_settings(target.hostname),
        http2=http2, streams=1)
    outcomes: list[str] = []

    def on_interval(payload: bytes, open_conns: int, in_flight: int) -> None:
        for cell in decode_interval(interval_message(payload, 0, 0)).cells:
            outcomes.extend([cell.outcome] * cell.n)

    engine.run(_core.now_ns(), on_interval, preconnect=0)
    return Answer(outcomes[0] if outcomes else "", engine.tls_negotiated,
                  _core.engine_probe(engine))


def unreachable_reason(answer: Answer, target: Target, timeout_s: float,
                       http: str = "1.1") -> str:
    """Why the preflight got no answer, and what to do, in words (no exception names)."""
    where = f"{target.address}:{target.port}"
    limit = f"{min(timeout_s, 5.0):g} s"
    err = int(answer.probe.get("errno") or 0)
    outcome = answer.outcome
    if outcome == "connect":
        if err == errnos.ECONNREFUSED:
            return (f"nothing listens on {where} (connection refused): check the port or "
                    "start the server")
        if err in (0, errnos.ETIMEDOUT):
            return (f"no answer from {where} within {limit}: is it up, and is a firewall "
                    "dropping packets?")
    if outcome == "reset" or (outcome == "connect" and err in (errnos.ECONNRESET,
                                                               errnos.EPIPE)):
        return (f"{where} closed the connection (reset) before answering: does it speak "
                f"{'https' if target.https else 'plain http'} on this port?")
    if outcome == "connect":
        return f"{os.strerror(err).lower()} ({where})"
    if outcome == "timeout":
        return (f"no complete answer from {where} within {limit}: is the server up, "
                "overloaded, or trickling its answer?")
    if outcome == "protocol" and http == "2" \
            and (answer.probe.get("tail") or b"").startswith(b"HTTP/"):
        return ("an HTTP/1.x answer to an HTTP/2 request: the port does not speak HTTP/2 "
                "(drop --http 2, or enable HTTP/2 on it)")
    if outcome == "protocol" and answer.status:
        # A status came, then something the engine cannot read (a bad chunk, a gRPC
        # response without its grpc-status): every request of the run would end the same.
        return (f"{where} answered {answer.status}, but not in a form the engine reads (the "
                "run would count every request as a `protocol` error): check the response's "
                "framing (Content-Length, chunks) or, for gRPC, its grpc-status")
    if outcome == "protocol" and http == "2":
        return ("not an HTTP/2 answer to an HTTP/2 request (the run would count `protocol` "
                "errors): the port does not speak HTTP/2 (drop --http 2, or enable HTTP/2 on "
                "it)")
    if outcome == "protocol":
        return (f"not an HTTP/1.1 answer the engine can read from {where} (the run would count "
                "`protocol` errors): does the port speak HTTP?")
    if outcome in ("stream_reset", "goaway", "flow_control"):
        return (f"{where} ended the HTTP/2 stream without an answer ({outcome.replace('_', ' ')})"
                ": is the server overloaded, or refusing this request?")
    return f"no answer from {where} (the engine recorded {outcome or 'nothing'})"


# OpenSSL's X509_V_ERR_* codes, by the reason a user can act on.
_EXPIRED = {9: "not yet valid", 10: "expired"}
_UNKNOWN_ISSUER = (2, 18, 19, 20, 21)
_NAME_MISMATCH = (62, 64)


def tls_failure(answer: Answer, tls: TLS, target: Target) -> str:
    """One line: why the engine's TLS handshake failed, and what to do about it."""
    name = tls.verify_name(target.hostname)
    reason = answer.tls_reason(tls)
    code = int(answer.probe.get("verify") or 0)
    if code and "CERTIFICATE_VERIFY_FAILED" in reason:
        message = answer.probe.get("verify_message") or f"error {code}"
        if code in _EXPIRED:
            return (f"certificate rejected: {_EXPIRED[code]} ({message}); renew the "
                    "server's certificate (or check this machine's clock)")
        if code in _UNKNOWN_ISSUER:
            return ("certificate rejected: unknown issuer (not signed by a trusted CA: "
                    f"{message}); pass --ca-cert CA.pem (tls.ca) with the CA that "
                    "signed it, or --insecure to skip verification")
        if code in _NAME_MISMATCH:
            return (f"certificate rejected: name mismatch (not valid for {name}); pass "
                    "--server-name NAME (tls.server_name) with a name the certificate carries")
        return (f"certificate rejected: {message}; fix the server's certificate, or "
                "pass --insecure to skip verification")
    if "CERTIFICATE_REQUIRED" in reason or ("HANDSHAKE_FAILURE" in reason and not tls.cert):
        return ("TLS handshake failed: the server requires a client certificate "
                f"({reason}); pass --client-cert and --client-key (tls.cert, tls.key)")
    if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason \
            or "NO_PROTOCOLS_AVAILABLE" in reason:
        return (f"TLS handshake failed: no TLS version in common ({reason}); the server "
                f"does not accept tls.versions {list(tls.versions)}")
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
        return (f"TLS handshake failed: the server rejected the client certificate "
                f"({reason}); pass one signed by a CA it trusts (--client-cert)")
    if "NO_APPLICATION_PROTOCOL" in reason:
        hint = ("the server will not speak HTTP/2 over TLS; drop --http 2, or point at a "
                "listener with HTTP/2 enabled" if "h2" in tls.alpn else "check tls.alpn")
        return (f"TLS handshake failed: the server accepts none of the protocols offered by "
                f"ALPN ({', '.join(tls.alpn)}): {hint}")
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason \
            or "PACKET_LENGTH_TOO_LONG" in reason or "HTTP_REQUEST" in reason:
        return (f"TLS handshake failed ({reason}): the target does not speak TLS on this "
                "port; use http:// or the server's TLS port")
    return f"TLS handshake failed ({reason}); check the target's TLS settings"
