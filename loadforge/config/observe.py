"""`[observe]` and `[[actions]]` validated into the Plan's typed form (built once, here).

observe/pollers.py polls the `Observe` sources during a run and observe/actions.py runs the
`Action`s; analysis/scaling.py reads the window and the replicas metric. The tables
themselves are described there (pollers.py and actions.py's docstrings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

# Observe (what [observe] validates into) lives with the plan, which holds it.
from loadforge.config.plan import DEFAULT_WINDOW_S, Observe
from loadforge.config.redact import redact_url
from loadforge.errors import ProfileError
from loadforge.units import parse_duration, show_value

OBSERVE_KEYS = ("backend_header", "window", "replicas", "prometheus", "metrics", "command")
PROMETHEUS_KEYS = ("name", "url", "query", "timeout")
METRIC_KEYS = ("name", "url", "metric", "labels", "timeout")
COMMAND_KEYS = ("name", "run", "timeout")
DEFAULT_HTTP_TIMEOUT_S = 0.8
DEFAULT_COMMAND_TIMEOUT_S = 2.0
ACTION_KINDS = ("run", "sandbox", "http")
SANDBOX_VERBS = ("kill", "revive", "add")
ACTION_KEYS = ("at", "name", "backend", "timeout", "weight") + ACTION_KINDS
HTTP_KEYS = ("method", "url", "body", "headers")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_ACTION_TIMEOUT_S = 10.0

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class Source:
    """One metric polled each interval: a Prometheus query, a metric of an exposition
    endpoint, or the number a shell command prints."""

    kind: str                     # "prometheus" | "metrics" | "command"
    name: str                     # what its samples are stored under
    timeout_s: float
    where: str = ""               # the profile field, for messages
    url: str = ""                 # prometheus, metrics
    query: str = ""               # prometheus
    metric: str = ""              # metrics
    labels: dict[str, str] = field(default_factory=dict)     # metrics
    run: str = ""                 # command


@dataclass(frozen=True)
class HttpAction:
    method: str
    url: str
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """One [[actions]] entry: at `at_s` from the run's start, a shell command (`run`), a
    sandbox verb (`verb`, `weight` for add) or an HTTP request (`http`)."""

    index: int                    # its place in the profile
    at_s: float
    kind: str                     # "run" | "sandbox" | "http"
    name: str
    timeout_s: float = 10.0
    backend: str | None = None    # the backend it takes out (or revives), if it says
    run: str = ""
    verb: str = ""
    weight: int = 1
    http: HttpAction | None = None


def _fail(where: str, message: str) -> ProfileError:
    return ProfileError(f"{where} {message}")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"must be a table, got {show_value(value)}")
    return value


def _keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise _fail(where, f"has unknown key '{key}'; allowed: {', '.join(allowed)}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"must be a non-empty string, got {show_value(value)}")
    return value


def _split(url: str) -> SplitResult | None:
    """urlsplit(url), None for what it refuses (an unbalanced "[" of an IPv6 literal)."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _url(value: Any, where: str) -> str:
    url = _string(value, where)
    parts = _split(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(where, f"must be an http:// or https:// URL, got "
                           f"{show_value(redact_url(url))}")
    return url


def _entries(value: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """A table or an array of tables, each with its path."""
    if isinstance(value, dict):
        return [(where, value)]
    if isinstance(value, list):
        return [(f"{where}[{i}]", _table(item, f"{where}[{i}]")) for i, item in enumerate(value)]
    raise _fail(where, f"must be a table or an array of tables, got {show_value(value)}")


def validate_observe(table: Any, where: str = "observe") -> Observe:
    """Validate a raw `[observe]` table into an Observe (all keys, seconds).

    Raises ProfileError naming the field, e.g. `observe.metrics[0].url must be an http://
    or https:// URL, got "localhost"`.
    """
    top = _table(table, where)
    _keys(top, OBSERVE_KEYS, where)
    header = top.get("backend_header")
    if header is not None and (not isinstance(header, str)
                               or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", header)):
        raise _fail(f"{where}.backend_header", f"must be a header name such as \"X-Served-By\", "
                                               f"got {show_value(header)}")
    window = (parse_duration(top["window"], f"{where}.window") if "window" in top
              else DEFAULT_WINDOW_S)
    if abs(window - round(window)) > 1e-9:
        raise _fail(f"{where}.window", f"must be a whole number of 1s intervals, got "
                                       f"{show_value(top['window'])}")
    sources: list[Source] = []
    for path, entry in _entries(top.get("prometheus", []), f"{where}.prometheus"):
        _keys(entry, PROMETHEUS_KEYS, path)
        sources.append(Source("prometheus", entry.get("name", "prometheus"),
                              _timeout(entry, path, DEFAULT_HTTP_TIMEOUT_S), path,
                              url=_url(entry.get("url"), f"{path}.url"),
                              query=_string(entry.get("query"), f"{path}.query")))
    for path, entry in _entries(top.get("metrics", []), f"{where}.metrics"):
        _keys(entry, METRIC_KEYS, path)
        metric = _string(entry.get("metric"), f"{path}.metric")
        if not _METRIC_NAME.fullmatch(metric):
            raise _fail(f"{path}.metric", f"must be a Prometheus metric name, got "
                                          f"{show_value(metric)}")
        labels = _table(entry.get("labels", {}), f"{path}.labels")
        for key, value in labels.items():
            _string(value, f"{path}.labels.{key}")
        sources.append(Source("metrics", entry.get("name", metric),
                              _timeout(entry, path, DEFAULT_HTTP_TIMEOUT_S), path,
                              url=_url(entry.get("url"), f"{path}.url"), metric=metric,
                              labels=dict(labels)))
    for path, entry in _entries(top.get("command", []), f"{where}.command"):
        _keys(entry, COMMAND_KEYS, path)
        sources.append(Source("command", _string(entry.get("name"), f"{path}.name"),
                              _timeout(entry, path, DEFAULT_COMMAND_TIMEOUT_S), path,
                              run=_string(entry.get("run"), f"{path}.run")))
    seen: dict[str, str] = {}
    for source in sources:
        name = source.name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise _fail(f"{source.where}.name", "must be a name of letters, digits, '_', "
                                                f"'.', '-', got {show_value(name)}")
        if name in seen:
            raise _fail(f"{source.where}.name", f"{show_value(name)} is already the name of "
                                                f"{seen[name]}; metric names must be unique")
        seen[name] = source.where
    replicas = top.get("replicas")
    if replicas is not None and not isinstance(replicas, str):
        raise _fail(f"{where}.replicas", f"must be the name of an observed metric, got "
                                         f"{show_value(replicas)}")
    return Observe(header, window, replicas, tuple(sources))


def _timeout(entry: dict[str, Any], path: str, default: float) -> float:
    if "timeout" not in entry:
        return default
    return parse_duration(entry["timeout"], f"{path}.timeout")


def validate_actions(value: Any, where: str = "actions",
                     run_duration_s: float | None = None) -> tuple[Action, ...]:
    """Validate `[[actions]]` into Actions, in time order. Raises ProfileError naming the
    field."""
    if not isinstance(value, list):
        raise _fail(where, f"must be an array of tables ([[actions]]), got {show_value(value)}")
    out = []
    for i, raw in enumerate(value):
        path = f"{where}[{i}]"
        if not isinstance(raw, dict):
            raise _fail(path, f"must be a table, got {show_value(raw)}")
        for key in raw:
            if key not in ACTION_KEYS:
                raise _fail(path, f"has unknown key '{key}'; an action is `at` and one "
                                  f"of {', '.join(ACTION_KINDS)} (allowed keys: {', '.join(ACTION_KEYS)})")
        if "at" not in raw:
            raise _fail(path, "is missing 'at' (when to act, from the run's start, e.g. \"20s\")")
        at = parse_duration(raw["at"], f"{path}.at", allow_zero=True)
        if run_duration_s is not None and at >= run_duration_s:
            raise _fail(f"{path}.at", f"({at:g}s) must be before the end of the run "
                                      f"({run_duration_s:g}s)")
        kinds = [k for k in ACTION_KINDS if k in raw]
        if len(kinds) != 1:
            which = "has none" if not kinds else f"has {' and '.join(kinds)}"
            raise _fail(path, f"needs exactly one of run (a shell command), sandbox "
                              f"({' | '.join(SANDBOX_VERBS)}) or http = {{method, url}}; {which}")
        kind = kinds[0]
        entry: dict[str, Any] = {"index": i, "at_s": at, "kind": kind,
                                 "timeout_s": (parse_duration(raw["timeout"], f"{path}.timeout")
                                               if "timeout" in raw else DEFAULT_ACTION_TIMEOUT_S)}
        backend = raw.get("backend")
        if backend is not None and (not isinstance(backend, str) or not backend.strip()):
            raise _fail(f"{path}.backend", f"must be a backend name, got {show_value(backend)}")
        if "weight" in raw and not (kind == "sandbox" and raw["sandbox"] == "add"):
            raise _fail(f"{path}.weight", "only applies to sandbox = \"add\"")
        if kind == "run":
            command = raw["run"]
            if not isinstance(command, str) or not command.strip():
                raise _fail(f"{path}.run", f"must be a shell command, got {show_value(command)}")
            entry["run"] = command
            label = f"run {command}"
        elif kind == "sandbox":
            verb = raw["sandbox"]
            if verb not in SANDBOX_VERBS or not isinstance(verb, str):
                raise _fail(f"{path}.sandbox", f"must be one of {', '.join(SANDBOX_VERBS)}, "
                                               f"got {show_value(verb)}")
            if verb in ("kill", "revive") and backend is None:
                raise _fail(path, f"sandbox = \"{verb}\" needs backend = \"backend-N\"")
            if verb == "add" and backend is not None:
                raise _fail(f"{path}.backend", "does not apply to sandbox = \"add\" (the "
                                               "sandbox names the new backend)")
            weight = raw.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise _fail(f"{path}.weight", f"must be an integer >= 1, got {show_value(weight)}")
            entry.update(verb=verb, weight=weight)
            label = f"sandbox {verb}" + (f" {backend}" if backend else "")
        else:
            entry["http"] = _http(raw["http"], f"{path}.http")
            label = f"{entry['http'].method} {entry['http'].url}"
        name = raw.get("name", label)
        if not isinstance(name, str) or not name.strip():
            raise _fail(f"{path}.name", f"must be a non-empty string, got {show_value(name)}")
        entry.update(name=name[:120], backend=backend)
        out.append(Action(**entry))
    return tuple(sorted(out, key=lambda a: (a.at_s, a.index)))


def _http(value: Any, where: str) -> HttpAction:
    if not isinstance(value, dict):
        raise _fail(where, f"must be a table {{method, url}}, got {show_value(value)}")
    for key in value:
        if key not in HTTP_KEYS:
            raise _fail(where, f"has unknown key '{key}'; allowed: {', '.join(HTTP_KEYS)}")
    method = value.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise _fail(f"{where}.method", f"must be one of {', '.join(HTTP_METHODS)}, "
                                       f"got {show_value(method)}")
    url = value.get("url")
    parts = _split(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = show_value(redact_url(url) if isinstance(url, str) else url)
        raise _fail(f"{where}.url", f"must be an http:// or https:// URL, got {shown}")
    body = value.get("body", "")
    if not isinstance(body, str):
        raise _fail(f"{where}.body", f"must be a string, got {show_value(body)}")
    headers = value.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise _fail(f"{where}.headers", f"must be a table of strings, got {show_value(headers)}")
    return HttpAction(method.upper(), str(url), body, dict(headers))
