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


# What `file_problem` finds wrong with a path; each reader words it for its own users.
NUL, MISSING, LOOP, UNREADABLE, DIRECTORY, SPECIAL = range(6)


def file_problem(path: str) -> tuple[int, str] | None:
    """What keeps `path` from being read as a regular file (symbolic links followed), as
    (NUL | MISSING | LOOP | UNREADABLE | DIRECTORY | SPECIAL, the OS's words where it gave
    some); None for a regular file. A FIFO or a device would block a reader, or never end."""
    if "\0" in path:
        return NUL, ""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return MISSING, ""
        if e.errno == errno.ELOOP:
            return LOOP, ""
        return UNREADABLE, str(e.strerror or e)
    if stat.S_ISDIR(st.st_mode):
        return DIRECTORY, ""
    if not stat.S_ISREG(st.st_mode):
        return SPECIAL, ""
    return None


def check_regular(path: str, where: str, hint: str = "") -> None:
    """A ProfileError naming `path` unless it is a regular file (symbolic links followed)."""
    problem = file_problem(path)
    if problem is None:
        return
    kind, why = problem
    raise ProfileError(f"{where}: " + {
        NUL: f"the path {path!r} holds a NUL byte",
        MISSING: f"not found: {path}{f' ({hint})' if hint else ''}",
        LOOP: f"{path} is a loop of symbolic links; point it at a file",
        UNREADABLE: f"cannot read {path}: {why}",
        DIRECTORY: f"{path} is a directory, expected a file",
        SPECIAL: f"{path} is not a regular file (a FIFO, socket or device); give a file",
    }[kind])


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
