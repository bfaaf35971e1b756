"""TOML profile -> validated Plan. Every error names the field and what was expected.

Messages read `profile spike.toml: stages[2].rate must be > 0, got -5`: the file's basename,
then the field's path (arrays indexed from 0, as the default names `stage0`, `request0` are).
The checks themselves are checker.py's; the [slo] table and --slo are read by objectives.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from loadforge import limits
from loadforge.config import feeders as feeders_module
from loadforge.config.checker import PRINTABLE
from loadforge.config.checker import Checker as _Checker
from loadforge.config.checker import check_target as check_target
from loadforge.config.files import read_regular

# --slo's reader, and the objectives they add, where the command line and analysis found them.
from loadforge.config.objectives import parse_slo_flags as parse_slo_flags
from loadforge.config.objectives import slo_table
from loadforge.config.objectives import with_slo_flags as with_slo_flags
from loadforge.config.plan import (
    DEFAULT_STREAMS,
    FLOW_PREFIX,
    Observe,
    Plan,
    Request,
    Stage,
)
from loadforge.config.redact import is_secret_header
from loadforge.errors import ProfileError
from loadforge.units import show_value

# The optional tables' readers load where a profile has the table ([grpc], [observe],
# [[actions]], [sandbox], [tls]): a plain profile, and a run from flags, do without them.
if TYPE_CHECKING:
    from loadforge.config import grpc as grpc_module
    from loadforge.config.observe import Action
    from loadforge.config.sandbox import SandboxConfig

TOP_KEYS = ("name", "target", "load", "stages", "requests", "slo", "observe", "actions", "sandbox",
            "feeders", "tls", "flows", "grpc", "redact")
LOAD_KEYS = ("connections", "workers", "timeout", "fail_status", "timer_resolution",
             "requests_per_connection", "http", "streams", "retry")
HTTP_VERSIONS = ("1.1", "2")
RETRY_POLICIES = ("idempotent", "never")
STAGE_KEYS = ("name", "duration", "rate", "ramp", "concurrency", "think")
RAMP_KEYS = ("from", "to")
REQUEST_KEYS = ("name", "method", "path", "headers", "body", "body_file", "weight",
                "expect_status")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
FAIL_STATUS_CLASSES = ("4xx", "5xx")
# The engine writes these itself (framing and connection reuse depend on them). Host it writes
# from the target unless a request sets its own (a virtual host behind an address).
ENGINE_HEADERS = ("Content-Length", "Transfer-Encoding", "Connection")

DEFAULT_TARGET = "sandbox"
DEFAULT_CONNECTIONS = 64
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_TIMER_RESOLUTION_S = 200e-6

# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def load_profile(path: str) -> Plan:
    """Read, parse and validate the profile at `path`."""
    raw = read_regular(path, "profile")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProfileError(f"profile {path}: not UTF-8 text (byte {e.start}): "
                           "TOML files must be UTF-8") from e
    return plan_from_text(text, path)


def plan_from_text(text: str, path: str = "<profile>", archived: bool = False) -> Plan:
    """Parse and validate a profile's text (a file's, or the one archived with a result)."""
    import tomllib  # 2 ms: a run from flags has no profile to parse

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)".
        raise ProfileError(f"profile {path}: not valid TOML: {e}") from e
    except RecursionError:
        # tomllib recurses once per level of nested arrays and inline tables.
        raise ProfileError(f"profile {path}: arrays or tables nested too deeply") from None
    return plan_from_dict(data, source=text, path=path, archived=archived)


def plan_from_dict(data: dict[str, Any], source: str = "", path: str = "<profile>",
                   archived: bool = False) -> Plan:
    """Validate a parsed profile (the dict tomllib returns) into a Plan.

    `archived`: the profile of a past run, read back from its results: its ${VAR} and
    body_file are left as they are (neither the environment nor the file is this run's)."""
    base = os.path.basename(path)
    check = _Checker("profile" if path == "<profile>" else f"profile {base}")
    top = check.table(data, "")
    check.keys(top, "", TOP_KEYS)
    if "redact" in top:
        # More secret header names, beyond those redact.py knows (values kept out of results
        # and messages).
        raw_redact = check.table(top["redact"], "redact")
        check.keys(raw_redact, "redact", ("headers",))
        names = raw_redact.get("headers", [])
        if not isinstance(names, list):
            check.fail("redact.headers", f"must be an array of header names, got "
                                         f"{show_value(names)}")
        for i, header in enumerate(names):
            check.string(header, f"redact.headers[{i}]")

    default_name = "profile" if path == "<profile>" else os.path.splitext(base)[0]
    name = check.name(top.get("name", default_name), "name")
    target = check.target(top.get("target", DEFAULT_TARGET), "target")
    load = check.table(top.get("load", {}), "load")
    check.keys(load, "load", LOAD_KEYS)
    connections = check.integer(load.get("connections", DEFAULT_CONNECTIONS),
                                "load.connections", minimum=1, maximum=limits.MAX_CONNECTIONS)
    workers = _workers(check, load.get("workers", "auto"))
    timeout_s = (check.duration(load["timeout"], "load.timeout", maximum=limits.MAX_TIMEOUT_S)
                 if "timeout" in load else DEFAULT_TIMEOUT_S)
    fail_status = _fail_status(check, load.get("fail_status", ["4xx", "5xx"]))
    timer_resolution_s = (check.duration(load["timer_resolution"], "load.timer_resolution",
                                         allow_zero=True, maximum=limits.MAX_TIMER_RESOLUTION_S)
                          if "timer_resolution" in load else DEFAULT_TIMER_RESOLUTION_S)
    requests_per_connection = check.integer(load.get("requests_per_connection", 0),
                                            "load.requests_per_connection", minimum=0)
    retry = load.get("retry", "idempotent")
    if retry not in RETRY_POLICIES:
        check.fail("load.retry", f'must be "idempotent" or "never" (a string), got {retry!r}')
    http = load.get("http", "1.1")
    if http not in HTTP_VERSIONS:
        check.fail("load.http", f'must be "1.1" or "2" (a string), got {http!r}')
    grpc_calls = [i for i, r in enumerate(top.get("requests", []))
                  if isinstance(r, dict) and "grpc" in r] \
        if isinstance(top.get("requests", []), list) else []
    if grpc_calls:
        # gRPC runs over HTTP/2 only: h2c by prior knowledge, or h2 by ALPN over TLS
        if load.get("http", "2") != "2":
            check.fail(f"requests[{grpc_calls[0]}].grpc", 'is a gRPC call, which needs HTTP/2: '
                                                         'remove load.http or set it to "2"')
        http = "2"
    streams = check.integer(load.get("streams", DEFAULT_STREAMS), "load.streams", minimum=1,
                            maximum=limits.MAX_STREAMS)
    if "streams" in load and http != "2":
        check.fail("load.streams", 'applies to HTTP/2 only: set load.http = "2"')
    if http == "2" and connections * streams > limits.MAX_STREAM_SLOTS:
        check.fail("load.streams", f"x load.connections ({streams} x {connections}) must be at "
                                   f"most {limits.MAX_STREAM_SLOTS:,}: each stream is a slot the "
                                   "engine allocates up front")

    if "stages" not in top:
        check.fail("", "has no [[stages]]; at least one stage is required")
    raw_stages = check.array_of_tables(top["stages"], "stages", nonempty=True,
                                       maximum=limits.MAX_STAGES)
    stages = tuple(_stage(check, raw, i) for i, raw in enumerate(raw_stages))
    check.unique([s.name for s in stages], "stages", "stage")
    run_s = sum(s.duration_s for s in stages)
    if run_s > limits.MAX_RUN_S:
        check.fail("stages", f"last {run_s:g}s together; a run may last at most "
                             f"{limits.show_seconds(limits.MAX_RUN_S)}")
    for i, stage in enumerate(stages):
        if http == "2" and stage.concurrency is not None \
                and stage.concurrency > connections * streams:
            check.fail(f"stages[{i}].concurrency",
                       f"({stage.concurrency}) must be <= load.connections x load.streams "
                       f"({connections} x {streams}): each closed-model user holds a stream")
        if http != "2" and stage.concurrency is not None and stage.concurrency > connections:
            check.fail(f"stages[{i}].concurrency",
                       f"({stage.concurrency}) must be <= load.connections ({connections}): "
                       "each closed-model user holds a connection; raise load.connections")

    feeders = feeders_module.parse_feeders(check, top.get("feeders", []), path)
    grpc = None
    if "grpc" in top:
        from loadforge.config import grpc as grpc_module

        grpc = grpc_module.parse_grpc(check.label, top["grpc"], path, archived)
    templates: tuple[feeders_module.Template | None, ...] = ()
    secrets: list[str] = []
    if "requests" in top:
        raw_requests = check.array_of_tables(top["requests"], "requests", nonempty=True,
                                             maximum=limits.MAX_REQUESTS)
        pairs = [_request(check, raw, i, feeders, path, None if archived else secrets)
                 if "grpc" not in raw else
                 _grpc_request(check, raw, i, grpc, timeout_s, feeders, path,
                               None if archived else secrets)
                 for i, raw in enumerate(raw_requests)]
        requests = tuple(r for r, _ in pairs)
        if any(t is not None for _, t in pairs):
            templates = tuple(t for _, t in pairs)
        check.unique([r.name for r in requests], "requests", "request")
        for i, r in enumerate(requests):
            if r.name.startswith(FLOW_PREFIX):
                check.fail(f"requests[{i}].name", f"may not begin with {FLOW_PREFIX!r}: such "
                                                  "names are scripted flows' own rows")
        _check_weights(check, requests)
        if len(requests) * len(stages) > limits.MAX_STAGE_REQUESTS:
            check.fail("requests", f"({len(requests)}) times stages ({len(stages)}) must be at "
                                   f"most {limits.MAX_STAGE_REQUESTS:,}: the run keeps "
                                   "histograms for each request in each stage")
    else:
        requests = (Request(name="default"),)
    flows = None
    if "flows" in top:
        raw_flows = check.table(top["flows"], "flows")
        check.keys(raw_flows, "flows", ("module",))
        module = check.string(check.require(raw_flows, "flows", "module",
                                            'the flows\' Python file, e.g. "flows/checkout.py"'),
                              "flows.module")
        if "requests" in top:
            check.fail("flows", "and [[requests]] cannot both be given: a run sends either "
                                "fixed requests or scripted flows")
        base_dir = os.path.dirname(os.path.abspath(path)) if path != "<profile>" else ""
        flows = module if archived else os.path.join(base_dir, module)

    slo = slo_table(check, top.get("slo", {}), stages)
    observe = Observe()
    actions: tuple[Action, ...] = ()
    if "observe" in top or "actions" in top:
        from loadforge.config.observe import validate_actions, validate_observe

        observe = validate_observe(dict(check.table(top.get("observe", {}), "observe")),
                                   check.where("observe"))
        actions = validate_actions([dict(a) for a in
                                    check.array_of_tables(top.get("actions", []), "actions")],
                                   check.where("actions"), sum(s.duration_s for s in stages))
    sandbox = _sandbox(check, top["sandbox"],
                       os.path.dirname(os.path.abspath(path)) if path != "<profile>" else None,
                       archived) if "sandbox" in top else None
    tls = None
    if "tls" in top:
        from loadforge.config.tls import check_tls

        tls = check_tls(top["tls"], check.label,
                        os.path.dirname(os.path.abspath(path)) if path != "<profile>" else "",
                        archived=archived)

    if grpc is not None and grpc_calls:
        fail_status = fail_status + grpc.fail_status
    return Plan(name=name, target=target, stages=stages, requests=requests,
                connections=connections, workers=workers, timeout_s=timeout_s,
                fail_status=fail_status, timer_resolution_s=timer_resolution_s,
                requests_per_connection=requests_per_connection, http=http, streams=streams,
                retry=retry,
                slo=slo, observe=observe, actions=actions, sandbox=sandbox, tls=tls,
                source=source, path=path, feeders=feeders, templates=templates,
                secrets=tuple(dict.fromkeys(s for s in secrets if s)), flows=flows)


def _workers(check: _Checker, value: Any) -> int | None:
    if value == "auto" and isinstance(value, str):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limits.MAX_WORKERS:
        return value
    check.fail("load.workers", f'must be "auto" or an integer from 1 to {limits.MAX_WORKERS}, '
                               f"got {show_value(value)}")


def _fail_status(check: _Checker, value: Any) -> tuple[str, ...]:
    expected = f"must be an array of status classes among {', '.join(FAIL_STATUS_CLASSES)}"
    if not isinstance(value, list):
        check.fail("load.fail_status", f"{expected}, got {show_value(value)}")
    for i, item in enumerate(value):
        if item not in FAIL_STATUS_CLASSES or not isinstance(item, str):
            check.fail(f"load.fail_status[{i}]", f"{expected}, got {show_value(item)}")
        if item in value[:i]:
            check.fail(f"load.fail_status[{i}]", f"repeats {show_value(item)}")
    return tuple(value)


def _expect_status(check: _Checker, value: Any, path: str) -> tuple[int, ...]:
    """[[requests]] expect_status: the statuses that are successes for this request."""
    expected = "must be a non-empty array of HTTP statuses (integers 100-599), such as [200, 404]"
    if not isinstance(value, list) or not value:
        check.fail(path, f"{expected}, got {show_value(value)}")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not 100 <= item <= 599:
            check.fail(f"{path}[{i}]", "must be an HTTP status (an integer 100-599), "
                                       f"got {show_value(item)}")
        if item in value[:i]:
            check.fail(f"{path}[{i}]", f"repeats {item}")
    return tuple(sorted(value))


def _stage(check: _Checker, raw: dict[str, Any], i: int) -> Stage:
    path = f"stages[{i}]"
    check.keys(raw, path, STAGE_KEYS)
    name = check.name(raw.get("name", f"stage{i}"), f"{path}.name")
    duration_s = check.duration(check.require(raw, path, "duration", 'e.g. "30s"'),
                                f"{path}.duration")
    models = [key for key in ("rate", "ramp", "concurrency") if key in raw]
    if len(models) != 1:
        which = "has none" if not models else f"has {' and '.join(models)}"
        check.fail(path, f"needs exactly one of rate (open model, requests/s), "
                         f"ramp = {{from, to}} (open model) or concurrency (closed model); {which}")
    if "think" in raw and "concurrency" not in raw:
        check.fail(f"{path}.think", "only applies to closed-model stages (with concurrency); "
                                    "an open-model stage sends at its rate")
    if "rate" in raw:
        rate = check.number(raw["rate"], f"{path}.rate", minimum=0, inclusive=False,
                            maximum=limits.MAX_RATE)
        return Stage(name=name, duration_s=duration_s, rate_from=rate, rate_to=rate)
    if "ramp" in raw:
        ramp = check.table(raw["ramp"], f"{path}.ramp")
        check.keys(ramp, f"{path}.ramp", RAMP_KEYS)
        start, end = (
            check.number(check.require(ramp, f"{path}.ramp", key, "requests/s"),
                         f"{path}.ramp.{key}", minimum=0, inclusive=True,
                         maximum=limits.MAX_RATE)
            for key in RAMP_KEYS)
        if start == 0 and end == 0:
            check.fail(f"{path}.ramp", "goes from 0 to 0 requests/s; at least one end must be > 0")
        return Stage(name=name, duration_s=duration_s, rate_from=start, rate_to=end)
    concurrency = check.integer(raw["concurrency"], f"{path}.concurrency", minimum=1,
                                maximum=limits.MAX_CONNECTIONS)
    think_s = (check.duration(raw["think"], f"{path}.think", allow_zero=True,
                              maximum=limits.MAX_THINK_S)
               if "think" in raw else 0.0)
    return Stage(name=name, duration_s=duration_s, concurrency=concurrency, think_s=think_s)


def _request(check: _Checker, raw: dict[str, Any], i: int,
             feeders: tuple[feeders_module.Feeder, ...] = (), profile_path: str = "<profile>",
             secrets: list[str] | None = None,
             ) -> tuple[Request, feeders_module.Template | None]:
    """The request, and its template when its path, headers or body hold {feeder.column}
    slots (feeders.py). ${VAR} from the environment is resolved here, into both."""
    path = f"requests[{i}]"
    check.keys(raw, path, REQUEST_KEYS)
    archived = secrets is None
    secrets = [] if secrets is None else secrets
    by_name = {f.name: f for f in feeders}
    name = check.name(raw.get("name", f"request{i}"), f"{path}.name")
    method = check.string(raw.get("method", "GET"), f"{path}.method")
    if method.upper() not in METHODS:
        check.fail(f"{path}.method", f"must be one of {', '.join(METHODS)}, "
                                     f"got {show_value(method)}")
    raw_path = check.string(raw.get("path", "/"), f"{path}.path")
    found: list[str] = []
    target_path = raw_path if archived else \
        feeders_module.environment(raw_path, check.where(f"{path}.path"), found)
    if not target_path.startswith("/") or not PRINTABLE.fullmatch(target_path) \
            or " " in target_path:
        shown = "a value from the environment" if found else show_value(target_path)
        check.fail(f"{path}.path", 'must start with "/" and be printable ASCII without spaces '
                                   f"(percent-encode the rest), got {shown}")
    secrets += found
    raw_headers = check.table(raw.get("headers", {}), f"{path}.headers")
    resolved = {}
    for key, value in raw_headers.items():
        if isinstance(value, str) and feeders_module.ENV.search(value) and not archived:
            found = []
            value = feeders_module.environment(
                value, check.where(f"{path}.headers.{show_value(key)}"), found)
            if not PRINTABLE.fullmatch(value.replace("\t", " ")):
                check.fail(f"{path}.headers.{show_value(key)}",
                           "has a value from the environment with CR, LF or another control "
                           "or non-ASCII character")
            secrets += found
        resolved[key] = value
    headers = _headers(check, resolved, f"{path}.headers")
    if "body" in raw and "body_file" in raw:
        check.fail(path, "has both body and body_file; give one")
    if "body_file" in raw:
        body_file = check.string(raw["body_file"], f"{path}.body_file")
        base = os.path.dirname(os.path.abspath(profile_path)) \
            if profile_path != "<profile>" else os.getcwd()
        body = b"" if archived else feeders_module.read_body_file(
            os.path.join(base, body_file), check.where(f"{path}.body_file"))
    else:
        body_text = check.string(raw.get("body", ""), f"{path}.body")
        try:
            body = body_text.encode("utf-8")
        except UnicodeEncodeError:
            check.fail(f"{path}.body", "must be text that encodes as UTF-8")
    weight = check.integer(raw.get("weight", 1), f"{path}.weight", minimum=1,
                           maximum=limits.MAX_TOTAL_WEIGHT)
    expect_status = (_expect_status(check, raw["expect_status"], f"{path}.expect_status")
                     if "expect_status" in raw else ())
    # Slots: the body's text (bytes that are not UTF-8 pass through untouched).
    body_text = body.decode("utf-8", "surrogateescape")
    json_body = feeders_module.is_json_body(
        next((v for k, v in headers if k.lower() == "content-type"), None), raw.get("body_file"))
    template = None
    if archived:
        pass
    elif feeders_module.SLOT.search(target_path) or feeders_module.SLOT.search(body_text) or any(
            feeders_module.SLOT.search(v) for _, v in headers):
        for key, value in headers:
            if key.lower() == "host" and feeders_module.SLOT.search(value):
                check.fail(f"{path}.headers.Host", "cannot hold {feeder.column} slots")
        where = check.where(path)
        template = feeders_module.Template(
            path=feeders_module.parts_of(target_path, f"{where}.path", by_name, secrets),
            headers=tuple((k, feeders_module.parts_of(v, f"{where}.headers.{k}", by_name,
                                                      secrets))
                          for k, v in headers if k.lower() != "host"),
            body=tuple(p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p
                       for p in feeders_module.parts_of(body_text, f"{where}.body", by_name,
                                                        secrets, json_body)),
            json_body=json_body)
    elif feeders_module.ENV.search(body_text):
        found = []
        body = feeders_module.environment(
            body_text, check.where(f"{path}.body"), found,
            feeders_module.JsonText() if json_body else None).encode("utf-8", "surrogateescape")
        secrets += found
    return Request(name=name, method=method.upper(), path=target_path, headers=headers,
                   body=body, weight=weight, expect_status=expect_status), template


def _grpc_request(check: _Checker, raw: dict[str, Any], i: int,
                  grpc: grpc_module.GrpcConfig | None, timeout_s: float,
                  feeders: tuple[feeders_module.Feeder, ...], profile_path: str,
                  secrets: list[str] | None,
                  ) -> tuple[Request, feeders_module.Template | None]:
    """A gRPC call (config/grpc.py): validated as the POST request it is, its body the
    encoded message; feeder slots in its metadata are templated as a request's headers are."""
    from loadforge.config import grpc as grpc_module

    entry, body, slot = grpc_module.grpc_request(check.label, raw, i, grpc, timeout_s, feeders,
                                                 [] if secrets is None else secrets)
    request, template = _request(check, entry, i, feeders, profile_path, secrets)
    if slot is not None:
        # the body: the message encoded per row of the slot's feeder column
        feeder, column, encoding = slot
        if template is None:
            template = feeders_module.Template(
                path=(request.path,), headers=tuple((k, (v,)) for k, v in request.headers
                                                    if k.lower() != "host"), body=())
        template = replace(template, body=(feeders_module.Slot(feeder, column),),
                           body_encoder=encoding)
    elif template is not None:
        template = replace(template, body=(body,))
    return replace(request, body=body), template


def _check_weights(check: _Checker, requests: tuple[Request, ...]) -> None:
    total = sum(r.weight for r in requests)
    if total > limits.MAX_TOTAL_WEIGHT:
        check.fail("requests", f"weights add up to {total:,}; they may add up to at most "
                               f"{limits.MAX_TOTAL_WEIGHT:,} (weights are ratios: divide "
                               "them by a common factor)")


def _headers(check: _Checker, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    table = check.table(value, path)
    engine = {h.lower(): h for h in ENGINE_HEADERS}
    seen: dict[str, str] = {}
    headers = []
    for key, header_value in table.items():
        where = f"{path}.{show_value(key)}"
        if not isinstance(key, str) or not _TOKEN.fullmatch(key):
            check.fail(path, f"has {show_value(key)}, which is not a valid header name "
                             "(an HTTP token: letters, digits, !#$%&'*+-.^_`|~)")
        if key.lower() in engine:
            check.fail(where, f"cannot be set: loadforge writes {engine[key.lower()]} itself "
                              "(it frames the message and manages connection reuse)")
        if key.lower() in seen:
            check.fail(where, f"repeats {show_value(seen[key.lower()])} (header names are "
                              "case-insensitive)")
        seen[key.lower()] = key
        text = check.string(header_value, where)
        if not PRINTABLE.fullmatch(text.replace("\t", " ")):
            # A credential stays out of the message too (it ends up in CI logs).
            shown = "a value" if is_secret_header(key) else show_value(text)
            check.fail(where, "must be printable ASCII without CR, LF or other control "
                              f"characters, got {shown}")
        if key.lower() == "host" and (not text or not PRINTABLE.fullmatch(text)
                                      or " " in text or "/" in text):
            check.fail(where, f"must be a host name, with an optional :port, got "
                              f"{show_value(text)}")
        headers.append((key, text))
    return tuple(headers)


def _sandbox(check: _Checker, value: Any, base_dir: str | None = None,
             archived: bool = False) -> SandboxConfig:
    """The [sandbox] table validated (config/sandbox.py) into its normalized form, which
    start_sandbox hands to the sandbox process as it is: validated once, here."""
    from loadforge.config.sandbox import validate_sandbox_config

    return validate_sandbox_config(dict(check.table(value, "sandbox")), where=check.where("sandbox"),
                                   base_dir=base_dir, read_files=not archived)
