"""Reading a file the user named (a profile, a feeder, a body, a flows module): regular files
only, so that a FIFO or a device can never block the command, and one plain message for each
way it can be missing."""

from __future__ import annotations

import errno
import os
import stat

from loadforge.errors import ProfileError

# Said with a relative path that is not found: where the profile looked for it.
RELATIVE_HINT = "paths are relative to the profile's folder"


def check_regular(path: str, where: str, hint: str = "") -> None:
    """A ProfileError naming `path` unless it is a regular file (symbolic links followed)."""
    if "\0" in path:
        raise ProfileError(f"{where}: the path {path!r} holds a NUL byte")
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise ProfileError(f"{where}: not found: {path}{f' ({hint})' if hint else ''}"
                               ) from None
        if e.errno == errno.ELOOP:
            raise ProfileError(f"{where}: {path} is a loop of symbolic links; point it at a "
                               "file") from None
        raise ProfileError(f"{where}: cannot read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ProfileError(f"{where}: {path} is a directory, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise ProfileError(f"{where}: {path} is not a regular file (a FIFO, socket or "
                           "device); give a file")


def read_regular(path: str, where: str, hint: str = "") -> bytes:
    """The bytes of the regular file at `path`; a ProfileError naming it otherwise."""
    check_regular(path, where, hint)
    try:
        # O_NONBLOCK: were it swapped for a FIFO since the check, open() must not block.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ProfileError(f"{where}: {path} is not a regular file")
            return f.read()
    except MemoryError:
        raise ProfileError(f"{where}: {path} is too large to read into memory") from None
    except OSError as e:
        raise ProfileError(f"{where}: cannot read {path}: {e.strerror or e}") from None
