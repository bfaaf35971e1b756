"""Secrets kept out of what a run archives: result files travel as CI artifacts.

The profile text stored in the Parquet metadata keeps its comments and layout, with the values
of credential headers (Authorization, Proxy-Authorization, Cookie, any header whose name holds
key, token, secret, auth, password or session, and those named in `[redact] headers`), URL
user-info (`http://user:pass@host`) and any other secret string the caller names (values
taken from the environment) replaced by `<redacted>`, wherever they occur in the text. The
result must still parse to the profile it was, less those values (`ls` judges the archived
objectives again); where a plain replacement in the text cannot promise that (a secret written
with TOML escapes, or one that also occurs in a key or a number), the profile is written out
again from its parsed form instead, without comments.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
# A header whose name holds one of these (any case) carries a credential: X-Api-Key,
# X-Auth-Token, X-Session-Id, ... A profile names more in `[redact] headers = [...]`.
SECRET_WORDS = ("key", "token", "secret", "auth", "password", "session")
# Tables whose keys are header names: [[requests]] headers, gRPC metadata.
_HEADER_TABLES = frozenset({"headers", "metadata"})
# Secrets shorter than this are not replaced in messages: they would blank out common words.
MESSAGE_SECRET_MIN = 4
_message_secrets: set[str] = set()
# scheme://userinfo@ : RFC 3986 section 3.2.1 user-info ends at the first "@" of the
# authority, which ends at "/", "?" or "#". "<" and ">" are not URL characters, so a redacted
# URL never matches again.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s\"'<>]+)@")
_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def redact_url(text: str) -> str:
    """`text` with the user-info of every URL in it replaced (http://<redacted>@host/)."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def is_secret_header(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a header of this name carries a credential (module docstring)."""
    low = name.lower()
    return (low in SECRET_HEADERS or any(word in low for word in SECRET_WORDS)
            or low in {e.lower() for e in extra})


def redact_headers_of(data: Any) -> list[str]:
    """The profile's `[redact] headers` list (names of more secret headers), [] if none."""
    table = data.get("redact") if isinstance(data, dict) else None
    names = table.get("headers") if isinstance(table, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def secrets_of(data: Any, secrets: Iterable[str] = ()) -> set[str]:
    """The secret strings of a parsed profile: credential header values (by name, in any
    headers table; Authorization, Proxy-Authorization and Cookie anywhere), URL user-info,
    and `secrets` (e.g. values expanded from the environment)."""
    found = {s for s in secrets if s}
    extra = redact_headers_of(data)

    def walk(value: Any, key: str | None, in_headers: bool) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, None, False)
                walk(v, k, key in _HEADER_TABLES)
        elif isinstance(value, list):
            for item in value:
                walk(item, None, False)
        elif isinstance(value, str):
            if key is not None and value and (key.lower() in SECRET_HEADERS or (
                    in_headers and is_secret_header(key, extra))):
                found.add(value)
            found.update(m.group("userinfo") for m in _USERINFO.finditer(value))

    walk(data, None, False)
    return found


def hide_in_messages(values: Iterable[str]) -> None:
    """Secrets (environment values, credential headers) that every message this process
    prints replaces with <redacted> (redact_message): an error line lands in CI logs."""
    _message_secrets.update(v for v in values if len(v) >= MESSAGE_SECRET_MIN)


def profile_secrets(text: str, secrets: Iterable[str] = ()) -> set[str]:
    """secrets_of() a profile's text (only `secrets` when it does not parse)."""
    if not text:
        return set(secrets)
    import tomllib  # where there is a profile to parse

    try:
        return secrets_of(tomllib.loads(text), secrets)
    except (tomllib.TOMLDecodeError, RecursionError):
        return set(secrets)


def redact_message(text: str) -> str:
    """`text` with the secrets given to hide_in_messages, as they are and percent-encoded (as
    they appear in a URL), and URL user-info replaced."""
    from urllib.parse import quote

    for secret in sorted(_message_secrets, key=len, reverse=True):
        for form in dict.fromkeys((secret, quote(secret, safe=""), quote(secret))):
            text = text.replace(form, REDACTED)
    return redact_url(text)


def redact_profile(text: str, secrets: Iterable[str] = ()) -> str:
    """The profile `text` as results archive it (module docstring)."""
    if not text.strip():
        return text         # a run from flags: no profile, nothing to parse
    import tomllib

    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        # Not a profile this version reads (it was validated before the run, so this is a
        # caller's text): replace what can be seen.
        found = {s for s in secrets if s}
        for secret in sorted(found, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return redact_url(text)
    found = secrets_of(data, secrets)
    if not found:
        return text
    ordered = sorted(found, key=len, reverse=True)    # "ab" before "a"

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(item) for item in value]
        if isinstance(value, str):
            for secret in ordered:
                value = value.replace(secret, REDACTED)
        return value

    expected = scrub(data)
    redacted = text
    for secret in ordered:
        redacted = redacted.replace(secret, REDACTED)
    try:
        if tomllib.loads(redacted) == expected and not any(s in redacted for s in ordered):
            return redacted
    except tomllib.TOMLDecodeError:
        pass
    return ("# loadforge: written out again from the parsed profile, with secrets redacted\n"
            + dump_toml(expected))


def dump_toml(data: dict[str, Any]) -> str:
    """TOML text that tomllib reads back as `data` (a dict as tomllib returns one)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, table in tables:
        lines += ["", f"[{_key(key)}]"]
        lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_key(key)}]]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:     # TOML forbids raw control characters
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a TOML value: {type(value).__name__}")
