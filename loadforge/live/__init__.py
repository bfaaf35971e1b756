"""Live outputs of a run: `--metrics` (Prometheus text at /metrics), `--dashboard` (a page at
/ fed by server-sent events) and `--stream` (a JSON line per interval).

The runner hands them each merged interval (runner.IntervalFeed, as the collect loop yields
it): once per merged interval, in the coordinator's thread, `LiveOutputs.interval` folds the interval's rows into
numbers (state.LiveRun) and hands them on; scrapes and pages are answered from those numbers
by threads of their own. Nothing here runs per request or reaches the workers, and nothing
here may stop a run: a stream that cannot be written is switched off with one warning.

Order of a run: `LiveOutputs(...)` (binds the ports and opens the stream: a taken port or an
unwritable path is exit 2 before any load), `start` per run, `interval` per merged interval,
`finish` with the summary, then `linger` (`--linger D`) and `close`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import IO, Any

from loadforge.errors import InputError, Interrupted
from loadforge.live import metrics
from loadforge.live.server import HEARTBEAT_S, LiveServer, Routes, parse_address
from loadforge.live.state import LiveRun

__all__ = ["LiveOutputs", "parse_address"]


def _json(obj: Any) -> str:
    # JSON has no NaN or infinity: a ratio over nothing is null.
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False, default=str)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class LiveOutputs:
    def __init__(self, metrics_at: str | None = None, dashboard_at: str | None = None,
                 stream_to: str | None = None):
        self.lock = threading.Condition()
        self.run: LiveRun | None = None
        self.events: list[str] = []        # every event of this process's runs, as JSON
        self.run_start = 0                 # where the current run's events begin
        self.closed = False
        self.servers: list[LiveServer] = []
        self.metrics_url: str | None = None
        self.dashboard_url: str | None = None
        self.stream: IO[str] | None = None
        self.stream_name = stream_to
        try:
            self._listen(metrics_at, dashboard_at)
            if stream_to is not None:
                self._open_stream(stream_to)
        except BaseException:
            self.close()
            raise

    # -- set-up ------------------------------------------------------------------------------

    def _listen(self, metrics_at: str | None, dashboard_at: str | None) -> None:
        wanted: list[tuple[str, str]] = []
        if metrics_at is not None:
            wanted.append(("--metrics", metrics_at))
        if dashboard_at is not None:
            wanted.append(("--dashboard", dashboard_at))
        by_address: dict[tuple[str, int], LiveServer] = {}
        for option, value in wanted:
            host, port = parse_address(value, option)
            server = by_address.get((host, port)) if port else None
            if server is None:
                server = LiveServer(host, port, Routes(), option)
                self.servers.append(server)
                by_address[(host, port)] = server
            if option == "--metrics":
                server.routes.get["/metrics"] = self._serve_metrics
                self.metrics_url = server.url("/metrics")
            else:
                server.routes.get["/"] = self._serve_page
                server.routes.get["/events"] = self._serve_events
                server.routes.get["/state"] = self._serve_state
                self.dashboard_url = server.url("/")

    def _open_stream(self, path: str) -> None:
        if path == "-":
            self.stream = sys.stdout
            return
        try:
            # Line by line as the run goes: no temporary file renamed at the end. A FIFO
            # (`>(jq ...)`) is written into; a symlink is followed.
            self.stream = open(path, "w", encoding="utf-8")   # noqa: SIM115 (closed in close)
        except OSError as exc:
            raise InputError(f"--stream {path}: cannot write ({exc.strerror or exc})") from None

    def describe(self) -> list[str]:
        """Where the outputs are, one line each, for the console."""
        out = []
        if self.metrics_url:
            out.append(f"metrics at {self.metrics_url}")
        if self.dashboard_url:
            out.append(f"dashboard at {self.dashboard_url}")
        return out

    # -- the run -----------------------------------------------------------------------------

    def start(self, plan: Any, run_id: str, target: str, interval_s: float) -> None:
        run = LiveRun(plan, run_id, target, interval_s, time.time())
        with self.lock:
            self.run = run
            self.run_start = len(self.events)
            self._publish(run.header)

    def interval(self, merged: Any) -> None:
        """One merged interval (run/merge.MergedInterval), from the runner's feed."""
        with self.lock:
            if self.run is None:
                return
            try:
                point = self.run.add(merged)
            except Exception as exc:    # a live view must never end the run it shows
                print(f"warning: live outputs stopped: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                self.run = None
                return
            self._publish(point)

    def finish(self, summary: dict[str, Any]) -> None:
        with self.lock:
            if self.run is None:
                return
            try:
                self._publish(self.run.finish(summary))
            except Exception as exc:    # the run is over and saved: say so, end normally
                print(f"warning: live outputs could not show the summary: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)

    def _publish(self, event: dict[str, Any]) -> None:
        # Under self.lock. The stream is written in the coordinator's thread, as the interval
        # is merged: a reader that stalls a pipe delays the merge, never the workers.
        text = _json(event)
        self.events.append(text)
        self.lock.notify_all()
        if self.stream is not None:
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self.stream = None
                print(f"warning: --stream {self.stream_name}: cannot write ({exc}); "
                      "the stream stops here, the run goes on", file=sys.stderr)

    # -- after the run -----------------------------------------------------------------------

    def linger(self, seconds: float) -> None:
        """Keep serving for `seconds` (`--linger`), or until Ctrl-C or SIGTERM."""
        if not self.servers or seconds <= 0:
            return
        try:
            threading.Event().wait(seconds)
        except (KeyboardInterrupt, Interrupted):
            pass

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.lock.notify_all()
        for server in self.servers:
            server.close()
        if self.stream is not None and self.stream is not sys.stdout:
            try:
                self.stream.close()
            except OSError:
                pass
        self.stream = None

    # -- routes (server threads) -------------------------------------------------------------

    def _serve_metrics(self, handler: BaseHTTPRequestHandler) -> None:
        kind = metrics.content_type(handler.headers.get("Accept"))
        with self.lock:
            text = metrics.render(self.run, kind == metrics.OPENMETRICS)
        handler.reply(200, kind, text.encode("utf-8"))  # type: ignore[attr-defined]

    def _serve_state(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            body = "[" + ",".join(self.events[self.run_start:]) + "]"
        handler.reply(200, "application/json", body.encode("utf-8"))  # type: ignore[attr-defined]

    def _serve_page(self, handler: BaseHTTPRequestHandler) -> None:
        handler.reply(200, "text/html; charset=utf-8",  # type: ignore[attr-defined]
                      dashboard_page().encode("utf-8"))

    def _serve_events(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        sent = 0
        while True:
            with self.lock:
                if sent >= len(self.events) and not self.closed:
                    self.lock.wait(HEARTBEAT_S)
                new, sent, closed = self.events[sent:], len(self.events), self.closed
            # Written outside the lock: a slow client holds up only its own thread.
            out = "".join(f"data: {event}\n\n" for event in new) if new else ": idle\n\n"
            if closed:
                out += "data: {\"type\":\"closed\"}\n\n"
            handler.wfile.write(out.encode("utf-8"))
            handler.wfile.flush()
            if closed:
                return


_PAGE: str | None = None


def _asset(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text("utf-8")


def dashboard_page() -> str:
    """The page: the report's stylesheet and the dashboard's own script, inlined (it must
    work offline: nothing is fetched but its own /events)."""
    global _PAGE
    if _PAGE is None:
        _PAGE = (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>loadforge live</title>\n"
            f"<style>\n{_asset('loadforge.present', 'report_assets/report.css')}"
            f"{_asset('loadforge.live', 'assets/dashboard.css')}</style>\n</head>\n"
            "<body data-state=\"waiting\" data-intervals=\"0\">\n"
            f"{_asset('loadforge.live', 'assets/dashboard.html')}"
            f"<script>\n{_asset('loadforge.live', 'assets/dashboard.js')}</script>\n"
            "</body>\n</html>\n")
    return _PAGE
