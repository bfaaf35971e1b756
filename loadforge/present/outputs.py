"""Writing an output file the user named (`--summary-json`, `--junit`, `--html`, `--hlog`).

The path is the user's: a symlink is written through (its target gets the content, the link
stays a link), a device or a FIFO is written into (`--summary-json /dev/stdout`,
`>(jq .)`), and `-` is stdout. Only a regular file, or a path where nothing is yet, is
written to a temporary file beside it and renamed over it, so a reader never sees half a
file. New files get the mode the umask gives (0666 & ~umask), as a shell redirect would;
a file rewritten keeps its mode.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile

from loadforge.errors import InputError, RunError

STDOUT = "-"
# Errors of the machine rather than of the path given: the run could not be saved (exit 3).
_RESOURCE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def is_stdout(path: str | None) -> bool:
    return path == STDOUT


def _umask() -> int:
    # /proc gives it without changing it (os.umask can only be read by setting it, which
    # races with any thread creating files meanwhile).
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _error(option: str, path: str, exc: OSError) -> Exception:
    message = f"{option} {path}: cannot write ({exc.strerror or exc})"
    if exc.errno in _RESOURCE_ERRNOS:
        return RunError(message)
    return InputError(message)


def write_output(path: str, content: str | bytes, option: str) -> None:
    """Write `content` to the output `path` given with `option` (named in error messages).

    Errors: InputError (exit 2) for a path that cannot be written, RunError (exit 3) for a
    full or failing disk.
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    if is_stdout(path):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        info: os.stat_result | None = os.stat(path)       # follows symlinks
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise _error(option, path, exc) from None
    try:
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise InputError(f"{option} {path}: is a directory, expected a file")
        if info is not None and not stat.S_ISREG(info.st_mode):
            # A device, a FIFO or a socket (/dev/stdout, /proc/self/fd/N, >(cmd)): write into
            # it, never replace it. Opened by the name given: realpath cannot follow /proc's
            # links to pipes.
            with open(path, "wb") as out:
                out.write(data)
            return
        # A symlink stays: its target, existing or not yet, is what gets written.
        target = os.path.realpath(path)
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        mode = stat.S_IMODE(info.st_mode) if info is not None else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".partial",
                                   dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                os.fchmod(out.fileno(), mode)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise _error(option, path, exc) from None
