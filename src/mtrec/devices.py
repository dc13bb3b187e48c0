"""Device names (``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N``) and the check that this machine has one.

:func:`check_device` is the one check behind ``--device`` (train, bench, demo, predict) and
``train.device``: a device this PyTorch build or this machine lacks is one line saying what to install or
what to use instead, not a traceback from deep inside PyTorch. Importing this module does not import torch.
"""

from __future__ import annotations

import re

from mtrec.errors import UserError

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
INSTALL = "install a PyTorch build with CUDA (https://pytorch.org/get-started/locally/)"


class DeviceError(UserError, ValueError):
    """A device name this machine cannot run on."""


def check_device(name: str, where: str = "--device") -> str:
    """``name`` if this machine can run on it; DeviceError naming ``where`` (an option or config key)
    and saying what to install or use instead if it cannot."""
    if not DEVICE.match(name):
        raise DeviceError(f"{where}: must be auto, cpu, mps, cuda or cuda:N, got {name!r}")
    if name in ("auto", "cpu"):
        return name
    import torch

    if name == "mps":
        if not torch.backends.mps.is_built():
            raise DeviceError(f"{where}: mps: this PyTorch build has no MPS support (Apple silicon only); "
                              f"use cpu")
        if not torch.backends.mps.is_available():
            raise DeviceError(f"{where}: mps: no MPS device is available on this machine; use cpu")
        return name
    if torch.version.cuda is None:
        raise DeviceError(f"{where}: {name}: this PyTorch build has no CUDA; {INSTALL}, or use cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise DeviceError(f"{where}: {name}: no CUDA device is visible (check the driver and "
                          f"CUDA_VISIBLE_DEVICES); use cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        raise DeviceError(f"{where}: {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return name
