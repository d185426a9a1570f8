"""Atomic file writes: a result file is either its old version or its new one, never half written.

Every writer of a result file (``trials.csv``, ``summary.json``, policy files, ``config.yaml``, ...) goes through
:func:`atomic_write_bytes`: the bytes go to a temporary file in the same folder, are flushed and ``fsync``-ed,
then ``os.replace`` swaps it in (atomic on POSIX and Windows). On any failure the temporary file is removed and
the previous file is left as it was; an ``OSError`` (full disk, read-only folder, quota) becomes one
:class:`FileWriteError` line naming the file. This module is the lowest layer: it imports nothing of ours.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

__all__ = ["FileWriteError", "atomic_write_bytes", "atomic_write_text"]


class FileWriteError(OSError):
    """A file could not be written; the message is one line naming the file (the previous version is intact)."""

    def __init__(self, path: str | os.PathLike, exc: OSError) -> None:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc).strip().splitlines()[0]
        super().__init__(exc.errno, f"cannot write {path}: {reason} (the previous file, if any, is unchanged)")
        self.path = Path(path)

    def __str__(self) -> str:
        return self.strerror or ""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``) and return
    the path. Creates missing parent folders. Raises :class:`FileWriteError` (one line, naming ``path``)."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # keep the old file's permissions (mkstemp creates 0600)
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
        _sync_folder(path.parent)
    except FileWriteError:
        raise
    except OSError as exc:
        raise FileWriteError(path, exc) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as ``encoding`` (UTF-8)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for a moment, in every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform or file system can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
