"""Where a run's parameters live over the ranks, and how that state is copied, gathered and checkpointed.

:class:`Replicated` (``train.embedding_sharding: none``, and every run on one process): every rank holds the
whole model, DDP averages the gradients, rank 0's copy is the run's. :class:`mtrec.training.sharding.Sharded`
(TorchRec) gives each rank only its shards of the embedding tables; the trainer sees the same interface.

A *snapshot* is a copy of the tensors this rank holds (the whole model here); :meth:`Replicated.full_state`
turns snapshots into the full model's state dict on rank 0, the content of ``model.safetensors``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mtrec import collectives
from mtrec.models import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.training import distributed
from mtrec.training.config import ConfigError, TrainConfig
from mtrec.training.optimizers import Optimizers
from mtrec.training.resume import ResumeError
from mtrec.training.rundir import RunDirectory


def feature_embeddings(model: nn.Module) -> dict[str, FeatureEmbedding]:
    """The model's feature embedding blocks by module path."""
    return {path: m for path, m in model.named_modules() if isinstance(m, FeatureEmbedding)}


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Replicated:
    """The whole model on every rank (DDP when distributed)."""

    sharding = "none"

    def __init__(self, model: MultiTaskModel, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.ctx = distributed.current()

    def wrap(self, loss_step: nn.Module) -> nn.Module:
        """The module the training step calls: ``loss_step`` in DDP when distributed."""
        return distributed.data_parallel(loss_step, self.device)

    def table_parameters(self) -> list[nn.Parameter]:
        """Embedding-table parameters updated by the torch optimizer (``train.embedding_optimizer``)."""
        return [p for block in feature_embeddings(self.model).values() for p in block.table.parameters()]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter of the model (Adam)."""
        tables = {id(p) for p in self.table_parameters()}
        return [p for p in self.model.parameters() if id(p) not in tables]

    # ---- state ----------------------------------------------------------------------------------
    def held(self) -> dict[str, torch.Tensor]:
        """The model tensors this rank holds (not copies): here the whole state dict."""
        return self.model.state_dict()

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of :meth:`held`."""
        return {k: v.detach().clone() for k, v in self.held().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Load a snapshot taken by :meth:`snapshot` (of this rank, same model and placement)."""
        self.model.load_state_dict(state)

    def full_state(self, snapshot: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full model's state dict from every rank's ``snapshot`` (a collective); complete on rank 0."""
        return snapshot

    def eval_batches(self, split_rows: int, batch_size: int) -> int:
        """Forward passes every rank must make to score its block of a split (0: no lock step needed)."""
        return 0

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, run_dir: RunDirectory, common: dict[str, Any], held: dict[str, Any],
                        step: int) -> None:
        """Write ``resume.safetensors``: ``common`` (the run's progress) and ``held`` (what a rank holds:
        model, best models, optimizer state), rank 0's. ``step``: the checkpoint's optimizer step."""
        if self.ctx.is_main:
            run_dir.write_resume({**common, **held})

    def load_checkpoint(self, saved: dict[str, Any], run_dir: RunDirectory) -> dict[str, Any]:
        """What this rank held when ``saved`` (the run directory's ``resume.safetensors``) was written."""
        if "shards" in saved:
            raise ResumeError(f"{run_dir.resume_path}: written by a run with sharded embedding tables; resume it "
                              f"with its train.embedding_sharding")
        return saved

    def extra_state(self) -> dict[str, Any]:
        """Optimizer state that lives outside the torch optimizer (none here)."""
        return {}

    def load_extra_state(self, held: dict[str, Any]) -> None:
        """Load what :meth:`extra_state` returned."""

    # ---- reporting ------------------------------------------------------------------------------
    def _gathered(self, values: list[int]) -> list[list[int]]:
        """Each rank's ``values`` (ints), in rank order (a collective)."""
        mine = torch.tensor(values, dtype=torch.long, device=self.device)
        return [[int(v) for v in t.tolist()] for t in collectives.all_gather_equal(mine)]

    def summary(self, optimizer: Optimizers) -> dict[str, Any]:
        """What ``metrics.json`` records: the sharding, and each rank's embedding-table bytes (a collective)."""
        tables = self.table_parameters()
        per_rank = self._gathered([tensor_bytes(list(tables)), optimizer.state_bytes(tables)])
        return {"sharding": self.sharding, "rank_table_bytes": [r[0] for r in per_rank],
                "rank_table_optimizer_bytes": [r[1] for r in per_rank]}


def create_placement(config: TrainConfig, model: MultiTaskModel, device: torch.device,
                     log: Callable[[str], None]) -> Replicated:
    """The placement ``train.embedding_sharding`` asks for (replicated on one process: nothing to shard)."""
    if config.embedding_sharding == "none":
        return Replicated(model, device)
    if not distributed.current().enabled:
        log(f"train.embedding_sharding: {config.embedding_sharding} on one process: the tables stay whole")
        return Replicated(model, device)
    try:
        from mtrec.training.sharding import Sharded
    except ImportError as exc:
        raise ConfigError(f"train.embedding_sharding: {config.embedding_sharding} needs TorchRec, which is not "
                          f"installed ({exc}); run `make setup-torchrec`") from exc
    return Sharded(model, device, config)
