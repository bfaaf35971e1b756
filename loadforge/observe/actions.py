"""Timed actions of a run (`[[actions]]`): faults and changes injected at an offset from the
run's start, so that their effect is measured in the same run.

    [[actions]]
    at = "20s"                       # from the run's start (time zero of the first stage)
    sandbox = "kill"                 # kill | revive | add  (target = "sandbox" only)
    backend = "backend-2"            # kill, revive: which one; add: optional weight = N

    [[actions]]
    at = "30s"
    run = "kubectl delete pod api-7d9c --wait=false"    # a shell command; exit 0 is success
    timeout = "10s"                  # run and http; default 10s

    [[actions]]
    at = "40s"
    http = { method = "POST", url = "http://127.0.0.1:9000/chaos", body = "", headers = {} }

Optional on every action: `name` (a label for the summary), and `backend` on run and http
actions to say which backend it takes out, so that its traffic can be followed (scaling.py).
Each action runs in its own thread at its time; its outcome (ok or failed, how long it took)
is stored as a row of scope `action`. A failed action is reported, it does not stop the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from loadforge.config.plan import Plan
from loadforge.config.redact import redact_url
from loadforge.errors import ProfileError
from loadforge.units import parse_duration, show_value

KINDS = ("run", "sandbox", "http")
SANDBOX_VERBS = ("kill", "revive", "add")
ACTION_KEYS = ("at", "name", "backend", "timeout", "weight") + KINDS
HTTP_KEYS = ("method", "url", "body", "headers")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_TIMEOUT_S = 10.0


def _fail(where: str, message: str) -> ProfileError:
    return ProfileError(f"{where} {message}")


def validate_actions(value: Any, where: str = "actions",
                     run_duration_s: float | None = None) -> list[dict[str, Any]]:
    """Validate `[[actions]]` into normalized entries, in time order:
    {"index", "at", "kind", "name", "backend", "timeout", and "run" | "verb" (+ "weight") |
    "http" {method, url, body, headers}}. Raises ProfileError naming the field."""
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
                                  f"of {', '.join(KINDS)} (allowed keys: {', '.join(ACTION_KEYS)})")
        if "at" not in raw:
            raise _fail(path, "is missing 'at' (when to act, from the run's start, e.g. \"20s\")")
        at = parse_duration(raw["at"], f"{path}.at", allow_zero=True)
        if run_duration_s is not None and at >= run_duration_s:
            raise _fail(f"{path}.at", f"({at:g}s) must be before the end of the run "
                                      f"({run_duration_s:g}s)")
        kinds = [k for k in KINDS if k in raw]
        if len(kinds) != 1:
            which = "has none" if not kinds else f"has {' and '.join(kinds)}"
            raise _fail(path, f"needs exactly one of run (a shell command), sandbox "
                              f"({' | '.join(SANDBOX_VERBS)}) or http = {{method, url}}; {which}")
        kind = kinds[0]
        entry: dict[str, Any] = {"index": i, "at": at, "kind": kind,
                                 "timeout": (parse_duration(raw["timeout"], f"{path}.timeout")
                                             if "timeout" in raw else DEFAULT_TIMEOUT_S)}
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
            label = f"{entry['http']['method']} {entry['http']['url']}"
        name = raw.get("name", label)
        if not isinstance(name, str) or not name.strip():
            raise _fail(f"{path}.name", f"must be a non-empty string, got {show_value(name)}")
        entry.update(name=name[:120], backend=backend)
        out.append(entry)
    return sorted(out, key=lambda a: (a["at"], a["index"]))


def _http(value: Any, where: str) -> dict[str, Any]:
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
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = show_value(redact_url(url) if isinstance(url, str) else url)
        raise _fail(f"{where}.url", f"must be an http:// or https:// URL, got {shown}")
    body = value.get("body", "")
    if not isinstance(body, str):
        raise _fail(f"{where}.body", f"must be a string, got {show_value(body)}")
    headers = value.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise _fail(f"{where}.headers", f"must be a table of strings, got {show_value(headers)}")
    return {"method": method.upper(), "url": url, "body": body, "headers": dict(headers)}


class ShellCommands:
    """The shell commands of one run (`command` observers, `run` actions), each in its own
    process group, so that the run's end can end them all, children included: a run must
    neither wait for their timeouts nor leave them behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[str]] = set()
        self.ended = False

    def add(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._running.add(proc)
            late = self.ended
        if late:                 # started as the run ended
            _kill_group(proc)

    def discard(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._running.discard(proc)

    def end(self) -> None:
        """Kill every command still running, with its process group; refuse new ones."""
        with self._lock:
            self.ended = True
            running = list(self._running)
        for proc in running:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_shell(command: str, timeout: float,
              commands: ShellCommands | None = None) -> subprocess.CompletedProcess[str]:
    """`sh -c command` with a timeout that kills the whole process group: subprocess.run
    kills only the shell, and a pipeline's other processes would hold its pipes open (and
    run()) past the timeout. TimeoutExpired once killed. With `commands`, the run's end
    kills it too (it then returns with the exit status -9)."""
    with subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True, start_new_session=True) as proc:
        if commands is not None:
            commands.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise
        finally:
            if commands is not None:
                commands.discard(proc)
        return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def normalized(plan: Plan) -> list[dict[str, Any]]:
    return validate_actions(list(plan.actions), "actions", plan.duration_s)


class ActionRunner:
    """Runs a plan's actions at their offsets, each in its own thread."""

    def __init__(self, actions: list[dict[str, Any]], sandbox: Any = None,
                 commands: ShellCommands | None = None):
        self.actions = actions
        self.sandbox = sandbox
        self.commands = commands or ShellCommands()
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.t0_ns = 0

    def start(self, t0_ns: int, stop: threading.Event) -> None:
        self.t0_ns = t0_ns
        for action in self.actions:
            thread = threading.Thread(target=self._run, args=(action, stop), daemon=True,
                                      name=f"action-{action['index']}")
            thread.start()
            self._threads.append(thread)

    def _offset_ms(self) -> int:
        return (time.monotonic_ns() - self.t0_ns) // 1_000_000

    def _run(self, action: dict[str, Any], stop: threading.Event) -> None:
        due_ns = self.t0_ns + int(action["at"] * 1e9)
        if stop.wait(max(0.0, (due_ns - time.monotonic_ns()) / 1e9)):
            return      # the run ended (or was stopped) first
        started = self._offset_ms()
        try:
            ok, message, value = self.execute(action)
        except Exception as exc:  # noqa: BLE001 -- any failure is the action's outcome
            ok, message, value = False, f"{type(exc).__name__}: {exc}", None
        record = {"index": action["index"], "name": action["name"], "kind": action["kind"],
                  "backend": action.get("backend"), "at_s": action["at"],
                  "started_ms": started, "ended_ms": self._offset_ms(), "ok": ok,
                  "message": message, "value": value}
        with self._lock:
            self.records.append(record)

    def execute(self, action: dict[str, Any]) -> tuple[bool, str, float | None]:
        """(ok, message, value: exit status or HTTP status)."""
        kind = action["kind"]
        if kind == "run":
            try:
                done = run_shell(action["run"], action["timeout"], self.commands)
            except subprocess.TimeoutExpired:
                return False, f"timed out after {action['timeout']:g}s", None
            if self.commands.ended and done.returncode < 0:
                return False, "killed at the end of the run", float(done.returncode)
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return done.returncode == 0, f"exit {done.returncode} {tail[0][:200]}".strip(), \
                float(done.returncode)
        if kind == "sandbox":
            if self.sandbox is None:
                return False, "no sandbox: the target is not \"sandbox\"", None
            verb, backend = action["verb"], action.get("backend")
            if verb == "kill":
                self.sandbox.kill_backend(backend)
            elif verb == "revive":
                self.sandbox.revive_backend(backend)
            else:
                added = self.sandbox.add_backend(action.get("weight", 1))
                return True, f"added {added}", None
            return True, f"{verb} {backend}", None
        import httpx

        spec = action["http"]
        host = urlsplit(spec["url"]).hostname or ""
        with httpx.Client(timeout=action["timeout"],
                          trust_env=host not in ("127.0.0.1", "localhost", "::1")) as client:
            resp = client.request(spec["method"], spec["url"], content=spec["body"].encode(),
                                  headers=spec["headers"])
        return resp.status_code < 400, f"{resp.status_code} {resp.reason_phrase}", \
            float(resp.status_code)

    def stop(self, stage_at: Callable[[float], str]) -> list[dict[str, Any]]:
        """Wait briefly for actions under way; the rows of those that ran."""
        for thread in self._threads:
            thread.join(timeout=1.0 if not thread.is_alive() else 15.0)
        with self._lock:
            records = sorted(self.records, key=lambda r: r["started_ms"])
        return [{"scope": "action", "stage": stage_at(r["started_ms"]), "name": r["name"],
                 "outcome": "ok" if r["ok"] else "failed", "backend": r["backend"] or "*",
                 "start_ms": r["started_ms"], "end_ms": r["ended_ms"], "count": 1,
                 "value": r["value"]} for r in records]
