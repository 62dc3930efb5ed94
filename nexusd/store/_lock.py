"""One daemon per data directory: the exclusive lock a store holds on it.

The store holds an exclusive `flock` on ``nexusd.lock`` in the data directory
for as long as it is open (the file names the holder's pid). The OS drops the
lock when the process dies, however it dies, so a `kill -9` never leaves the
directory stuck; a second store (a second daemon) on the same directory
refuses to open.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from ._interface import StoreError

__all__ = ["LOCK_FILE", "lock_data_dir"]

LOCK_FILE: Final = "nexusd.lock"


def lock_data_dir(data_dir: Path) -> int:
    """Takes the data directory's lock for this process, creating the
    directory (mode 0700) if needed; returns the file descriptor that holds
    the lock (closing it releases the lock).

    Raises:
        StoreError: another process holds the lock (the message names its
            pid), or the lock file cannot be opened.
    """
    path = Path(data_dir) / LOCK_FILE
    try:
        Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        # The holder writes its pid just after taking the lock: it may not be there yet.
        who = f"nexusd pid {holder}" if holder.isdigit() else "another nexusd"
        raise StoreError(f"the data directory {data_dir} is in use by {who}") from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd

