"""Running the sandbox: as a managed subprocess (`start_sandbox`) or in the foreground.

The subprocess is `python -m loadforge.sandbox --managed ...`. It prints one JSON line with
its URLs once both ports are bound, and exits when its stdin reaches end of file, so that it
never outlives the process that started it, even one killed without a chance to clean up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from loadforge.config.sandbox import SandboxConfig, validate_sandbox_config
from loadforge.errors import InputError, LoadforgeError, ProfileError, RunError
from loadforge.sandbox.cluster import new_event_loop, serve

HOST = "127.0.0.1"
DEFAULT_PORT = 8080
READY_TIMEOUT_S = 5.0
STOP_GRACE_S = 2.0


class Sandbox:
    """A running sandbox subprocess. Stop it with `stop()` or use it as a context manager."""

    def __init__(self, process: subprocess.Popen[bytes], ready: dict[str, Any],
                 stderr: IO[bytes]) -> None:
        self.process = process
        self.port: int = ready["port"]
        self.admin_port: int = ready["admin_port"]
        self.url: str = ready["url"]
        self.admin_url: str = ready["admin_url"]
        self.metrics_url: str = ready["metrics_url"]
        self._stderr = stderr

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """Terminate the subprocess, kill it after `grace` seconds; return its exit status."""
        process = self.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()
        return process.returncode

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Sandbox {self.url} admin {self.admin_url} pid {self.process.pid}>"

    # Admin calls, for scaling scenarios driven from Python (profile actions, tests).

    def admin(self, method: str, path: str, timeout: float = 5.0) -> Any:
        # http.client rather than httpx or urllib: no proxy settings from the environment can
        # divert a loopback call.
        conn = http.client.HTTPConnection(HOST, self.admin_port, timeout=timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            raise RunError(f"sandbox admin {method} {path}: {response.status} {body.decode()!r}")
        return json.loads(body)

    def state(self) -> dict[str, Any]:
        return dict(self.admin("GET", "/admin/state"))

    def kill_backend(self, name: str) -> None:
        self.admin("POST", f"/admin/backends/{name}/kill")

    def revive_backend(self, name: str) -> None:
        self.admin("POST", f"/admin/backends/{name}/revive")

    def add_backend(self, weight: int = 1) -> str:
        return str(self.admin("POST", f"/admin/backends?weight={weight}")["name"])


def start_sandbox(
    cfg: dict[str, Any] | SandboxConfig | None = None,
    port: int = 0,
    admin_port: int = 0,
    timeout: float = READY_TIMEOUT_S,
) -> Sandbox:
    """Start the sandbox in a subprocess and wait until it listens (at most `timeout` s).

    `cfg` is the raw `[sandbox]` table or its normalized form; it is validated here
    (ProfileError), so that a bad profile fails before any process starts. Port 0 lets the
    system choose. RunError if the subprocess exits or is not ready in time, with the tail of
    its stderr.
    """
    normalized = validate_sandbox_config(cfg or {})
    command = [
        sys.executable, "-m", "loadforge.sandbox", "--managed", "--port", str(port),
        "--admin-port", str(admin_port), "--config-json", normalized.to_json(),
    ]
    env = dict(os.environ)
    # The child must import this same loadforge, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    stderr = tempfile.TemporaryFile()
    # Its own session: a terminal's Ctrl-C reaches the whole foreground process group, and
    # the target must outlive the run's in-flight requests; the run stops it (stop()), or
    # its stdin closing does if the run dies.
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env,
        start_new_session=True,
    )
    try:
        ready = _read_ready(process, timeout)
    except BaseException as exc:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        stderr.seek(0)
        tail = stderr.read()[-2000:].decode(errors="replace").strip()
        stderr.close()
        if isinstance(exc, RunError) and tail:
            raise RunError(f"{exc}: {tail}") from None
        raise
    return Sandbox(process, ready, stderr)


def _read_ready(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunError(f"sandbox did not become ready within {timeout:g}s")
            if not selector.select(left):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RunError(f"sandbox exited with status {process.wait()} before it was ready")
            data += chunk
    line = data.split(b"\n", 1)[0]
    try:
        ready = json.loads(line)
    except ValueError:
        raise RunError(f"sandbox printed an unexpected line: {line[:200]!r}") from None
    if not isinstance(ready, dict):
        raise RunError(f"sandbox printed an unexpected line: {line[:200]!r}")
    return ready


def _urls(port: int, admin_port: int) -> dict[str, Any]:
    return {
        "url": f"http://{HOST}:{port}",
        "admin_url": f"http://{HOST}:{admin_port}",
        "metrics_url": f"http://{HOST}:{admin_port}/metrics",
        "port": port,
        "admin_port": admin_port,
        "pid": os.getpid(),
    }


class _StdinWatch(asyncio.Protocol):
    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop.set()


async def _run(
    cfg: SandboxConfig,
    port: int,
    admin_port: int,
    on_ready: Callable[[int, int], None],
    on_event: Callable[[str], None] | None,
    watch_stdin: bool,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available outside the main thread; there the caller stops us by cancelling.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    if watch_stdin:
        await loop.connect_read_pipe(lambda: _StdinWatch(stop), sys.stdin)
    try:
        await serve(cfg, port, admin_port, stop, on_ready, on_event)
    except OSError as exc:
        raise RunError(f"sandbox cannot listen on {HOST} (port {port}, admin {admin_port}): "
                       f"{exc.strerror or exc}") from exc


def run_foreground(
    cfg: dict[str, Any] | SandboxConfig | None = None,
    port: int = DEFAULT_PORT,
    admin_port: int | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the sandbox in this process until Ctrl-C or SIGTERM, printing URLs and events.

    `cfg` is the raw `[sandbox]` table or its normalized form (ProfileError if invalid). The
    admin port defaults to `port + 1` (or a free one when `port` is 0). RunError if a port
    cannot be bound.
    """
    normalized = validate_sandbox_config(cfg or {})
    if admin_port is None:
        admin_port = port + 1 if port else 0

    def on_ready(bound: int, bound_admin: int) -> None:
        urls = _urls(bound, bound_admin)
        echo(f"sandbox: {normalized.backends} backends, {normalized.algorithm}")
        autoscale = normalized.autoscale
        if autoscale is not None and autoscale.enabled and autoscale.hpa is not None:
            from loadforge.config.hpa import HPASpec

            echo(f"  {HPASpec.from_dict(autoscale.hpa).describe()}, "
                 f"sync every {autoscale.evaluation_interval_s:g}s")
        echo(f"  target   {urls['url']}")
        echo(f"  admin    {urls['admin_url']}/admin/state")
        echo(f"  metrics  {urls['metrics_url']}")
        echo("Ctrl-C to stop")

    def on_event(text: str) -> None:
        echo(f"{time.strftime('%H:%M:%S')} {text}")

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_run(normalized, port, admin_port, on_ready, on_event, watch_stdin=False))
    echo("sandbox stopped")


def _managed(cfg: SandboxConfig, port: int, admin_port: int) -> None:
    def on_ready(bound: int, bound_admin: int) -> None:
        sys.stdout.write(json.dumps(_urls(bound, bound_admin)) + "\n")
        sys.stdout.flush()

    def on_event(text: str) -> None:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_run(cfg, port, admin_port, on_ready, on_event, watch_stdin=True))


def load_config_file(path: str) -> dict[str, Any]:
    """The `[sandbox]` table of a profile, or a file that holds only that table."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    if "sandbox" in doc:
        table = doc["sandbox"]
        return table if isinstance(table, dict) else {"sandbox": table}
    if "stages" in doc or "target" in doc:
        return {}          # a profile without a [sandbox] table: defaults
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadforge.sandbox",
        description="Run the loadforge sandbox (load balancer, backends, autoscaler) on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=None,
                        help=f"load balancer port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--admin-port", type=int, default=None,
                        help="admin and metrics port (default: port + 1)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE.toml",
                        help="a profile with a [sandbox] table, or a file with just that table")
    source.add_argument("--config-json", metavar="JSON", help="the [sandbox] table as JSON")
    # Managed (start_sandbox): --config-json is already normalized, the ready line is JSON and
    # the end of stdin means the parent is gone.
    parser.add_argument("--managed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    try:
        where = "sandbox"
        cfg: dict[str, Any] = {}
        if args.managed:
            # --config-json from start_sandbox: a SandboxConfig the parent validated.
            _managed(SandboxConfig.from_json(args.config_json or "{}"), args.port or 0,
                     args.admin_port or 0)
            return 0
        if args.config:
            cfg = load_config_file(args.config)
            where = f"{args.config}: sandbox"
        elif args.config_json:
            try:
                cfg = json.loads(args.config_json)
            except ValueError as exc:
                raise InputError(f"--config-json is not valid JSON: {exc}") from exc
        base = os.path.dirname(os.path.abspath(args.config)) if args.config else None
        normalized = validate_sandbox_config(cfg, where, base_dir=base)
        port = DEFAULT_PORT if args.port is None else args.port
        run_foreground(normalized, port, args.admin_port)
    except LoadforgeError as exc:
        print(f"loadforge sandbox: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        pass
    return 0
