"""What the engine sends: a request of the plan encoded for HTTP/1.1 and for HTTP/2.

The pre-encoded request of every mix entry (HTTP/1.1 bytes, or an HTTP/2 header list and
body) and the header block of a templated HTTP/2 request, laid out as the engine's
`engine/http1.pxi` and `engine/http2.pxi` send them. The preflight encodes its one request with
the same functions, so that it asks what the run asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loadforge import __version__
from loadforge.config.plan import Request

# Templates are an optional part of a plan: a run without them does without the feeders'
# modules (h2_template_head loads them).
if TYPE_CHECKING:
    from loadforge.config import feeders

USER_AGENT = f"loadforge/{__version__}"


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


def template_head(req: Request, host: str, prefix: str = "") -> tuple[str, str, bool]:
    """A templated request's HTTP/1.1 head around its path, as encode_request lays it out:
    the request line's start, what follows the path up to the template's own headers, and
    whether it carries a Content-Length even without a body (engine/tables.compile_templates)."""
    return (f"{req.method} {prefix.rstrip('/')}",
            f" HTTP/1.1\r\nHost: {host_header(req, host)}\r\nUser-Agent: {USER_AGENT}\r\n",
            req.method in ("POST", "PUT", "PATCH"))


# HTTP/2 forbids connection-specific headers (RFC 9113 8.2.2); Host becomes :authority.
H2_DROPPED = ("host", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
              "upgrade", "content-length")


def h2_headers(req: Request, host: str, prefix: str = "",
               scheme: str = "http") -> list[tuple[str, str]]:
    """The request's HTTP/2 header list, pseudo-headers first, names in lower case; scheme is
    the target URL's (https once TLS carries h2)."""
    headers = [(":method", req.method), (":path", request_path(prefix, req.path) or "/"),
               (":scheme", scheme), (":authority", host_header(req, host)),
               ("user-agent", USER_AGENT)]
    headers += [(name.lower(), value) for name, value in req.headers
                if name.lower() not in H2_DROPPED]
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        headers.append(("content-length", str(len(req.body))))
    return headers


def h2_template_head(req: Request, tpl: feeders.Template, host: str, prefix: str = "",
                     scheme: str = "http") -> list[tuple[str, feeders.Parts | None]]:
    """A templated request's HTTP/2 header block as h2_headers lays it out, its values as
    template parts (engine/tables.compile_h2_templates): the path and header values from the
    template (their ${VAR} resolved), the content-length computed when the body has slots."""
    from loadforge.config.feeders import Slot
    from loadforge.engine.tables import BODY_LENGTH

    head: list[tuple[str, feeders.Parts | None]] = [
        (":method", (req.method,)), (":path", (prefix.rstrip("/"), *tpl.path)),
        (":scheme", (scheme,)), (":authority", (host_header(req, host),)),
        ("user-agent", (USER_AGENT,))]
    head += [(name.lower(), parts) for name, parts in tpl.headers
             if name.lower() not in H2_DROPPED]
    if any(isinstance(p, Slot) for p in tpl.body):
        head.append(("content-length", BODY_LENGTH))
    elif tpl.body or req.method in ("POST", "PUT", "PATCH"):
        length = sum(len(p) if isinstance(p, bytes) else len(p.encode("utf-8", "surrogateescape"))
                     for p in tpl.body if not isinstance(p, Slot))
        head.append(("content-length", (str(length),)))
    return head


def encode_h2_request(req: Request, host: str, prefix: str = "", scheme: str = "http",
                      ) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """What the engine's HTTP/2 side sends for req: its header list and body, as bytes."""
    return ([(k.encode("latin-1"), v.encode("latin-1"))
             for k, v in h2_headers(req, host, prefix, scheme)], req.body)
