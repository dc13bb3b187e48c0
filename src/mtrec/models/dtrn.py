"""DTRN (Liu et al., CIKM 2023, "Deep Task-specific Bottom Representation Network for Multi-Task
Recommendation").

The claim: giving every task its own *bottom* representation, rather than one shared input that the tasks
fight over, relieves negative transfer between conflicting tasks at a small parameter cost, and combines
with MMoE/PLE tops. Two modules build the task-specific bottoms:

- **TIM** (Task-specific Interest Module). Each behaviour history m (click, cart, buy, ...) is encoded
  once per (task k, behaviour m) pair by one transformer whose attention and feed-forward weights are
  shared by all pairs; only its LayerNorms differ: a hypernetwork turns a task embedding t_k and a
  behaviour embedding b_m into gamma = 1 + W_g z and beta = W_b z (``nn/hyper.py``). Each encoding is
  pooled by target attention against the candidate item (the sparse feature the history names as its
  ``target``), giving the interest u_{k,m}. All K x M encodings are one batched pass over the B x M
  histories: the first attention runs once per history, everything after it only on the valid
  (non-padding) positions, and the first norm broadcasts them to the K tasks (``nn/sequence.py``).
- **TRM** (Task-specific Representation Refinement Module). For each task, a SENet reads the F field
  embeddings plus that task's M interests and rescales each of the F + M fields (``trm="field"``: one
  sigmoid weight per field; ``"bit"``: one per element). The K SENets run as one batched matmul.

Top (``backbone``): ``towers`` gives each task its own MLP (``expert_sizes`` then ``tower_sizes``) on its
refined input; ``mmoe`` evaluates shared experts on each task's own refined input, mixed by the task's gate
(also reading its own input), then per-task towers; ``ple`` runs ``num_levels`` CGC/PLE extraction
levels (``nn/experts.py``) whose task experts and gates read each task's refined input; with one level
(CGC) the shared experts are evaluated on each task's own input too, and with more the shared stream
(shared experts and gate) starts from the mean of the K refined inputs, since PLE's shared gate needs
one input of its own.

Shared by all tasks: the embedding tables, the transformer's attention/FFN weights and positions, the
target-attention projection, the hypernetwork's W_g, W_b and body, and (``mmoe``/``ple``) the shared
experts.
Task-specific: the task embedding t_k (8 numbers by default), the task's SENet, gate and tower.
Behaviour-specific: the behaviour embedding b_m only.

Ablation switches: ``use_tim=False`` keeps the transformer and pooling but with ordinary learned
LayerNorms shared by every task and behaviour (one shared sequence encoder); ``use_trm=False`` feeds the
fields and interests to the top without re-weighting. Without sequence features in the schema TIM
contributes nothing and DTRN is TRM + backbone (so it runs on Census-Income too).

Defaults and why: ``embedding_dim=16``, ``expert_sizes=(256, 128)``, ``tower_sizes=(64,)`` and
``num_experts=4`` match the MMoE baseline, so comparisons differ only in the bottom; one transformer layer
with 2 heads and ``ffn_dim=64`` (4 x d), because behaviour histories in CTR models gain little from depth
(one layer is the usual choice in sequence-aware CTR models) and every extra layer runs K x M times;
``task_dim=behaviour_dim=8`` and one hidden hypernetwork layer of 32 (small enough that a task or
behaviour costs 8 parameters, wide enough for the pairs to differ); ``trm="field"`` (F + M weights per
task is the paper's cheaper variant; ``"bit"`` is the option); ``backbone="towers"`` (the standalone form,
cheapest, and the one that isolates the task-specific bottoms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import ModelConfigError, register_model, register_variant
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import EmbeddedBatch, FeatureEmbedding
from mtrec.nn.experts import GroupGates, ProgressiveLayers, mix
from mtrec.nn.hyper import NormHypernetwork
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.nn.senet import SENet, SENetMode
from mtrec.nn.sequence import ConditionalTransformer, HistoryTargets, TargetAttentionPooling
from mtrec.typed import Count, Dropout, Layers, Sizes

Backbone = Literal["towers", "mmoe", "ple"]


class TaskInterestModule(nn.Module):
    """TIM: every behaviour history encoded per (task, behaviour) pair and pooled against its target.

    ``forward(history [B, M, L, d], mask [B, M, L], sparse_fields [B, Fs, d])`` returns the interests
    ``[B, K', M, d]`` and the target-attention weights ``[B, K', M, L]``. K' = K when ``conditioned``
    (hypernetwork LayerNorms per pair), else 1 (one shared encoder with learned LayerNorms); M = number of
    sequence features; L = the longest history.
    """

    behaviour_index: torch.Tensor  # [M]: each sequence's behaviour type

    def __init__(
        self,
        schema: DatasetSchema,
        dim: int,
        conditioned: bool,
        num_layers: int,
        heads: int,
        ffn_dim: int,
        task_dim: int,
        behaviour_dim: int,
        hyper_sizes: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.encoder = ConditionalTransformer(
            dim, max(s.max_len for s in schema.sequences), num_layers, heads, ffn_dim, dropout
        )
        norms = self.encoder.num_norms
        behaviours = list(dict.fromkeys(s.behaviour for s in schema.sequences))
        self.register_buffer(
            "behaviour_index",
            torch.tensor([behaviours.index(s.behaviour) for s in schema.sequences], dtype=torch.long),
            persistent=False,
        )
        self.hyper: NormHypernetwork | None = None
        if conditioned:
            self.hyper = NormHypernetwork(
                len(schema.tasks), len(behaviours), dim, norms, task_dim, behaviour_dim, hyper_sizes
            )
        else:
            self.gamma = nn.Parameter(torch.ones(1, 1, norms, dim))
            self.beta = nn.Parameter(torch.zeros(1, 1, norms, dim))
        self.targets = HistoryTargets(schema, dim)  # each history's candidate, or a learned query
        self.pooling = TargetAttentionPooling(dim)

    def norm_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma, beta: ``[K, M, N, d]`` per (task, sequence) pair, or ``[1, 1, N, d]`` unconditioned."""
        if self.hyper is None:
            return self.gamma, self.beta
        gamma, beta = self.hyper()  # [K, behaviour types, N, d]
        return gamma[:, self.behaviour_index], beta[:, self.behaviour_index]  # [K, M, N, d]

    def forward(
        self, history: torch.Tensor, mask: torch.Tensor, sparse_fields: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = history.shape[1]
        gamma, beta = self.norm_parameters()  # [K', M or 1, N, d]: sequence b*M + j takes column j
        rows, valid = self.encoder(history.flatten(0, 1), mask.flatten(0, 1), gamma, beta)  # [K', V, d]
        target = self.targets(sparse_fields).flatten(0, 1)  # [B*M, d]
        pooled, weights = self.pooling.pool_rows(rows, valid, target)  # [K', B*M, d], [K', B*M, L]
        return (pooled.unflatten(1, (-1, m)).transpose(0, 1),  # [B, K', M, d]
                weights.unflatten(1, (-1, m)).transpose(0, 1))  # [B, K', M, L]


class TaskInputMMoE(nn.Module):
    """MMoE over task-specific inputs: shared experts and task k's gate both read task k's input.

    ``[K, B, D] -> [K, B, H]``. The experts run on all K inputs in one batched matmul.
    """

    def __init__(self, num_tasks: int, in_dim: int, num_experts: int, expert_sizes: Sequence[int],
                 dropout: float) -> None:
        super().__init__()
        self.experts = ParallelMLP(num_experts, in_dim, expert_sizes, dropout)
        self.gates = GroupGates(num_tasks, in_dim, num_experts)
        self.out_dim = self.experts.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = self.experts(x.flatten(0, 1))  # [E, K*B, H]
        per_task = experts.unflatten(1, (x.shape[0], -1)).transpose(0, 1)  # [K, E, B, H]
        return mix(per_task, self.gates(x))  # [K, B, H]


class TaskInputPLE(nn.Module):
    """CGC/PLE levels over task-specific inputs: ``[K, B, D] -> [K, B, H]``.

    Task k's experts and gate read task k's input. With one level (CGC) the shared experts also run on
    each task's own input. Upper PLE levels need a shared stream for their shared experts and gate: it
    starts from the mean of the K task inputs.
    """

    def __init__(self, num_tasks: int, in_dim: int, num_levels: int, num_task_experts: int,
                 num_shared_experts: int, expert_sizes: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.extraction = ProgressiveLayers(
            in_dim, num_tasks, num_levels, num_task_experts, num_shared_experts, expert_sizes, dropout
        )
        self.needs_shared_input = num_levels > 1
        self.out_dim = self.extraction.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = x.mean(0) if self.needs_shared_input else None  # [B, D]
        return self.extraction(x, shared)  # [K, B, H]


@register_model("dtrn")
class DTRN(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        backbone: Backbone = "towers",
        trm: SENetMode = "field",
        use_tim: bool = True,
        use_trm: bool = True,
        num_layers: Count = 1,
        heads: Count = 2,
        ffn_dim: Count = 64,
        task_dim: Count = 8,
        behaviour_dim: Count = 8,
        hyper_sizes: Sizes = (32,),
        trm_reduction: Count = 2,
        num_experts: Count = 4,
        num_levels: Count = 2,
        num_task_experts: Count = 1,
        num_shared_experts: Count = 2,
        expert_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
    ) -> None:
        super().__init__(schema)
        if embedding_dim % heads:  # (the counts are checked >= 1 by the registry, from the signature)
            raise ModelConfigError(
                f"dtrn: embedding_dim={embedding_dim} must be a multiple of heads={heads} "
                "(the transformer runs at the embedding width)"
            )
        num_tasks = len(self.task_names)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.tim: TaskInterestModule | None = None
        if schema.sequences:
            self.tim = TaskInterestModule(
                schema, embedding_dim, use_tim, num_layers, heads, ffn_dim,
                task_dim, behaviour_dim, hyper_sizes, dropout,
            )
        num_fields = self.embedding.num_fields + len(schema.sequences)
        self.trm = SENet(num_tasks, num_fields, embedding_dim, trm, trm_reduction) if use_trm else None
        in_dim = num_fields * embedding_dim
        self.experts: TaskInputMMoE | TaskInputPLE | None = None
        if backbone == "mmoe":
            self.experts = TaskInputMMoE(num_tasks, in_dim, num_experts, expert_sizes, dropout)
        elif backbone == "ple":
            self.experts = TaskInputPLE(
                num_tasks, in_dim, num_levels, num_task_experts, num_shared_experts, expert_sizes, dropout
            )
        tower_in, tower_hidden = (in_dim, [*expert_sizes, *tower_sizes]) if self.experts is None else (
            self.experts.out_dim, list(tower_sizes))
        self.towers = TaskTowers(num_tasks, tower_in, tower_hidden, dropout)

    def interests(
        self, features: Features, batch: EmbeddedBatch | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TIM's output: interests ``[B, K', M, d]`` and target-attention weights ``[B, K', M, L]``
        (K' = K with ``use_tim``, else 1). ``batch``: ``features`` embedded, when already done. Needs
        sequence features in the schema."""
        if self.tim is None:
            raise ModelConfigError("dtrn: the schema has no sequence features, so there are no interests")
        batch = self.embedding.embed(features) if batch is None else batch
        assert batch.history is not None and batch.mask is not None
        return self.tim(batch.history, batch.mask, batch.sparse)  # history [B, M, L, d], mask [B, M, L]

    def task_inputs(self, features: Features) -> torch.Tensor:
        """Each task's bottom representation, refined by TRM: ``[K, B, F + M, d]``."""
        num_tasks = len(self.task_names)
        batch = self.embedding.embed(features)
        x = batch.fields.unsqueeze(0).expand(num_tasks, -1, -1, -1)  # [K, B, F, d]
        if self.tim is not None:
            interests, _ = self.interests(features, batch)  # [B, K', M, d]
            interests = interests.transpose(0, 1).expand(num_tasks, -1, -1, -1)  # [K, B, M, d]
            x = torch.cat([x, interests], dim=2)  # [K, B, F + M, d]
        return self.trm(x) if self.trm is not None else x

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.task_inputs(features).flatten(2)  # [K, B, (F + M) * d]
        logits = self.towers(x if self.experts is None else self.experts(x))  # [K, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The top layer all tasks share: the experts' last shared layer, else TIM's target-attention
        projection (its weights serve every task), else the embedding."""
        if isinstance(self.experts, TaskInputMMoE):
            return list(self.experts.experts.last_layer().parameters())
        if isinstance(self.experts, TaskInputPLE):
            return list(self.experts.extraction.last_shared_layer().parameters())
        if self.tim is not None:
            return list(self.tim.pooling.parameters())
        return list(self.embedding.parameters())


register_variant("dtrn_mmoe", DTRN, backbone="mmoe")  # shared experts on each task's refined input
