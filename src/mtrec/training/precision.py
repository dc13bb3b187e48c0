"""Mixed precision: the number format a run's training step computes in, and why (``train.precision``).

``fp32`` computes everything in float32. ``bf16`` and ``fp16`` run the model's forward pass (and so its
backward pass) under :func:`torch.autocast`: matrix products and convolutions in the 16-bit format,
reductions, norms and softmax in float32, as autocast's op lists say. In every mode:

- the master weights and the optimizer state stay float32 (autocast casts a weight per op, never the
  parameter itself);
- the model's outputs are cast to float32 before the objective, so the losses, the task weighting and the
  metrics are computed in float32;
- validation, test and export score the float32 weights in float32, so a run's reported metrics are what
  ``predict``, ``serve`` and the ONNX model compute.

``fp16`` (CUDA only) scales the loss with :class:`torch.amp.GradScaler`: fp16's small exponent range
would flush small gradients to zero; bf16 has float32's range and needs no scaler.

``auto`` picks bf16 where the device runs it faster than fp32: a CUDA device that supports bf16, or a CPU
with bf16 instructions (``amx_bf16`` or ``avx512_bf16`` in its flags; with either one, oneDNN runs bf16
matrix products at about twice the fp32 rate or more). Everywhere else (a CPU without them, where bf16
is emulated and slower than fp32; Apple's ``mps``) it picks fp32. The choice and its reason are logged
and recorded in ``metrics.json`` as ``precision`` and ``precision_reason``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from mtrec.errors import UserError
from mtrec.features.inputs import Features

PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 instructions
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(UserError, ValueError):
    """A ``train.precision`` the run's device cannot use."""


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where the file does not exist (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_flags() -> list[str]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU has."""
    flags = cpu_flags()
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def cuda_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes in bf16 natively."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


@dataclass(frozen=True)
class Precision:
    """The format a run computes in (``fp32``, ``bf16`` or ``fp16``) on ``device_type``, and why."""

    name: Literal["fp32", "bf16", "fp16"]
    reason: str
    device_type: str = "cpu"

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The context the model's forward pass runs in (a no-op for fp32)."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.name])

    def outputs(self, model: Callable[[Features], dict[str, torch.Tensor]],
                features: Features) -> dict[str, torch.Tensor]:
        """``model(features)`` under :meth:`autocast`, with floating-point outputs cast to float32 (what the
        objective reads)."""
        if not self.mixed:
            return model(features)
        with self.autocast():
            outputs = model(features)
        return {name: out.float() if out.is_floating_point() else out for name, out in outputs.items()}

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16's loss scaler; None for fp32 and bf16."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def record(self) -> dict[str, str]:
        """What ``metrics.json`` records."""
        return {"precision": self.name, "precision_reason": self.reason}


def choose_precision(setting: str, device: torch.device) -> Precision:
    """The precision ``train.precision: setting`` gives on ``device``; PrecisionError (one line) where
    the device cannot compute in the format asked for."""
    kind = device.type
    if setting == "fp32":
        return Precision("fp32", "train.precision: fp32", kind)
    if kind == "cuda":
        if setting == "fp16":
            return Precision("fp16", "train.precision: fp16 (CUDA, with a gradient scaler)", kind)
        supported = cuda_bf16(device)
        if setting == "bf16" and not supported:
            raise PrecisionError(f"train.precision: bf16: the CUDA device {torch.cuda.get_device_name(device)} "
                                 f"has no bf16 support; use fp16 or fp32")
        if setting == "bf16":
            return Precision("bf16", "train.precision: bf16", kind)
        return (Precision("bf16", "auto: the CUDA device supports bf16", kind) if supported
                else Precision("fp32", "auto: the CUDA device has no bf16 support", kind))
    if setting == "fp16":
        raise PrecisionError(f"train.precision: fp16 needs a CUDA device (its gradient scaler), this run is on "
                             f"{kind}; use bf16 or fp32")
    if kind != "cpu":
        if setting == "bf16":
            raise PrecisionError(f"train.precision: bf16 is supported on cuda and cpu, this run is on {kind}; "
                                 f"use fp32")
        return Precision("fp32", f"auto: mixed precision is not used on {kind}", kind)
    found = cpu_bf16_flags()
    if setting == "bf16":
        note = f"the CPU has {', '.join(found)}" if found else \
            "the CPU has no bf16 instructions, so bf16 is emulated and slower than fp32"
        return Precision("bf16", f"train.precision: bf16; {note}", kind)
    if found:
        return Precision("bf16", f"auto: the CPU has {', '.join(found)}", kind)
    return Precision("fp32", f"auto: the CPU has no bf16 instructions ({' or '.join(CPU_BF16_FLAGS)}), "
                             f"where bf16 is slower than fp32", kind)


FP32 = Precision("fp32", "train.precision: fp32")
