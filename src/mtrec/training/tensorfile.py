"""Writing safetensors files atomically, with the system's error for a write that fails.

safetensors reports a failed write (no space left, a file size limit) as its own ``SafetensorError``
holding the OS error's text; :func:`save_tensors` turns it back into the ``OSError`` it was, so that
:func:`mtrec.io.atomic_write` reports it as one line naming the file and keeps the previous file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from mtrec.io import atomic_write

_OS_ERROR = re.compile(r"os error (\d+)")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (contiguous, CPU, no two sharing memory) and ``metadata`` to ``path`` atomically;
    PathError naming ``path`` if the system refuses the write."""

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            found = _OS_ERROR.search(str(exc))
            if found is None:
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(tmp)) from exc

    atomic_write(Path(path), write)
