"""The sandbox's admin port: Prometheus metrics, the cluster's state, and faults on demand."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from loadforge.sandbox.http import LB_HEALTHY, HTTPConnection, encode_response

if TYPE_CHECKING:
    from loadforge.sandbox.cluster import Cluster


def metrics(cluster: Cluster) -> str:
    """The Prometheus text exposition of the cluster's gauges and counters."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {_number(value)}")

    per = [(f'{{backend="{b.name}"}}', b) for b in cluster.backends]
    family("sandbox_backends", "gauge",
           "Backends in the cluster, starting or ready (draining ones excluded).",
           [("", cluster.active_count)])
    family("sandbox_backends_ready", "gauge", "Backends in the load balancer's rotation.",
           [("", len(cluster.rotation))])
    family("sandbox_utilization", "gauge",
           "Busy slots / concurrency, averaged over the last evaluation window and the "
           "backends in rotation.", [("", cluster.utilization)])
    family("sandbox_inflight_mean", "gauge",
           "Requests in service or queued per backend in rotation, averaged over the last "
           "evaluation window.", [("", cluster.inflight_mean)])
    family("sandbox_requests_total", "counter",
           "Requests the load balancer routed to a backend.", [(lb, b.requests) for lb, b in per])
    family("sandbox_inflight", "gauge", "Requests in service or queued at a backend now.",
           [(lb, b.inflight) for lb, b in per])
    family("sandbox_rejected_total", "counter",
           "Requests answered 503 because the backend's queue was full.",
           [(lb, b.rejected) for lb, b in per])
    family("sandbox_failed_total", "counter",
           "Requests answered 502 (backend dead) or 500 (backend failing).",
           [(lb, b.failed) for lb, b in per])
    family("sandbox_backend_up", "gauge", "1 if the backend is in rotation, else 0.",
           [(lb, 1 if b in cluster.rotation else 0) for lb, b in per])
    family("sandbox_scale_events_total", "counter", "Autoscaler actions.",
           [(f'{{direction="{d}"}}', n) for d, n in cluster.scale_events.items()])
    return "\n".join(lines) + "\n"


def handle(
    cluster: Cluster, conn: HTTPConnection, method: bytes, target: bytes, body: bytes,
    close: bool,
) -> None:
    """One request to the admin port."""
    path, _, query = target.decode("latin-1").partition("?")
    parts = [p for p in path.split("/") if p]
    verb = method.decode("latin-1")
    status = "404 Not Found"
    payload: dict[str, Any] = {"error": f"no route {path}"}
    if verb == "GET" and path == "/metrics":
        text = metrics(cluster).encode()
        conn.respond(encode_response("200 OK", text, "text/plain; version=0.0.4"), close)
        return
    if verb == "GET" and path in ("/healthz", "/"):
        conn.respond(LB_HEALTHY, close)
        return
    if parts[:2] == ["admin", "state"] and len(parts) == 2:
        status, payload = ("200 OK", cluster.state()) if verb == "GET" else _not_allowed(verb)
    elif parts[:2] == ["admin", "backends"] and len(parts) == 2:
        if verb == "GET":
            status, payload = "200 OK", {"backends": [cluster.describe(b) for b in cluster.backends]}
        elif verb == "POST":
            weight = _weight(query, body)
            if weight is None:
                status, payload = "400 Bad Request", {"error": "weight must be 1..1000"}
            else:
                added = cluster.add_backend(weight)
                cluster.event(f"{added.name} added through admin")
                status, payload = "201 Created", cluster.describe(added)
        else:
            status, payload = _not_allowed(verb)
    elif parts[:2] == ["admin", "backends"] and len(parts) == 4:
        backend = cluster.find(parts[2])
        action = parts[3]
        if backend is None:
            payload = {"error": f"no backend {parts[2]}"}
        elif verb != "POST":
            status, payload = _not_allowed(verb)
        elif action in ("kill", "revive", "fail", "remove"):
            if action == "kill":
                backend.kill()
            elif action == "fail":
                backend.failing = True
            elif action == "revive":
                backend.dead = backend.failing = False
            else:
                cluster.drain(backend)
            cluster.event(f"{backend.name}: {action} through admin")
            status, payload = "200 OK", cluster.describe(backend)
        else:
            payload = {"error": f"unknown action {action} (kill, revive, fail, remove)"}
    data = (json.dumps(payload) + "\n").encode()
    conn.respond(encode_response(status, data, "application/json"), close)


def _not_allowed(verb: str) -> tuple[str, dict[str, Any]]:
    return "405 Method Not Allowed", {"error": f"method {verb} not allowed"}


def _weight(query: str, body: bytes) -> int | None:
    weight: object = 1
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key == "weight":
            weight = int(value) if value.isdigit() else None
    if body.strip():
        try:
            weight = json.loads(body).get("weight", weight)
        except (ValueError, AttributeError):
            return None
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
        return None
    return weight


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(round(value, 6))
