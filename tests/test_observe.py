"""Metric observers: parsing, validation, one poll of each kind against servers on 127.0.0.1,
and that every failure is a missing value rather than an error."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from loadforge.analysis import backends
from loadforge.config.observe import Source, validate_observe
from loadforge.config.plan import Plan, Stage
from loadforge.errors import ProfileError
from loadforge.observe import pollers as observe

EXPOSITION = """\
# HELP up Whether the target is up.
# TYPE up gauge
up{job="api",instance="a"} 1
up{job="api",instance="b"} 0
up{job="db",instance="c"} 1
replicas 3
replicas_total 99
weird{job="x"} NaN
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        if self.path.startswith("/metrics"):
            body, kind = EXPOSITION.encode(), "text/plain"
        elif self.path.startswith("/api/v1/query"):
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {"pod": "a"}, "value": [1.0, "2"]},
                {"metric": {"pod": "b"}, "value": [1.0, "3"]}]}}).encode()
            kind = "application/json"
        elif self.path.startswith("/slow"):
            time.sleep(1.0)
            body, kind = b"replicas 1\n", "text/plain"
        else:
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_parse_exposition_sums_matching_series() -> None:
    assert observe.parse_exposition(EXPOSITION, "up") == 2.0
    assert observe.parse_exposition(EXPOSITION, "up", {"job": "api"}) == 1.0
    assert observe.parse_exposition(EXPOSITION, "up", {"instance": "b"}) == 0.0
    assert observe.parse_exposition(EXPOSITION, "replicas") == 3.0      # not replicas_total
    assert observe.parse_exposition(EXPOSITION, "up", {"job": "none"}) is None
    assert observe.parse_exposition(EXPOSITION, "weird") is None
    assert observe.parse_exposition(EXPOSITION, "absent") is None


def test_validate_normalizes() -> None:
    cfg = validate_observe({
        "backend_header": "X-Served-By", "window": "2s",
        "prometheus": {"url": "http://127.0.0.1:9090", "query": "sum(up)"},
        "metrics": [{"name": "ready", "url": "http://127.0.0.1:1/metrics", "metric": "up",
                     "labels": {"job": "api"}}],
        "command": [{"name": "pods", "run": "echo 3", "timeout": "1s"}],
    })
    assert cfg.window_s == 2.0 and cfg.backend_header == "X-Served-By"
    assert [s.name for s in cfg.sources] == ["prometheus", "ready", "pods"]
    assert cfg.sources[2].timeout_s == 1.0
    assert validate_observe({}).sources == ()


@pytest.mark.parametrize(("table", "message"), [
    ({"metrcs": []}, "observe has unknown key 'metrcs'"),
    ({"window": "1.5s"}, "observe.window must be a whole number"),
    ({"backend_header": "X Served"}, "observe.backend_header must be a header name"),
    ({"prometheus": {"url": "http://p:9090"}}, "observe.prometheus.query must be a non-empty"),
    ({"prometheus": "http://p:9090"}, "observe.prometheus must be a table or an array"),
    ({"metrics": [{"url": "ftp://x/metrics", "metric": "up"}]},
     "observe.metrics[0].url must be an http:// or https:// URL"),
    ({"metrics": [{"url": "http://x/metrics", "metric": "bad metric"}]},
     "observe.metrics[0].metric must be a Prometheus metric name"),
    ({"command": [{"run": "echo 1"}]}, "observe.command[0].name must be a non-empty string"),
    ({"command": [{"name": "n", "run": "echo 1", "timeout": "-1s"}]},
     "observe.command[0].timeout must not be negative"),
    ({"command": [{"name": "n", "run": "true"}, {"name": "n", "run": "true"}]},
     "observe.command[1].name \"n\" is already the name of observe.command[0]"),
])
def test_bad_observe_names_the_field(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError) as err:
        validate_observe(table, "observe")
    assert message in str(err.value)


def test_poll_each_kind(server: str) -> None:
    prom = Source("prometheus", "p", 1.0, url=server, query="up")
    assert observe.poll_once(prom) == 5.0
    metrics = Source("metrics", "m", 1.0, url=server + "/metrics", metric="up",
                     labels={"job": "db"})
    assert observe.poll_once(metrics) == 1.0
    command = Source("command", "c", 2.0, run="printf 'starting\\n 4 pods\\n'")
    assert observe.poll_once(command) == 4.0


@pytest.mark.parametrize("source", [
    Source("metrics", "m", 1.0, url="/error", metric="up"),
    Source("metrics", "m", 0.2, url="/slow", metric="replicas"),
    Source("metrics", "m", 0.5, url="http://127.0.0.1:9/metrics", metric="up"),
    Source("prometheus", "p", 1.0, url="/error", query="up"),
    Source("command", "c", 1.0, run="exit 3"),
    Source("command", "c", 1.0, run="echo not-a-number"),
    Source("command", "c", 0.2, run="sleep 5"),
])
def test_failures_are_missing_values(server: str, source: Source) -> None:
    if source.kind != "command" and source.url.startswith("/"):
        source = replace(source, url=server + source.url)
    started = time.monotonic()
    assert observe.poll_once(source) is None
    assert time.monotonic() - started < 3.0


def test_watchers_poll_every_interval_and_keep_going(server: str) -> None:
    plan = Plan(name="p", target="http://127.0.0.1:1", stages=(Stage("a", 1.0, 1, 1),
                                                              Stage("b", 1.0, 1, 1)),
                requests=(), observe=validate_observe({"metrics": [
                    {"name": "up", "url": server + "/metrics", "metric": "up"},
                    {"name": "broken", "url": server + "/error", "metric": "up"}]}))
    watchers = observe.Watchers(plan, 0.2)
    watchers.start(time.monotonic_ns())
    time.sleep(1.0)
    rows = watchers.stop()
    up = [r for r in rows if r["name"] == "up"]
    broken = [r for r in rows if r["name"] == "broken"]
    assert 3 <= len(up) <= 6 and all(r["value"] == 2.0 and r["scope"] == "metric" for r in up)
    assert len(broken) >= 3 and all(r["value"] is None and r["outcome"] == "missing"
                                    for r in broken)
    assert [r["start_ms"] for r in up] == sorted(r["start_ms"] for r in up)
    assert {r["stage"] for r in up} == {"a"}


def test_jain_index() -> None:
    assert backends.jain_index([0.25] * 4) == pytest.approx(1.0)
    assert backends.jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert backends.jain_index([]) is None


def test_backend_header_defaults() -> None:
    plan = Plan(name="p", target="sandbox", stages=(Stage("a", 1.0, 1, 1),), requests=())
    assert observe.backend_header(plan, None, None) is None
    assert observe.backend_header(plan, None, object()) == "X-Served-By"
    assert observe.backend_header(plan, "X-Pod", object()) == "X-Pod"
