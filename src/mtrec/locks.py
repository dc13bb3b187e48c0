"""Exclusive locks on the directories a command writes, so that two processes never write one together.

:func:`locked_directory` takes an advisory lock (``flock``) on the directory itself (no lock file is
left in it) for as long as the ``with`` block runs; a second process asking for the same directory is
refused at once with a :class:`DirectoryLockedError` naming it. The lock goes with the process: a
killed process leaves no stale lock behind. A directory that the lock had to create and that is still
empty at release is removed again, so a command refused later leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mtrec.io import PathError


class DirectoryLockedError(PathError):
    """Another process holds the lock of a directory this one was asked to write."""


@contextmanager
def locked_directory(path: str | Path, what: str = "directory") -> Iterator[Path]:
    """Hold the exclusive lock of directory ``path`` (created if missing) for the block; yields the path.
    ``what`` names the directory in the error, e.g. ``"run directory"``."""
    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryLockedError(f"{what} {path} is being written by another mtrec process; wait for it "
                                       f"to finish or choose another directory") from None
        yield path
    finally:
        if created:
            with suppress(OSError):
                path.rmdir()  # only if still empty; while still holding the lock
        os.close(handle)  # releases the lock
