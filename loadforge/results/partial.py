"""A run's result file while it is written: `path + ".partial"`, with disk space set aside
beside it (`path + ".partial.spare"`), claimed before the run starts so that an output that
cannot be written is one line and exit 2 (or 3 for a full disk) before any request is sent.
`store.ResultWriter` writes the Parquet file into it and renames it into place on close.
Nothing here needs pyarrow or the histograms: a run claims its file before time zero and
imports those while it runs.
"""

from __future__ import annotations

import errno
import io
import os
from typing import Any

from loadforge.errors import InputError, RunError


def why(exc: OSError) -> str:
    # pyarrow's I/O errors carry the errno in their text only ("[errno 28] No space ...").
    if exc.errno == errno.ENOSPC or f"[errno {errno.ENOSPC}]" in str(exc):
        return "disk full"
    return str(exc.strerror or exc)


# Disk space set aside beside a partial result: given back when the disk fills, so that the
# row group being written, the stage and run rows and the footer still fit. A file whose
# footer cannot be written is unreadable, and loses everything before it.
SPARE_BYTES = 1 << 20
SPARE_MIN_BYTES = 16 << 10


class SpareSpaceFile(io.RawIOBase):
    """The partial result file (what pyarrow writes to), with space set aside beside it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.spare_path = path + ".spare"
        self.disk_full = False
        self._pos = 0
        # Read too: copy_to() recovers what was written when the folder is removed mid-run.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        fs = os.fstatvfs(self._fd)
        # A nearly full disk: set aside three quarters of what it has, or nothing.
        size = min(SPARE_BYTES, fs.f_bavail * fs.f_frsize * 3 // 4)
        if size >= SPARE_MIN_BYTES:
            try:
                fd = os.open(self.spare_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                             0o600)
                try:
                    os.posix_fallocate(fd, 0, size)
                finally:
                    os.close(fd)
            except OSError:
                self.release()

    def release(self) -> bool:
        """Give the space set aside back; False if there was none left."""
        try:
            os.remove(self.spare_path)
            return True
        except OSError:
            return False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += os.write(self._fd, view[done:])
            except OSError as exc:
                if exc.errno != errno.ENOSPC or not self.release():
                    raise
                self.disk_full = True
        self._pos += done
        return done

    def tell(self) -> int:
        return self._pos

    def unlinked(self) -> bool:
        """Whether the file was removed (its folder deleted) while open: writes still land,
        in a file no name reaches."""
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def free_bytes(self) -> int:
        try:
            fs = os.fstatvfs(self._fd)
        except OSError:
            return 0
        return fs.f_bavail * fs.f_frsize

    def copy_to(self, path: str) -> None:
        """Copy what was written into a new file at `path` (flushed to disk)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            offset = 0
            while offset < self._pos:
                chunk = os.pread(self._fd, min(1 << 20, self._pos - offset), offset)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                offset += len(chunk)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Close and remove it: the run ended before anything was written into it."""
        self.close()
        try:
            os.remove(self.path)
        except OSError:
            pass

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self.release()
        super().close()


def claim(path: str) -> SpareSpaceFile:
    """The partial file of the result at `path`, made (with its folder) now; one line naming
    the path and why when it cannot be (InputError; RunError for a full disk)."""
    partial_path = path + ".partial"
    made: SpareSpaceFile | None = None
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        made = SpareSpaceFile(partial_path)
        fs = os.statvfs(partial_path)
        if fs.f_bavail * fs.f_frsize < SPARE_MIN_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as exc:
        if made is not None:
            made.discard()
        if why(exc) == "disk full":
            raise RunError(f"results {path}: cannot write (disk full)") from None
        raise InputError(f"results {path}: cannot write ({exc.strerror or exc})") from exc
    return made
