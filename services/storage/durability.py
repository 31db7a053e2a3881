"""Making writes durable: one file at a time (fsync), or every write of a file system at once (syncfs).

A group commit writes many blobs without waiting for the disk, then makes them all durable with one
call before the records that point at them are stored: one disk flush for the group instead of two
per blob (the file's and its folder's). Linux has ``syncfs(2)`` for that; elsewhere the files and
folders written are fsynced one by one.
"""

import ctypes
import os
import sys
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> bool:
    """Flush every write to the file system that holds ``path`` to its disk (``syncfs(2)``).

    Returns False where the call does not exist (the caller then fsyncs what it wrote); raises
    OSError when the flush fails (e.g. ENOSPC, EIO)."""
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs of {path} failed: {os.strerror(code)}")
    finally:
        os.close(fd)
    return True
