"""A run's optimizer: Adam for the model; the embedding tables' own where ``train.embedding_optimizer`` says.

With ``embedding_optimizer: adam`` (the default) the tables are in the model's Adam. With ``adagrad`` or
``sgd`` they get that optimizer (same learning rate, no weight decay), the rest keeps Adam: the update a
sharded table receives from fbgemm's fused kernels (exact Adagrad, exact SGD), so that a sharded run and a
plain run with the same setting train the same model. Adagrad and SGD leave a row whose gradient is zero
where it is, so updating only the rows a step looked up (as the fused kernels do) is the same update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtrec.training.config import TrainConfig

ADAGRAD_EPS = 1e-10  # torch's Adagrad default; the fused (sharded) Adagrad is given the same
# Adagrad's default learning rate for the tables: Adagrad divides each step by the root of the summed squared
# gradients, so it needs a far larger rate than Adam's 1e-3. MMoE on synthetic:easy:40000, 2 epochs, one
# process, mean test-AUC gap to the oracle: 0.143 at 1e-3, 0.075 at 0.01, 0.061 at 0.05, 0.060 at 0.1,
# 0.062 at 0.2 (Adam on every parameter: 0.103)
TABLE_LR = 0.1


class Optimizers:
    """Named torch optimizers stepped as one: ``adam`` (the model) and, if separate, ``tables``."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Step every optimizer; with fp16's ``scaler``, through it (gradients unscaled, a step whose
        gradients are not finite skipped) and then update its scale."""
        if scaler is None:
            for optimizer in self.optimizers.values():
                optimizer.step()
            return
        for optimizer in self.optimizers.values():
            scaler.step(optimizer)
        scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.keys() != self.optimizers.keys():
            raise KeyError(f"optimizer state for {sorted(state)}, this run has {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])

    def state_bytes(self, params: list[nn.Parameter]) -> int:
        """Bytes of optimizer state (moments, sums) held for ``params``."""
        wanted = {id(p) for p in params}
        return sum(t.numel() * t.element_size() for optimizer in self.optimizers.values()
                   for p, state in optimizer.state.items() if id(p) in wanted
                   for t in state.values() if isinstance(t, torch.Tensor) and t.dim() > 0)


def table_lr(config: TrainConfig) -> float:
    """The learning rate of the tables' own optimizer: ``train.embedding_lr``, else :data:`TABLE_LR` for
    Adagrad and ``train.lr`` for SGD."""
    if config.embedding_lr is not None:
        return config.embedding_lr
    return TABLE_LR if config.embedding_optimizer == "adagrad" else config.lr


def table_optimizer(kind: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The tables' optimizer of ``train.embedding_optimizer`` ``adagrad`` or ``sgd``."""
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=ADAGRAD_EPS)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"no separate table optimizer for {kind!r}")


def build_optimizers(config: TrainConfig, dense: list[nn.Parameter], tables: list[nn.Parameter],
                     device: torch.device) -> Optimizers:
    """Adam over ``dense`` (and ``tables`` with ``embedding_optimizer: adam``), the tables' own otherwise."""
    # the fused kernel on CUDA; foreach on CPU, where the fused kernel was 5 % faster on MMoE but rounds
    # differently enough that a 2-process run no longer matches one process to 1e-5 (docs/performance.md)
    fused = device.type == "cuda"
    fast: dict[str, Any] = {"foreach": None if fused else True, "fused": fused or None}
    if config.embedding_optimizer == "adam":
        return Optimizers({"adam": torch.optim.Adam([*dense, *tables], lr=config.lr,
                                                    weight_decay=config.weight_decay, **fast)})
    optimizers: dict[str, torch.optim.Optimizer] = {
        "adam": torch.optim.Adam(dense, lr=config.lr, weight_decay=config.weight_decay, **fast)
    }
    if tables:
        optimizers["tables"] = table_optimizer(config.embedding_optimizer, tables, table_lr(config))
    return Optimizers(optimizers)
