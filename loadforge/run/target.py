"""The run's target: its URL parsed and resolved (`parse_target`), and the TLS settings an
https:// target runs with (`with_tls`), checked before any worker starts."""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from loadforge.config.plan import Plan
from loadforge.errors import InputError, TargetUnreachable


@dataclass
class Target:
    """Where a run sends its requests: the URL, and what the engine connects to."""

    url: str
    host: str          # for the Host header
    address: str       # what the engine connects to
    port: int
    path: str = ""     # the URL's path: a prefix of every request's path
    hostname: str = ""  # the URL's host without port: TLS verifies the certificate against it
    https: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.https else "http"


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
        # An ASCII name as bytes: the idna codec (2 ms to import) only for one that needs it.
        name = parts.hostname.encode() if parts.hostname.isascii() else parts.hostname
        info = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetUnreachable(f"target {url}: cannot resolve {parts.hostname} ({exc.strerror})") from None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return Target(url, host, str(info[0][4][0]), port, parts.path, parts.hostname,
                  parts.scheme == "https")


def with_tls(plan: Plan, target: Target) -> Plan:
    """The plan with the TLS settings its target uses: an https:// target verifies by default;
    TLS settings for an http:// target are a mistake, said as one. Files that do not load
    (not PEM, a key that does not match) are bad input too, found before any worker starts."""
    if not target.https:
        if plan.tls is not None:
            raise InputError(f"target {target.url}: TLS settings ([tls], --ca-cert, "
                             "--client-cert, --server-name, --insecure) need an https:// target")
        return plan
    # TLS settings are an optional part of a plan: an http:// run does without their module.
    from loadforge.config.tls import TLS

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
    except OSError as exc:          # ssl.SSLError is one
        files = ", ".join(f for f in (tls.ca, tls.cert, tls.key) if f)
        raise InputError(f"tls: cannot load {files}: {getattr(exc, 'reason', None) or exc}"
                         ) from None
    return replace(plan, tls=tls)
