"""A fork server for worker processes: forked once from the command before it starts any
thread, it forks each worker with the engine already imported.

A worker started as a fresh interpreter pays 0.04 s of CPU for Python and its imports before
it builds its engine, and the run's start waits for the slowest of them. Forked from this
server, a worker pays a fork. The server is single-threaded (fork is safe in it: no lock can
be held by a thread that the child lacks), ignores the signals that reach the whole process
group (the coordinator decides how a run stops, as for any worker), and exits when the
command's end of its socket closes. It reports each worker's pid and, when the worker ends,
its exit status, which `ForkedWorker` serves as `subprocess.Popen` does.

Where no server runs (a thread was already running, or the library is used without the
command line), `WorkerPool` starts fresh interpreters as before.
"""

from __future__ import annotations

import atexit
import gc
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

_PID = struct.Struct("<i")
_EXIT = struct.Struct("<ii")
# Signals that reach the process group: the server and its workers ignore them.
_GROUP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
# A worker's exit status when its server died before reporting it.
UNKNOWN_EXIT = 255


class ForkServer:
    """The command's handle on its fork server."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.owner = os.getpid()
        self.statuses: dict[int, int] = {}

    @classmethod
    def start(cls) -> ForkServer | None:
        """Fork the server; None where forking is not safe (another thread runs)."""
        if threading.active_count() > 1 or not hasattr(socket, "send_fds"):
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        # No signal may reach the child before it ignores them: it would run this
        # command's handlers (and its code) in a second process.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ours.close()
                    for signum in _GROUP_SIGNALS:
                        signal.signal(signum, signal.SIG_IGN)
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                    _serve(theirs)
                    code = 0
                finally:
                    os._exit(code)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        theirs.close()
        server = cls(ours, pid)
        atexit.register(server.close)
        return server

    def close(self) -> None:
        """End the server and wait for it (briefly): its workers' CPU time, which it
        collected in waiting for them, then counts in this command's own (getrusage,
        `time`), as a fresh interpreter's would."""
        if not self.usable():
            return
        try:
            # Readable once the server has exited (Linux 5.3): no polling interval to wait out.
            exited = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            exited = -1
        self.sock.close()
        if exited >= 0:
            try:
                select.select([exited], [], [], 2.0)
            finally:
                os.close(exited)
        limit = time.monotonic() + 2.0
        while time.monotonic() < limit:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.001)

    def usable(self) -> bool:
        return os.getpid() == self.owner and self.sock.fileno() >= 0

    def spawn(self, fd: int) -> ForkedWorker:
        """A worker on `fd` (its end of the channel to this command)."""
        socket.send_fds(self.sock, [b"S"], [fd])
        limit = time.monotonic() + 30
        while True:
            for kind, pid, _ in self._read(max(0.0, limit - time.monotonic())):
                if kind == b"P":
                    return ForkedWorker(self, pid)
            if time.monotonic() > limit:
                raise OSError("the fork server did not answer")

    def status(self, pid: int, timeout: float) -> int | None:
        """pid's exit status once known within timeout seconds, else None."""
        limit = time.monotonic() + timeout
        while pid not in self.statuses:
            left = limit - time.monotonic()
            self._read(max(0.0, left))
            if left <= 0:
                break
        return self.statuses.get(pid)

    def _read(self, timeout: float) -> list[tuple[bytes, int, int]]:
        out = []
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            while ready:
                msg = self.sock.recv(64)
                if not msg:
                    raise OSError("the fork server exited")
                kind = msg[:1]
                if kind == b"X":
                    pid, status = _EXIT.unpack_from(msg, 1)
                    self.statuses[pid] = status
                    out.append((kind, pid, status))
                else:
                    out.append((kind, _PID.unpack_from(msg, 1)[0], 0))
                ready, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            # The server is gone: its workers' statuses cannot come any more.
            self.sock.close()
            raise
        return out


class ForkedWorker:
    """A worker forked by the fork server, with subprocess.Popen's face: pid, returncode,
    poll(), wait(timeout), kill()."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(0.0, raise_timeout=False)

    def wait(self, timeout: float | None = None, *, raise_timeout: bool = True) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self.server.status(self.pid, 1e9 if timeout is None
                                                     else timeout)
            except (OSError, ValueError):
                # The server is gone (killed): a worker that is gone too ended unseen.
                if not _alive(self.pid):
                    self.returncode = self.server.statuses.get(self.pid, UNKNOWN_EXIT)
        if self.returncode is None and raise_timeout:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL, as Popen.kill (safe in a signal handler: one system call)."""
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _serve(sock: socket.socket) -> None:
    """The server's loop: fork a worker per request, report pids and exit statuses."""
    from loadforge import _core  # noqa: F401  (imported once here, inherited by each worker)
    from loadforge.run.workers import worker_main

    # What the command had open when it forked this process is not the workers' business,
    # nor is its terminal's input (fresh-interpreter workers get /dev/null too).
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    if keep != 0:               # (a command started with its stdin closed got it as 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    # Objects inherited from the command are never collected here: their finalizers could
    # close a descriptor number that a worker's socket has taken since. (The command may
    # hold the collector through its start-up, cli/__init__.py: the workers collect.)
    gc.freeze()
    gc.enable()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 64):
                    pass
            except BlockingIOError:
                pass
            _reap(sock)
        if sock.fileno() not in ready:
            continue
        msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
        if not msg:
            return                      # the command is gone
        fd = fds[0]
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                sock.close()
                worker_main(fd)
            finally:
                os._exit(0)             # worker_main exits itself; a flows worker returns
        os.close(fd)
        sock.send(b"P" + _PID.pack(pid))
        _reap(sock)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(b"X" + _EXIT.pack(pid, os.waitstatus_to_exitcode(status)))
