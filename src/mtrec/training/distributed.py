"""Data-parallel training on PyTorch's own engine: ``torchrun`` launches, DDP synchronises gradients.

``mtrec train`` needs no flag for it: launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), :func:`process_group` joins the default process group
(gloo on CPU, NCCL on GPU) and the trainer wraps its loss module in ``DistributedDataParallel``. Launched
plainly, every helper here is a no-op and the same code runs on one process.

Helpers are collectives over all ranks; every rank must call them in the same order. The tensor
collectives themselves (``all_reduce_``, ``all_gather_equal``) live in :mod:`mtrec.collectives`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtrec.collectives import all_gather_equal
from mtrec.training.evaluate import Predictions


class LaunchError(RuntimeError):
    """Distributed launch variables that are missing or inconsistent."""


@dataclass(frozen=True)
class DistContext:
    """This process's place among the ranks (``world_size`` 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def launch_env() -> DistContext:
    """The ranks as the launcher (``torchrun``) describes them in the environment."""
    ctx = DistContext(
        rank=_env_int("RANK", 0),
        world_size=_env_int("WORLD_SIZE", 1),
        local_rank=_env_int("LOCAL_RANK", 0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", 1),
    )
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size:
        raise LaunchError(f"RANK={ctx.rank} must be in [0, WORLD_SIZE={ctx.world_size})")
    return ctx


def current() -> DistContext:
    """The ranks of the initialised default process group, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    env = launch_env()
    return DistContext(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world_size)


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """``auto`` is CUDA when available, else CPU; a distributed CUDA run uses GPU ``LOCAL_RANK``."""
    ctx = ctx or current()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
    return device


def threads_per_process(ctx: DistContext) -> int:
    """The machine's cores shared among the processes launched on it."""
    return max(1, (os.cpu_count() or 1) // max(ctx.local_world_size, 1))


@contextmanager
def process_group(device_name: str = "auto") -> Iterator[DistContext]:
    """Join the default process group when launched with ``WORLD_SIZE`` > 1; leave it afterwards.

    The backend follows the device: NCCL for CUDA, gloo for CPU. A group the caller initialised already
    is used as it is and left open.
    """
    env = launch_env()
    if not env.enabled or dist.is_initialized():
        yield current()
        return
    if not dist.is_available():
        raise LaunchError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    device = resolve_device(device_name, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DDP when distributed (gradients averaged over ranks), else itself."""
    if not current().enabled:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


# ---- collectives (no-ops on one process) -----------------------------------------------------------
def all_gather_rows(array: np.ndarray, device: torch.device) -> np.ndarray:
    """Every rank's ``array`` ``[n_r, ...]`` concatenated in rank order: ``[sum n_r, ...]``.

    Row counts may differ by rank; shorter arrays are padded for the collective and trimmed after.
    """
    if not current().enabled:
        return array
    local = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    sizes = [int(n) for n in all_gather_equal(torch.tensor([local.shape[0]], device=device))]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = all_gather_equal(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]).cpu().numpy()


def gather_predictions(local: Predictions, device: torch.device) -> Predictions:
    """All ranks' predictions of their blocks of a split, in rank order (one process: ``local``).

    Metrics are then computed over the whole split on every rank, not averaged per rank: AUC is not a
    mean of per-block AUCs.
    """
    if not current().enabled:
        return local
    return Predictions(
        probs={t: all_gather_rows(v, device) for t, v in local.probs.items()},
        labels={t: all_gather_rows(v, device) for t, v in local.labels.items()},
        masks={t: all_gather_rows(v, device) for t, v in local.masks.items()},
        users=None if local.users is None else all_gather_rows(local.users, device),
        regression=local.regression,
        scenarios=None if local.scenarios is None else all_gather_rows(local.scenarios, device),
    )


def block_of(n: int, ctx: DistContext) -> slice:
    """This rank's contiguous block of ``n`` items (blocks differ in size by at most one)."""
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (ctx.rank < extra))
