"""What a flow sees: the User it is handed and the httpx-shaped Response of each step.

A step is an awaitable (`Step`) that yields itself to the driver (loadforge/flows/driver.py):
the driver submits its bytes to the engine and resumes the flow with the Response once the
engine has sent, timed and parsed it. Nothing here touches a socket.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Generator, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from loadforge.units import parse_duration

ERROR_NAMES = {5: "connect", 6: "timeout", 7: "reset", 8: "protocol"}


class TransportError(Exception):
    """A step got no HTTP response: connect failure, timeout, reset or protocol error."""


class ConnectError(TransportError):
    pass


class TimeoutException(TransportError):
    pass


class ResetError(TransportError):
    pass


class ProtocolError(TransportError):
    pass


class HTTPStatusError(Exception):
    """raise_for_status() on a 4xx or 5xx response."""


class FlowUsageError(Exception):
    """A flow awaited something other than a user.* call (the engine drives flows, not
    asyncio, unless the module is in asyncio mode: flows/loader.py)."""


ERRORS = {5: ConnectError, 6: TimeoutException, 7: ResetError, 8: ProtocolError}


class Headers(Mapping[str, str]):
    """Response headers, case-insensitive; repeated ones joined by ", " (get_list for each)."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def get_list(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self._items if k.lower() == key]

    def __getitem__(self, name: str) -> str:
        values = self.get_list(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.lower() for k, _ in self._items))

    def __len__(self) -> int:
        return len(set(k.lower() for k, _ in self._items))

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _dechunk(body: bytes) -> bytes:
    out = []
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            break
        size = int(body[pos:eol].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out.append(body[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2
    return b"".join(out)


class Response:
    """One step's response, as the engine captured it (status line, headers, body); headers
    and body are split out of the raw bytes when first asked for."""

    __slots__ = ("status_code", "name", "elapsed_ns", "_raw", "_headers", "_content")

    def __init__(self, status: int, raw: bytes, name: str, elapsed_ns: int) -> None:
        self.status_code = status
        self.name = name
        self.elapsed_ns = elapsed_ns
        self._raw = raw
        self._headers: Headers | None = None
        self._content: bytes | None = None

    def _split(self) -> None:
        raw = self._raw
        end = raw.find(b"\r\n\r\n")
        body = raw[end + 4:] if end >= 0 else b""
        if body and (b"hunked" in raw[:end] or b"HUNKED" in raw[:end]) \
                and any(k.lower() == "transfer-encoding" and "chunked" in v.lower()
                        for k, v in self.headers.items()):
            body = _dechunk(body)
        self._content = body

    def _parse_headers(self) -> None:
        raw = self._raw
        end = raw.find(b"\r\n\r\n")
        head = raw[:end] if end >= 0 else raw
        items = []
        for line in head.split(b"\r\n")[1:]:
            k, sep, v = line.partition(b":")
            if sep:
                items.append((k.strip().decode("latin-1"), v.strip().decode("latin-1")))
        self._headers = Headers(items)

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._parse_headers()
        assert self._headers is not None
        return self._headers

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._split()
        assert self._content is not None
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    def raise_for_status(self) -> Response:
        if self.status_code >= 400:
            raise HTTPStatusError(f"{self.status_code} for step {self.name}")
        return self

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}] {self.name}>"


class Step:
    """An awaitable step: yields itself to the driver, returns the Response it is sent."""

    __slots__ = ("data", "head", "name")

    def __init__(self, data: bytes, head: bool, name: str) -> None:
        self.data = data
        self.head = head
        self.name = name

    def __await__(self) -> Generator[Any, Any, Response]:
        response = yield self
        return response   # type: ignore[no-any-return]


class Think:
    __slots__ = ("ns",)

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __await__(self) -> Generator[Any, Any, None]:
        yield self


def duration_ns(value: Any) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"think time must be >= 0, got {value!r}")
        return int(value * 1e9)
    return int(parse_duration(value, "user.think", allow_zero=True) * 1e9)


class User:
    """The user a flow runs as: one per arrival (open model) or per looping user (closed).

    vars: state the flow keeps (kept across a closed-model user's flows); row / rows: the
    arrival's feeder rows (the first feeder's, and every feeder's by name); cookies: set by
    responses' Set-Cookie, sent back on the user's later steps; base_url: the target's URL
    (scheme, host, path prefix), for an httpx client's base_url."""

    __slots__ = ("vars", "row", "rows", "cookies", "index", "base_url", "_checks", "_base")

    def __init__(self, base: tuple[str, str, str], checks: dict[str, list[int]],
                 index: int = 0, base_url: str = "") -> None:
        self.vars: dict[str, Any] = {}
        self.row: dict[str, str] | None = None
        self.rows: dict[str, dict[str, str]] = {}
        self.cookies: dict[str, str] = {}
        self.index = index
        self.base_url = base_url
        self._checks = checks
        self._base = base      # (Host header, path prefix, User-Agent)

    def request(self, method: str, url: str, *, params: Any = None,
                headers: Mapping[str, str] | None = None, json: Any = None,
                content: bytes | str | None = None, data: Mapping[str, Any] | None = None,
                name: str | None = None) -> Step:
        method = method.upper()
        host, prefix, agent = self._base
        if "://" in url:
            parts = urlsplit(url)
            url = parts.path or "/"
            if parts.query:
                url += "?" + parts.query
        if not url.startswith("/"):
            url = "/" + url
        path = prefix + url
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        if name is None:
            name = f"{method} {url.split('?', 1)[0]}"
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n"
        body = b""
        content_type = None
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            content_type = "application/json"
        elif data is not None:
            body = urlencode(data, doseq=True).encode()
            content_type = "application/x-www-form-urlencoded"
        elif content is not None:
            body = content.encode() if isinstance(content, str) else bytes(content)
        given: tuple[str, ...] = ()
        if headers:
            given = tuple(k.lower() for k in headers)
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()
                            if k.lower() not in ("host", "content-length"))
        if content_type and "content-type" not in given:
            head += f"Content-Type: {content_type}\r\n"
        if self.cookies and "cookie" not in given:
            head += "Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()) + "\r\n"
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n"
        data_bytes = (head + "\r\n").encode("latin-1") + body
        return Step(data_bytes, method == "HEAD", name)

    def get(self, url: str, **kw: Any) -> Step:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> Step:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> Step:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> Step:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> Step:
        return self.request("DELETE", url, **kw)

    def head(self, url: str, **kw: Any) -> Step:
        return self.request("HEAD", url, **kw)

    def options(self, url: str, **kw: Any) -> Step:
        return self.request("OPTIONS", url, **kw)

    def think(self, duration: Any) -> Think:
        """Wait `duration` ("200ms", or seconds): stretches the flow, never the schedule."""
        return Think(duration_ns(duration))

    def check(self, condition: Any, name: str) -> bool:
        """Count a named check, passed when `condition` is true; returns it as a bool."""
        ok = bool(condition)
        counts = self._checks.get(name)
        if counts is None:
            counts = self._checks[name] = [0, 0]
        counts[0 if ok else 1] += 1
        return ok
