"""The machine's memory and disk, checked before a large allocation or write.

A size taken from a config (rows, a sequence length) can ask for more than the machine has; allocating
it would end in a MemoryError traceback, or a process killed by the system, and writing it in a file
system that fills up half way. :func:`check_memory` and :func:`check_disk` compare an estimate with what
the machine has and raise the caller's error, one line naming what asked for it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def machine_memory() -> int:
    """The machine's physical memory in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(needed: int, what: str, error: type[Exception]) -> None:
    """``error`` naming ``what`` if ``needed`` bytes exceed the machine's memory."""
    total = machine_memory()
    if needed > total:
        raise error(f"{what} needs about {_size(needed)} of memory; this machine has {_size(total)}")


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(path: str | Path, needed: int, what: str, error: type[Exception]) -> None:
    """``error`` naming ``what`` and ``path`` if the file system of ``path`` (or of its first existing
    parent) has less than ``needed`` bytes free."""
    free = shutil.disk_usage(_existing(Path(path))).free
    if needed > free:
        raise error(f"{what} needs about {_size(needed)} in {path}, but its file system has {_size(free)} free")
