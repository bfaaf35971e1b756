"""gRPC unary calls as HTTP/2 requests: the profile's [grpc] table and `grpc = "pkg.Service/Method"`
requests, turned once before the run into what the engine already sends.

A call is `POST /pkg.Service/Method` with `content-type: application/grpc`, `te: trailers`,
`grpc-timeout` from the run's timeout, the request's metadata as headers, and a body of one
message: a 5-byte prefix (compressed flag 0, 4-byte big-endian length) then the protobuf bytes,
encoded here with protobuf's own library from the TOML table in the proto's JSON mapping. The
engine (engine/http2.pxi) recognises a gRPC call by its content-type and makes its grpc-status
the outcome (`grpc:<CODE>`, plan.GRPC_OUTCOMES).

The .proto is compiled by grpcio-tools' protoc into a descriptor set (or one is given), read
into a descriptor pool: protoc's first error line, an unknown method or a field the message has
not become one-line ProfileErrors (exit 2).

Feeder slots in a message: a protobuf string is length-prefixed, and so are the messages that
hold it and the call, so a value cannot be spliced into fixed bytes. Instead the message is
encoded once per feeder row before the run (MessageEncoding, a view of the feeder table of its
own, feeders.Template.body_encoder), and the engine sends the row's bytes as the body, as it
sends any templated body. One column of one feeder per message (in one string field, or
several); the message is the row's whole body.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from loadforge.config import feeders as feeders_module
from loadforge.config.plan import GRPC_CODES, GRPC_PREFIX
from loadforge.errors import ProfileError
from loadforge.units import show_value

GRPC_KEYS = ("proto", "import_paths", "descriptor_set", "expect_status", "reflection")
GRPC_REQUEST_KEYS = ("name", "grpc", "message", "metadata", "weight")
# The engine writes these for every call; metadata may not replace them.
RESERVED_METADATA = ("content-type", "te", "grpc-timeout", "content-length", "host",
                     "user-agent", "grpc-encoding", "grpc-accept-encoding")
CONTENT_TYPE = "application/grpc"
# "helloworld.Greeter/SayHello": the service's full name (its package, if any, first), a slash,
# the method.
_CALL = re.compile(r"((?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*)/([A-Za-z_][A-Za-z0-9_]*)")
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")
PROTOC_TIMEOUT_S = 60.0


@dataclass(frozen=True, eq=False)
class MessageEncoding:
    """A feeder value -> the call's body (prefix and message) with the value in place of the
    slot in the message's strings; the feeder table's view of the column (feeders.py)."""

    descriptor: Any
    message: Any               # the message table, its strings holding `slot`
    slot: str                  # "{feeder.column}"
    where: str

    def __call__(self, value: str) -> bytes:
        return encode_message(self.descriptor, _substitute(self.message, self.slot, value),
                              self.where)


def _substitute(value: Any, slot: str, text: str) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, slot, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, slot, text) for v in value]
    if isinstance(value, str):
        return value.replace(slot, text)
    return value


@dataclass(frozen=True)
class GrpcConfig:
    """The [grpc] table: the descriptor pool its proto or descriptor set gives (None when
    reading an archived profile back: neither file is this run's), and the codes that count
    as successes."""

    pool: Any
    expect_status: tuple[str, ...] = ("OK",)

    @property
    def fail_status(self) -> tuple[str, ...]:
        """The gRPC outcomes counted as errors (Plan.fail_status)."""
        return tuple(GRPC_PREFIX + code for code in GRPC_CODES if code not in self.expect_status)


def parse_grpc(label: str, raw: Any, profile_path: str, archived: bool) -> GrpcConfig:
    where = f"{label}: grpc"
    if not isinstance(raw, dict):
        raise ProfileError(f"{where} must be a table, got {show_value(raw)}")
    for key in raw:
        if key not in GRPC_KEYS:
            raise ProfileError(f"{where} has unknown key '{key}'; allowed: {', '.join(GRPC_KEYS)}")
    expect = raw.get("expect_status", ["OK"])
    if not isinstance(expect, list) or not expect:
        raise ProfileError(f"{where}.expect_status must be a non-empty array of gRPC code names "
                           f"such as [\"OK\", \"NOT_FOUND\"], got {show_value(expect)}")
    for i, code in enumerate(expect):
        if code not in GRPC_CODES:
            raise ProfileError(f"{where}.expect_status[{i}] must be a gRPC code name "
                               f"({', '.join(GRPC_CODES)}), got {show_value(code)}")
    if raw.get("reflection", False):
        raise ProfileError(f"{where}.reflection is not supported yet: give grpc.proto or "
                           "grpc.descriptor_set")
    given = [k for k in ("proto", "descriptor_set") if k in raw]
    if len(given) != 1:
        raise ProfileError(f"{where} needs exactly one of proto (a .proto file) or descriptor_set "
                           f"(protoc --descriptor_set_out), got {len(given)}")
    base = os.path.dirname(os.path.abspath(profile_path)) if profile_path != "<profile>" \
        else os.getcwd()
    import_paths = raw.get("import_paths", [])
    if not isinstance(import_paths, list) or not all(isinstance(p, str) for p in import_paths):
        raise ProfileError(f"{where}.import_paths must be an array of folders, "
                           f"got {show_value(import_paths)}")
    value = raw[given[0]]
    if not isinstance(value, str) or not value:
        raise ProfileError(f"{where}.{given[0]} must be a file name, got {show_value(value)}")
    if archived:
        return GrpcConfig(None, tuple(expect))
    file = os.path.join(base, value)
    if given[0] == "proto":
        data = compile_proto(file, [os.path.join(base, p) for p in import_paths],
                             f"{where}.proto")
    else:
        try:
            with open(file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ProfileError(f"{where}.descriptor_set: cannot read {value}: "
                               f"{e.strerror or e}") from None
    return GrpcConfig(descriptor_pool(data, f"{where}.{given[0]}"), tuple(expect))


def compile_proto(proto: str, import_paths: list[str], where: str) -> bytes:
    """A serialized FileDescriptorSet of proto and its imports, from grpcio-tools' protoc."""
    try:
        import grpc_tools
    except ImportError:
        raise ProfileError(f"{where} needs grpcio-tools (pip install grpcio-tools), or give "
                           "grpc.descriptor_set") from None
    if not os.path.isfile(proto):
        raise ProfileError(f"{where}: no such file {proto}")
    paths = import_paths or [os.path.dirname(proto)]
    # google/protobuf/*.proto (well-known types) ship inside grpc_tools
    builtin = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory(prefix="loadforge-proto-") as tmp:
        out = os.path.join(tmp, "descriptor_set.pb")
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_out={out}",
               "--include_imports", *(f"-I{p}" for p in paths), f"-I{builtin}", proto]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROTOC_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ProfileError(f"{where}: protoc took longer than {PROTOC_TIMEOUT_S:g}s") from None
        if done.returncode != 0 or not os.path.exists(out):
            lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            first = lines[0].strip() if lines else f"protoc exited with {done.returncode}"
            raise ProfileError(f"{where} does not compile: {first}")
        with open(out, "rb") as f:
            return f.read()


def descriptor_pool(data: bytes, where: str) -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message import DecodeError

    try:
        files = list(descriptor_pb2.FileDescriptorSet.FromString(data).file)
    except DecodeError:
        raise ProfileError(f"{where} is not a FileDescriptorSet "
                           "(protoc --descriptor_set_out --include_imports)") from None
    pool = descriptor_pool.DescriptorPool()
    # protoc writes dependencies first; a set from elsewhere may not: add what can be added
    # until nothing more can.
    while files:
        left = []
        for f in files:
            try:
                pool.Add(f)
            except (TypeError, KeyError, ValueError):
                left.append(f)
        if len(left) == len(files):
            raise ProfileError(f"{where}: {left[0].name} imports a file the set does not hold "
                               "(protoc --include_imports)")
        files = left
    return pool


def grpc_request(label: str, raw: dict[str, Any], i: int, config: GrpcConfig | None,
                 timeout_s: float, feeders: tuple[Any, ...], secrets: list[str],
                 ) -> tuple[dict[str, Any], bytes, tuple[str, str, MessageEncoding] | None]:
    """A `grpc = ...` request as the plain [[requests]] entry profile.py validates (POST to
    the method's path, the gRPC headers and the metadata), and the call's body; with a
    feeder slot in the message, (feeder, column, encoding) of the body's one slot too (the
    body given is then the message with the slot as it is, for the preflight's sake)."""
    where = f"{label}: requests[{i}]"
    for key in raw:
        if key not in GRPC_REQUEST_KEYS:
            raise ProfileError(f"{where} has unknown key '{key}' for a gRPC call; allowed: "
                               f"{', '.join(GRPC_REQUEST_KEYS)}")
    if config is None:
        raise ProfileError(f"{where}.grpc needs a [grpc] table with proto or descriptor_set")
    call = raw["grpc"]
    match = _CALL.fullmatch(call) if isinstance(call, str) else None
    if match is None:
        raise ProfileError(f'{where}.grpc must be "package.Service/Method", got {show_value(call)}')
    message = raw.get("message", {})
    if not isinstance(message, dict):
        raise ProfileError(f"{where}.message must be a table (the message in the proto's JSON "
                           f"mapping), got {show_value(message)}")
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ProfileError(f"{where}.metadata must be a table of strings, "
                           f"got {show_value(metadata)}")
    headers = {"content-type": CONTENT_TYPE, "te": "trailers",
               "grpc-timeout": grpc_timeout(timeout_s)}
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key) or key in RESERVED_METADATA or key.startswith("grpc-"):
            raise ProfileError(f"{where}.metadata.{key} is not a metadata key a call may set "
                               "(lower case letters, digits, '_', '-', '.'; not grpc-* nor "
                               f"{', '.join(RESERVED_METADATA)})")
        if not isinstance(value, str):
            raise ProfileError(f"{where}.metadata.{key} must be a string, got {show_value(value)}")
        headers[key] = value
    entry = {"method": "POST", "path": f"/{match.group(1)}/{match.group(2)}", "headers": headers}
    for key in ("name", "weight"):
        if key in raw:
            entry[key] = raw[key]
    if config.pool is None:
        return entry, b"", None
    input_type = method_input(config.pool, match.group(1), match.group(2), f"{where}.grpc")
    slots: set[tuple[str, str]] = set()
    resolved = _resolve(message, f"{where}.message", {f.name for f in feeders}, secrets, slots)
    body = encode_message(input_type, resolved, f"{where}.message")
    if not slots:
        return entry, body, None
    if len(slots) > 1:
        shown = ", ".join(f"{{{f}.{c}}}" for f, c in sorted(slots))
        raise ProfileError(f"{where}.message holds the slots {shown}: a gRPC message may take "
                           "one feeder column (the message is encoded once per row of it)")
    feeder, column = next(iter(slots))
    return entry, body, (feeder, column, MessageEncoding(input_type, resolved,
                                                         f"{{{feeder}.{column}}}",
                                                         f"{where}.message"))


def method_input(pool: Any, service_name: str, method_name: str, where: str) -> Any:
    """The input message descriptor of a unary (or server-streaming) method."""
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        raise ProfileError(f"{where}: the proto has no service {service_name}") from None
    method = service.methods_by_name.get(method_name)
    if method is None:
        known = ", ".join(sorted(service.methods_by_name)) or "none"
        raise ProfileError(f"{where}: service {service_name} has no method {method_name} "
                           f"(it has: {known})")
    if method.client_streaming:
        raise ProfileError(f"{where}: {service_name}/{method_name} is a client-streaming method; "
                           "only unary and server-streaming calls are sent")
    return method.input_type


def encode_message(descriptor: Any, table: dict[str, Any], where: str) -> bytes:
    """One length-prefixed gRPC message: flag 0 (not compressed), length, protobuf bytes."""
    from google.protobuf import json_format, message_factory

    cls = message_factory.GetMessageClass(descriptor)
    try:
        payload = json_format.ParseDict(table, cls()).SerializeToString()
    except json_format.ParseError as e:
        raise ProfileError(f"{where} does not fit {descriptor.full_name}: "
                           f"{str(e).splitlines()[0]}") from None
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def grpc_timeout(timeout_s: float) -> str:
    """The grpc-timeout header (at most 8 digits and a unit): milliseconds, or seconds."""
    ms = max(1, round(timeout_s * 1000))
    return f"{ms}m" if ms < 10**8 else f"{min(round(timeout_s), 10**8 - 1)}S"


def _resolve(value: Any, where: str, feeder_names: set[str], secrets: list[str],
             slots: set[tuple[str, str]]) -> Any:
    """The message with ${VAR} resolved in its strings; the feeder slots found in them are
    added to `slots`. A slot anywhere but in a string (a key) is refused."""
    if isinstance(value, dict):
        for k in value:
            if any(s.group(1) in feeder_names for s in feeders_module.SLOT.finditer(k)):
                raise ProfileError(f"{where}: a field name cannot hold a feeder slot, got {k!r}")
        return {k: _resolve(v, f"{where}.{k}", feeder_names, secrets, slots)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, f"{where}[{n}]", feeder_names, secrets, slots)
                for n, v in enumerate(value)]
    if isinstance(value, str):
        for slot in feeders_module.SLOT.finditer(value):
            if slot.group(1) in feeder_names:
                slots.add((slot.group(1), slot.group(2)))
        if feeders_module.ENV.search(value):
            return feeders_module.environment(value, where, secrets)
    return value
