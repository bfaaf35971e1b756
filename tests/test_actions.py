"""Timed actions: validation naming the field, and execution at the offset, each kind."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loadforge.config.observe import Action, HttpAction, validate_actions
from loadforge.config.profile import plan_from_dict
from loadforge.errors import ProfileError
from loadforge.observe import actions


def test_validate_normalizes_and_sorts_by_time() -> None:
    out = validate_actions([
        {"at": "20s", "run": "echo hi", "backend": "pod-1"},
        {"at": "5s", "sandbox": "kill", "backend": "backend-2"},
        {"at": "10s", "sandbox": "add", "weight": 2, "name": "grow"},
        {"at": "15s", "http": {"url": "http://127.0.0.1:1/x"}},
    ], run_duration_s=30)
    assert [a.at_s for a in out] == [5, 10, 15, 20]
    assert out[0] == Action(index=1, at_s=5.0, kind="sandbox", timeout_s=10.0, verb="kill",
                            weight=1, name="sandbox kill backend-2", backend="backend-2")
    assert out[1].name == "grow" and out[1].weight == 2
    assert out[2].http == HttpAction("POST", "http://127.0.0.1:1/x", "", {})
    assert out[3].name == "run echo hi" and out[3].backend == "pod-1"


@pytest.mark.parametrize(("action", "message"), [
    ({"at": "1s"}, "actions[0] needs exactly one of run"),
    ({"at": "1s", "run": "x", "sandbox": "kill"}, "has run and sandbox"),
    ({"run": "true"}, "actions[0] is missing 'at'"),
    ({"at": "-2s", "run": "true"}, "actions[0].at must not be negative"),
    ({"at": "40s", "run": "true"}, "actions[0].at (40s) must be before the end of the run"),
    ({"at": "1s", "sandbox": "reboot", "backend": "b"},
     "actions[0].sandbox must be one of kill, revive, add, got \"reboot\""),
    ({"at": "1s", "sandbox": "revive"}, 'sandbox = "revive" needs backend'),
    ({"at": "1s", "sandbox": "add", "backend": "b"}, "actions[0].backend does not apply"),
    ({"at": "1s", "sandbox": "add", "weight": 0}, "actions[0].weight must be an integer >= 1"),
    ({"at": "1s", "run": "true", "weight": 2}, "actions[0].weight only applies"),
    ({"at": "1s", "run": ""}, "actions[0].run must be a shell command"),
    ({"at": "1s", "http": {"url": "127.0.0.1"}}, "actions[0].http.url must be an http://"),
    ({"at": "1s", "http": {"url": "http://h/", "method": "BREW"}},
     "actions[0].http.method must be one of"),
    ({"at": "1s", "http": {"url": "http://h/", "verb": "GET"}},
     "actions[0].http has unknown key 'verb'"),
    ({"at": "1s", "kill": "backend-1"}, "actions[0] has unknown key 'kill'"),
    ({"at": "1s", "run": "true", "timeout": "0s"}, "actions[0].timeout"),
])
def test_bad_action_names_the_field(action: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError) as err:
        plan_from_dict({"stages": [{"rate": 1, "duration": "30s"}], "actions": [action]},
                       path="chaos.toml")
    assert str(err.value).startswith("profile chaos.toml: actions[0]")
    assert message in str(err.value)


class _Handler(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Handler.calls.append(("POST", self.path, body))
        self.send_response(204 if self.path == "/ok" else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_actions_run_at_their_offsets(tmp_path: Path, server: str) -> None:
    marker = tmp_path / "marker"
    spec = validate_actions([
        {"at": "0.3s", "run": f"echo done > {marker}"},
        {"at": "0.1s", "http": {"url": server + "/ok", "body": "drain"}},
        {"at": "0.2s", "http": {"url": server + "/nope"}},
        {"at": "0.2s", "run": "echo boom >&2; exit 4"},
        {"at": "0.1s", "sandbox": "kill", "backend": "backend-1"},    # no sandbox here
        {"at": "5s", "run": "true"},                                 # after the run: skipped
    ])
    runner = actions.ActionRunner(list(spec), sandbox=None)
    stop = threading.Event()
    runner.start(time.monotonic_ns(), stop)
    time.sleep(0.8)
    stop.set()
    rows = runner.stop(lambda ms: "only")
    by_name = {r["name"]: r for r in rows}
    assert len(rows) == 5 and f"run echo done > {marker}" in by_name
    assert marker.read_text() == "done\n"
    ok = by_name[f"POST {server}/ok"]
    assert ok["outcome"] == "ok" and ok["value"] == 204 and 80 <= ok["start_ms"] <= 300
    assert by_name[f"POST {server}/nope"]["outcome"] == "failed"
    failed = by_name["run echo boom >&2; exit 4"]
    assert failed["outcome"] == "failed" and failed["value"] == 4
    assert by_name["sandbox kill backend-1"]["outcome"] == "failed"
    assert all(r["scope"] == "action" and r["stage"] == "only" for r in rows)
    assert ("POST", "/ok", b"drain") in _Handler.calls
    messages = {r["name"]: r["message"] for r in runner.records}
    assert messages["run echo boom >&2; exit 4"] == "exit 4 boom"


def test_command_timeout_is_a_failed_action() -> None:
    spec = validate_actions([{"at": "0s", "run": "sleep 5", "timeout": "200ms"}])
    ok, message, value = actions.ActionRunner(list(spec)).execute(spec[0])
    assert not ok and message == "timed out after 0.2s" and value is None


def test_command_timeout_kills_a_whole_pipeline() -> None:
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        actions.run_shell("sleep 5 | cat; echo never", 0.3)
    assert time.monotonic() - started < 2.0
