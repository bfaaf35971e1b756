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

from loadforge.config.observe import Action


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


class ActionRunner:
    """Runs a plan's actions at their offsets, each in its own thread."""

    def __init__(self, actions: list[Action], sandbox: Any = None,
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
                                      name=f"action-{action.index}")
            thread.start()
            self._threads.append(thread)

    def _offset_ms(self) -> int:
        return (time.monotonic_ns() - self.t0_ns) // 1_000_000

    def _run(self, action: Action, stop: threading.Event) -> None:
        due_ns = self.t0_ns + int(action.at_s * 1e9)
        if stop.wait(max(0.0, (due_ns - time.monotonic_ns()) / 1e9)):
            return      # the run ended (or was stopped) first
        started = self._offset_ms()
        try:
            ok, message, value = self.execute(action)
        except Exception as exc:  # noqa: BLE001 -- any failure is the action's outcome
            ok, message, value = False, f"{type(exc).__name__}: {exc}", None
        record = {"index": action.index, "name": action.name, "kind": action.kind,
                  "backend": action.backend, "at_s": action.at_s,
                  "started_ms": started, "ended_ms": self._offset_ms(), "ok": ok,
                  "message": message, "value": value}
        with self._lock:
            self.records.append(record)

    def execute(self, action: Action) -> tuple[bool, str, float | None]:
        """(ok, message, value: exit status or HTTP status)."""
        kind = action.kind
        if kind == "run":
            try:
                done = run_shell(action.run, action.timeout_s, self.commands)
            except subprocess.TimeoutExpired:
                return False, f"timed out after {action.timeout_s:g}s", None
            if self.commands.ended and done.returncode < 0:
                return False, "killed at the end of the run", float(done.returncode)
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return done.returncode == 0, f"exit {done.returncode} {tail[0][:200]}".strip(), \
                float(done.returncode)
        if kind == "sandbox":
            if self.sandbox is None:
                return False, "no sandbox: the target is not \"sandbox\"", None
            verb, backend = action.verb, action.backend
            if verb == "kill":
                self.sandbox.kill_backend(backend)
            elif verb == "revive":
                self.sandbox.revive_backend(backend)
            else:
                added = self.sandbox.add_backend(action.weight)
                return True, f"added {added}", None
            return True, f"{verb} {backend}", None
        import httpx

        spec = action.http
        assert spec is not None
        host = urlsplit(spec.url).hostname or ""
        with httpx.Client(timeout=action.timeout_s,
                          trust_env=host not in ("127.0.0.1", "localhost", "::1")) as client:
            resp = client.request(spec.method, spec.url, content=spec.body.encode(),
                                  headers=spec.headers)
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
