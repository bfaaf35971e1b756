"""TLS settings of a plan: the profile's `[tls]` table and the `--ca-cert`, `--client-cert`,
`--client-key`, `--server-name`, `--insecure` flags, validated once here.

The settings build the engine's SSL_CTX (`engine_settings`, read by `engine/tls.pxi`
`tls_setup`), which the preflight uses too (it goes through the engine: run/preflight.py), so
a certificate the preflight accepts is one the run accepts. `ssl_context` builds Python's
`ssl.SSLContext` from them, to find files that do not load before any worker starts.
Verification is on unless `insecure`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from loadforge.errors import ProfileError

TLS_KEYS = ("ca", "cert", "key", "key_password_env", "server_name", "insecure", "versions",
            "resumption", "alpn")
if TYPE_CHECKING:
    import ssl

# Python's ssl loads where a context is made (https:// targets): a plain run does without it.
VERSIONS = ("1.2", "1.3")
# OpenSSL's version numbers (TLS1_2_VERSION, TLS1_3_VERSION), for the engine's context.
_OPENSSL_VERSIONS = {"1.2": 0x0303, "1.3": 0x0304}
# The checks' patterns, compiled by `re`'s own cache where a profile has a [tls] table: a plain
# run's start does without them.
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_HOST_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_ALPN = r"[\x21-\x7e]{1,255}"


@dataclass(frozen=True)
class TLS:
    """[tls] and the TLS flags: trust, client certificate, server name, versions, ALPN."""

    ca: str | None = None            # PEM CA bundle; None: the system trust store
    cert: str | None = None          # client certificate chain (PEM), mutual TLS
    key: str | None = None           # its private key (PEM); None: in `cert`
    server_name: str | None = None   # SNI and verification name; None: the target's host
    insecure: bool = False           # skip verification (said loudly in the summary)
    versions: tuple[str, ...] = ("1.2", "1.3")
    resumption: bool = True          # reuse session tickets / IDs across reconnects
    alpn: tuple[str, ...] = ("http/1.1",)   # offered in order; HTTP/2 offers "h2"
    # The environment variable holding an encrypted key's passphrase: the name is kept (and
    # archived), the value read when the key is loaded, never stored or shown.
    key_password_env: str | None = None

    def key_password(self) -> str | None:
        """The key's passphrase from the environment; None without key_password_env."""
        if self.key_password_env is None:
            return None
        return os.environ.get(self.key_password_env)

    def verify_name(self, host: str) -> str:
        """The name the certificate must carry: server_name, else the target URL's host."""
        return self.server_name or host.strip("[]")

    def engine_settings(self, host: str) -> dict[str, Any]:
        """What `_core.Engine(tls=...)` takes: plain values, pickled to the workers."""
        name = self.verify_name(host)
        ip = _is_ip(name)
        return {"ca": self.ca, "cert": self.cert, "key": self.key,
                "insecure": self.insecure, "verify_name": name, "verify_ip": ip,
                # RFC 6066 section 3: no SNI for an address literal
                "sni": "" if ip else name,
                "min_version": _OPENSSL_VERSIONS[min(self.versions)],
                "max_version": _OPENSSL_VERSIONS[max(self.versions)],
                "resumption": self.resumption, "alpn": list(self.alpn),
                "key_password": self.key_password() or ""}

    def ssl_context(self) -> ssl.SSLContext:
        """Python's context, with the engine's settings (with_tls checks the files with it). Raises OSError/ssl.SSLError
        when a file cannot be loaded."""
        import ssl

        versions = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = versions[min(self.versions)]
        ctx.maximum_version = versions[max(self.versions)]
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca:
            ctx.load_verify_locations(cafile=self.ca)
        else:
            ctx.load_default_certs()
        if self.cert:
            asked = []

            def password() -> str:
                # Called only for an encrypted key; without it OpenSSL would prompt on the
                # terminal (Python passes no callback when none is given).
                asked.append(True)
                return self.key_password() or ""

            try:
                ctx.load_cert_chain(self.cert, self.key, password=password)
            except ssl.SSLError:
                if asked and self.key_password() is None:
                    where = self.key or self.cert
                    raise ProfileError(f"tls: the key {where} is encrypted: set "
                                       "tls.key_password_env (or --client-key-password-env) "
                                       "to the name of an environment variable holding its "
                                       "passphrase") from None
                if asked:
                    raise ProfileError(f"tls: the key {self.key or self.cert} does not decrypt "
                                       f"with the passphrase in ${self.key_password_env}"
                                       ) from None
                raise
        ctx.set_alpn_protocols(list(self.alpn))
        return ctx

    def describe(self) -> dict[str, Any]:
        """The settings as the summary and the Parquet metadata record them."""
        return {"ca": self.ca or "system", "client_cert": bool(self.cert),
                "server_name": self.server_name, "verify": not self.insecure,
                "versions": list(self.versions), "resumption": self.resumption,
                "alpn_offered": list(self.alpn)}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _fail(where: str, message: str) -> ProfileError:
    return ProfileError(f"{where} {message}")


def _file(where: str, value: Any, base: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"must be a file path, got {value!r}")
    path = os.path.join(base, os.path.expanduser(value))
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise _fail(where, f"must be a readable PEM file, got {value!r} (not found or not "
                           "readable)")
    return os.path.abspath(path)


def _password_env(where: str, value: Any, must_be_set: bool = True) -> str:
    """The name of the environment variable with the key's passphrase: set, and a name (the
    passphrase itself written here would end up in the archived profile)."""
    if not isinstance(value, str) or not re.fullmatch(_ENV_NAME, value):
        raise _fail(where, "must be the name of an environment variable such as "
                           f"\"CLIENT_KEY_PASSWORD\", got {'a value' if isinstance(value, str) else repr(value)}")
    if must_be_set and value not in os.environ:
        raise _fail(where, f"names the environment variable {value}, which is not set")
    return value


def _server_name(where: str, value: Any) -> str:
    if isinstance(value, str) and (_is_ip(value) or (
            len(value) <= 253 and all(re.fullmatch(_HOST_LABEL, p) for p in value.rstrip(".").split(".")))):
        return value.rstrip(".")
    raise _fail(where, f"must be a host name such as \"api.example.com\" or an IP address, "
                       f"got {value!r}")


def check_tls(table: Any, label: str, base: str = "", archived: bool = False) -> TLS:
    """A profile's [tls] table -> TLS; `label` starts messages ("profile spike.toml:"), `base`
    is the directory relative file paths are read from (the profile's)."""
    if not isinstance(table, dict):
        raise _fail(f"{label}: tls", f"must be a table, got {table!r}")
    for key in table:
        if key not in TLS_KEYS:
            raise _fail(f"{label}: tls", f"has unknown key '{key}'; allowed: {', '.join(TLS_KEYS)}")
    files = {key: _file(f"{label}: tls.{key}", table[key], base)
             for key in ("ca", "cert", "key") if key in table}
    tls = TLS(ca=files.get("ca"), cert=files.get("cert"), key=files.get("key"))
    if tls.key and not tls.cert:
        raise _fail(f"{label}: tls.key", "needs tls.cert, the certificate it belongs to")
    if "key_password_env" in table:
        # An archived profile is read where its environment is not: the name alone is checked.
        tls = replace(tls, key_password_env=_password_env(f"{label}: tls.key_password_env",
                                                          table["key_password_env"],
                                                          must_be_set=not archived))
    if "server_name" in table:
        tls = replace(tls, server_name=_server_name(f"{label}: tls.server_name",
                                                    table["server_name"]))
    for key in ("insecure", "resumption"):
        if key in table and not isinstance(table[key], bool):
            raise _fail(f"{label}: tls.{key}", f"must be true or false, got {table[key]!r}")
    tls = replace(tls, insecure=table.get("insecure", False),
                  resumption=table.get("resumption", True))
    if "versions" in table:
        value = table["versions"]
        if not isinstance(value, list) or not value or \
                any(v not in VERSIONS for v in value if isinstance(v, str)) or \
                not all(isinstance(v, str) for v in value):
            raise _fail(f"{label}: tls.versions", f'must be a non-empty array among "1.2", '
                                                 f'"1.3", got {value!r}')
        tls = replace(tls, versions=tuple(sorted(set(value))))
    if "alpn" in table:
        value = table["alpn"]
        if not isinstance(value, list) or not value or \
                not all(isinstance(v, str) and re.fullmatch(_ALPN, v) for v in value):
            raise _fail(f"{label}: tls.alpn", f'must be a non-empty array of protocol names '
                                             f'such as "http/1.1", got {value!r}')
        tls = replace(tls, alpn=tuple(value))
    return tls


def with_tls_flags(tls: TLS | None, *, ca_cert: str | None = None,
                   client_cert: str | None = None, client_key: str | None = None,
                   server_name: str | None = None, insecure: bool = False,
                   client_key_password_env: str | None = None) -> TLS | None:
    """The plan's TLS settings with the command line's flags over them (paths relative to the
    working directory). None when neither set anything."""
    if tls is None and not (ca_cert or client_cert or client_key or server_name or insecure
                            or client_key_password_env):
        return None
    tls = tls or TLS()
    if ca_cert is not None:
        tls = replace(tls, ca=_file("--ca-cert", ca_cert, ""))
    if client_cert is not None:
        tls = replace(tls, cert=_file("--client-cert", client_cert, ""), key=None)
    if client_key is not None:
        tls = replace(tls, key=_file("--client-key", client_key, ""))
    if tls.key and not tls.cert:
        raise ProfileError("--client-key needs --client-cert (or tls.cert in the profile)")
    if client_key_password_env is not None:
        tls = replace(tls, key_password_env=_password_env("--client-key-password-env",
                                                          client_key_password_env))
    if server_name is not None:
        tls = replace(tls, server_name=_server_name("--server-name", server_name))
    if insecure:
        tls = replace(tls, insecure=True)
    return tls
