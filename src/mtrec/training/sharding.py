"""Embedding tables sharded over the ranks with TorchRec (``train.embedding_sharding``).

Every model embeds its features through :class:`mtrec.nn.embedding.FeatureEmbedding`, which looks rows up
in ``table``, one stacked table addressed by per-table offsets. Here that ``table`` is replaced by
:class:`ShardedTables`: one TorchRec ``EmbeddingCollection`` with a table per schema table, sharded by
``DistributedModelParallel`` (table-wise: each table on one rank; column-wise: each rank holds a slice of
every table's columns; auto: TorchRec's planner decides, within a per-rank memory budget), while the
rest of the model (and the weighting strategy) stays data-parallel under DDP. Models do not change.

A lookup sends ids to the ranks holding their rows and the rows back (all-to-all), so every lookup is a
collective: every rank must run the same forward passes (the trainer pads evaluation to equal counts).

Gradients: each rank's loss is scaled so that DDP's *average* over ranks is the step's gradient (see
:func:`mtrec.objectives.losses.step_mean`); a sharded table receives the *sum* of the ranks'
gradients, so the rows a lookup returns scale their gradient by ``1 / world_size`` on the way back.
Sharded tables are updated inside the backward pass by fbgemm's fused exact Adagrad or SGD
(``train.embedding_optimizer``), the same update :mod:`mtrec.training.optimizers` gives a plain run's
tables.

Checkpoints: each rank writes the tensors it holds (its shards, their optimizer state, and its copy of the
dense part) to its own file, named by the checkpoint's step; then rank 0 writes ``resume.safetensors``,
which names that step. A kill at any moment leaves a complete earlier set that the main file names.
``model.safetensors`` holds the full model, gathered on rank 0, in the plain (unsharded) layout.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, PlannerError, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingPlan, ShardingType

from mtrec.models import MultiTaskModel
from mtrec.training.config import ConfigError, TrainConfig
from mtrec.training.optimizers import ADAGRAD_EPS, Optimizers, table_lr
from mtrec.training.placement import Replicated, feature_embeddings, tensor_bytes
from mtrec.training.resume import ResumeError
from mtrec.training.rundir import RunDirectory

COLLECTION = "table.collection"  # where ShardedTables' collection sits under a FeatureEmbedding
SHARDING_TYPES = {
    "table_wise": [ShardingType.TABLE_WISE.value],
    "column_wise": [ShardingType.COLUMN_WISE.value],
    # not row-wise: fbgemm has no CPU kernel for it; not data-parallel: TorchRec 1.8.0's data-parallel
    # sequence embedding returned one pooled row per table instead of a row per id on CPU
    "auto": [ShardingType.TABLE_WISE.value, ShardingType.COLUMN_WISE.value, ShardingType.TABLE_COLUMN_WISE.value],
}
FUSED_OPTIMIZERS = {"adagrad": EmbOptimType.EXACT_ADAGRAD, "sgd": EmbOptimType.EXACT_SGD}


class ShardedTables(nn.Module):
    """A stacked table's rows from a TorchRec embedding collection, one TorchRec table per schema table.

    ``forward(ids)``: stacked ids (any shape ``[...]``, each in ``[offset_t, offset_t + rows_t)`` of its
    table t) to rows ``[..., d]``, the same rows the stacked ``nn.Embedding`` it replaces returns.
    """

    starts: torch.Tensor

    def __init__(self, tables: dict[str, tuple[int, int]], weight: torch.Tensor, gradient_scale: float) -> None:
        super().__init__()
        self.names = list(tables)
        self.dim = int(weight.shape[1])
        configs = [EmbeddingConfig(name=name, embedding_dim=self.dim, num_embeddings=rows, feature_names=[name])
                   for name, (_, rows) in tables.items()]
        with torch.random.fork_rng(devices=[]):  # the collection's own initialisation must not move the RNG
            self.collection = EmbeddingCollection(tables=configs, device=weight.device)
        with torch.no_grad():
            for name, (offset, rows) in tables.items():
                self.collection.embeddings[name].weight.copy_(weight[offset : offset + rows])
        self.register_buffer("starts", torch.tensor([o for o, _ in tables.values()], dtype=torch.long),
                             persistent=False)
        self.gradient_scale = gradient_scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)  # [N]
        which = torch.bucketize(flat, self.starts, right=True) - 1  # [N] table of each id
        order = torch.argsort(which, stable=True)  # ids grouped by table
        features = KeyedJaggedTensor(  # one "sample" per table holding all of its ids: lengths [T]
            keys=self.names, values=(flat - self.starts[which])[order],
            lengths=torch.bincount(which, minlength=len(self.names)),
        )
        looked_up = self.collection(features)
        rows = torch.cat([looked_up[name].values() for name in self.names])  # [N, d]
        if rows.requires_grad and self.gradient_scale != 1.0:
            scale = self.gradient_scale
            rows.register_hook(lambda grad: grad * scale)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return rows[inverse].view(*ids.shape, self.dim)


def _local(state: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a state dict as this rank holds them: a sharded tensor's local shards under
    ``key@row,col`` (their offsets in the full tensor), others as they are."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_local(value, f"{prefix}{key}/"))
        elif isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                out[f"{prefix}{key}@{','.join(map(str, shard.metadata.shard_offsets))}"] = shard.tensor
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
    return out


def _copy_into(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``source`` into the tensors of ``target`` (same keys and shapes)."""
    if target.keys() != source.keys():
        missing, extra = sorted(target.keys() - source.keys()), sorted(source.keys() - target.keys())
        raise KeyError(f"{what}: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for key, tensor in target.items():
            if tensor.shape != source[key].shape:
                raise ValueError(f"{what}: {key} has shape {tuple(source[key].shape)}, expected {tuple(tensor.shape)}")
            tensor.copy_(source[key])


def _gather_to_main(local: dict[str, torch.Tensor], key: str, value: ShardedTensor) -> torch.Tensor | None:
    """The full tensor of ``value`` on rank 0 (None elsewhere) from the ranks' ``local`` copies of their
    shards (a collective: point-to-point sends to rank 0, in the shards' order)."""
    rank = dist.get_rank()
    full = torch.empty(tuple(value.size()), dtype=value.dtype) if rank == 0 else None
    for meta in value.metadata().shards_metadata:
        owner = meta.placement.rank() if meta.placement is not None else 0
        at = tuple(slice(o, o + n) for o, n in zip(meta.shard_offsets, meta.shard_sizes, strict=True))
        name = f"{key}@{','.join(map(str, meta.shard_offsets))}"
        if rank == owner:
            piece = local[name].detach().cpu().contiguous()
            if rank == 0:
                assert full is not None
                full[at] = piece
            else:
                dist.send(piece, dst=0)
        elif rank == 0:
            assert full is not None
            buffer = torch.empty(tuple(meta.shard_sizes), dtype=value.dtype)
            dist.recv(buffer, src=owner)
            full[at] = buffer
    return full


class Sharded(Replicated):
    """The model's embedding tables sharded over the ranks (TorchRec), the rest replicated (DDP)."""

    def __init__(self, model: MultiTaskModel, device: torch.device, config: TrainConfig) -> None:
        super().__init__(model, device)
        self.sharding = config.embedding_sharding
        self.config = config
        self.blocks = {path: b for path, b in feature_embeddings(model).items() if b.tables}
        self.dmp: DistributedModelParallel | None = None
        self.plan: dict[str, Any] = {}
        for block in self.blocks.values():  # before the trainer builds anything on the model's parameters
            stacked = block.table
            assert isinstance(stacked, nn.Embedding)
            # each rank's rows get the sum of the ranks' gradients: scaled to DDP's average
            # FeatureEmbedding looks a forward pass's rows up in one call, so one fused update per table
            block.table = ShardedTables(block.tables, stacked.weight.detach(), 1.0 / self.ctx.world_size)

    # ---- sharding -------------------------------------------------------------------------------
    def _constraints(self, dims: dict[str, int]) -> dict[str, ParameterConstraints]:
        world = self.ctx.world_size
        constraints = {}
        for table, dim in dims.items():
            if self.sharding == "column_wise" and dim % world:
                raise ConfigError(f"train.embedding_sharding: column_wise splits each table's {dim} columns over "
                                  f"{world} ranks: make the embedding width divisible by {world}")
            constraints[table] = ParameterConstraints(
                sharding_types=SHARDING_TYPES[self.sharding],
                min_partition=dim // world if dim % world == 0 else None,  # column-wise: one slice per rank
            )
        return constraints

    def wrap(self, loss_step: nn.Module) -> nn.Module:
        """Plan the tables (swapped for :class:`ShardedTables` at construction) and shard them with
        ``DistributedModelParallel``, which puts the rest of ``loss_step`` under DDP."""
        dims = {name: block.dim for block in self.blocks.values() for name in block.tables}
        cfg = self.config
        sharder = EmbeddingCollectionSharder(fused_params={
            "optimizer": FUSED_OPTIMIZERS[cfg.embedding_optimizer], "learning_rate": table_lr(cfg),
            "eps": ADAGRAD_EPS,
        })
        # the planner counts the tables' weights only (it is not told of optimizers given as fused
        # parameters): Adagrad's state is as large again
        state = 2 if cfg.embedding_optimizer == "adagrad" else 1
        budget = cfg.embedding_memory_mb * 2**20 // state if self.sharding == "auto" and cfg.embedding_memory_mb \
            else None
        topology = TopologyFactory.create_topology(
            TrainerConfig(world_size=self.ctx.world_size, local_world_size=self.ctx.local_world_size,
                          ddr_cap_bytes=budget),
            kernel_config=KernelConfig(compute_device=self.device.type),
        )
        planner = EmbeddingShardingPlanner(topology=topology, constraints=self._constraints(dims),
                                           storage_reservation=FixedPercentageStorageReservation(0.0))
        try:
            plan = planner.collective_plan(loss_step, [sharder], dist.GroupMember.WORLD)
        except PlannerError as exc:
            first = str(exc).strip().splitlines()[0].strip()
            raise ConfigError(f"train.embedding_sharding: {self.sharding}: TorchRec's planner found no plan "
                              f"(train.embedding_memory_mb: {cfg.embedding_memory_mb}): {first}") from exc
        self.dmp = DistributedModelParallel(
            loss_step, device=self.device, plan=plan, sharders=[sharder],
            data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False),
        )
        self.plan = self._describe(plan)
        return self.dmp

    @staticmethod
    def _describe(plan: ShardingPlan) -> dict[str, Any]:
        """The plan as JSON: per table its sharding type, kernel, ranks and shards (offsets, sizes)."""
        out: dict[str, Any] = {}
        for module_plan in plan.plan.values():
            for table, ps in module_plan.items():
                shards = ps.sharding_spec.shards if ps.sharding_spec is not None else []
                out[table] = {
                    "sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel,
                    "ranks": list(ps.ranks or []),
                    "shards": [{"rank": s.placement.rank(), "offsets": list(s.shard_offsets),
                                "sizes": list(s.shard_sizes)} for s in shards],
                }
        return out

    def _is_table(self, name: str) -> bool:
        return any(name.startswith(f"{path}.{COLLECTION}." if path else f"{COLLECTION}.") for path in self.blocks)

    def table_parameters(self) -> list[nn.Parameter]:
        """None: sharded tables are updated by their fused kernels, not by a torch optimizer."""
        return []

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.model.named_parameters() if not self._is_table(name)]

    # ---- state ----------------------------------------------------------------------------------
    def held(self) -> dict[str, torch.Tensor]:
        """This rank's model tensors: the dense part and its shards of the tables (``key@row,col``)."""
        return _local(self.model.state_dict())

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        _copy_into(self.held(), state, "model state")

    def full_state(self, snapshot: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gather every table on rank 0 and stack each block's tables back into ``<block>.table.weight``."""
        full: dict[str, torch.Tensor] = {}
        state = self.model.state_dict()
        for key, value in state.items():
            if isinstance(value, ShardedTensor):
                gathered = _gather_to_main(snapshot, key, value)
                if gathered is not None:
                    full[key] = gathered
            else:
                full[key] = snapshot[key]
        if not self.ctx.is_main:
            return {}
        for path, block in self.blocks.items():
            prefix = f"{path}." if path else ""
            parts = [full.pop(f"{prefix}{COLLECTION}.embeddings.{name}.weight") for name in block.tables]
            full[f"{prefix}table.weight"] = torch.cat(parts)
        return full

    def eval_batches(self, split_rows: int, batch_size: int) -> int:
        largest_block = -(-split_rows // self.ctx.world_size)
        return -(-largest_block // batch_size)

    def extra_state(self) -> dict[str, Any]:
        assert self.dmp is not None
        return {"fused_optimizer": {k: v.detach().clone() for k, v in
                                    _local(self.dmp.fused_optimizer.state_dict()["state"]).items()}}

    def load_extra_state(self, held: dict[str, Any]) -> None:
        assert self.dmp is not None
        _copy_into(_local(self.dmp.fused_optimizer.state_dict()["state"]), held["fused_optimizer"],
                   "fused optimizer state")

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, run_dir: RunDirectory, common: dict[str, Any], held: dict[str, Any],
                        step: int) -> None:
        """Each rank's file, then (once all are complete) rank 0's ``resume.safetensors`` naming them, then
        each rank removes its files of earlier checkpoints."""
        rank, world = self.ctx.rank, self.ctx.world_size
        run_dir.write_resume_shard(rank, world, step, held)
        dist.barrier()
        if self.ctx.is_main:
            run_dir.write_resume({**common, "shards": {"step": step, "world_size": world, "plan": self.plan}})
        dist.barrier()
        run_dir.remove_resume_shards(rank, keep=run_dir.shard_path(rank, world, step))

    def load_checkpoint(self, saved: dict[str, Any], run_dir: RunDirectory) -> dict[str, Any]:
        path = run_dir.resume_path
        shards = saved.get("shards")
        if shards is None:
            raise ResumeError(f"{path}: written by a run without sharded embedding tables; resume it with "
                              f"train.embedding_sharding: none")
        if shards["world_size"] != self.ctx.world_size or shards["plan"] != self.plan:
            raise ResumeError(f"{path}: its tables were sharded over {shards['world_size']} ranks with another "
                              f"plan; resume a sharded run with the same number of processes and sharding")
        return run_dir.read_resume_shard(self.ctx.rank, self.ctx.world_size, shards["step"])

    # ---- reporting ------------------------------------------------------------------------------
    def summary(self, optimizer: Optimizers) -> dict[str, Any]:
        tables = [v for k, v in self.held().items() if self._is_table(k.split("@")[0])]
        fused = list(self.extra_state()["fused_optimizer"].values())
        per_rank = self._gathered([tensor_bytes(tables), tensor_bytes(fused)])
        return {"sharding": self.sharding, "plan": self.plan, "rank_table_bytes": [r[0] for r in per_rank],
                "rank_table_optimizer_bytes": [r[1] for r in per_rank]}
