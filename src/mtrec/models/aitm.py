"""AITM, the Adaptive Information Transfer Multi-task framework (Xi et al., KDD 2021, "Modeling the
Sequential Dependence among Audience Multi-step Conversions with Multi-task Learning in Targeted Display
Advertising").

Shared: the embeddings. Task-specific: each task's tower (an MLP giving its representation ``q_k``),
the transfer from the previous task (an MLP ``p_{k-1} = g(z_{k-1})``), the Adaptive Information Transfer
module (attention over ``{p_{k-1}, q_k}`` giving ``z_k``; :class:`~mtrec.nn.transfer.AttentionTransfer`)
and the head giving the logit. The first task has ``z_1 = q_1``.

Tasks are chained in schema order (click, then conversion; the information flows from each task to the
next). Every task is learned by BCE over all impressions, so the output of a task observed after
another (``TaskSpec.observed_after``) is its entire-space probability ``p(conversion and click)``, whose
stored label is 1 only where both happened. For each such pair the Behavioral Expectation Calibrator adds
``calibrator_weight * mean(max(p_later - p_earlier, 0))`` as the auxiliary loss term ``calibrator``
(:func:`~mtrec.objectives.losses.expectation_calibration`); tasks without that relation (e.g. two labels
drawn independently) get the transfer but no calibrator. ``probabilities`` returns, for a task observed
after another, ``p_later / p_earlier`` (clamped to [0, 1]): the probability given the earlier task, as
the task is evaluated and served, comparable with the other models' conversion probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import ModelConfigError, register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import MLP, ParallelMLP, TaskTowers
from mtrec.nn.transfer import AttentionTransfer
from mtrec.objectives.losses import expectation_calibration, step_mean

CALIBRATOR = "calibrator"


@register_model("aitm")
class AITM(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        tower_sizes: Sequence[int] = (256, 128),
        head_sizes: Sequence[int] = (64,),
        calibrator_weight: float = 0.6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema)
        if calibrator_weight < 0:
            raise ModelConfigError(f"aitm: calibrator_weight must be >= 0, got {calibrator_weight}")
        if CALIBRATOR in self.task_names:
            raise ModelConfigError(f"aitm: a task named {CALIBRATOR!r} clashes with the calibrator's term")
        n_tasks = len(self.task_names)
        self.calibrator_weight = calibrator_weight
        self.pairs = [(t.name, t.observed_after) for t in schema.tasks if t.observed_after is not None]
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.towers = ParallelMLP(n_tasks, in_dim, tower_sizes, dropout)
        dim = self.towers.out_dim
        self.transfers = nn.ModuleList(MLP(dim, [dim], dropout) for _ in range(n_tasks - 1))
        self.attention = nn.ModuleList(AttentionTransfer(dim) for _ in range(n_tasks - 1))
        self.heads = TaskTowers(n_tasks, dim, head_sizes, dropout)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(batch).flatten(1)  # [B, F*d]
        q = self.towers(x)  # [T, B, H]
        z = [q[0]]
        for k, (transfer, attention) in enumerate(zip(self.transfers, self.attention, strict=True), start=1):
            candidates = torch.stack([transfer(z[-1]), q[k]], dim=1)  # [B, 2, H]
            z.append(attention(candidates))  # [B, H]
        logits = self.heads(torch.stack(z))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Each task's BCE over all impressions, plus the weighted calibrator term (if any pair)."""
        losses = {  # means over the step's rows (step_mean: padding excluded, exact under DDP)
            t: step_mean(F.binary_cross_entropy_with_logits(outputs[t], batch.labels[t], reduction="none"), batch)
            for t in self.task_names
        }
        if self.pairs and self.calibrator_weight > 0:
            probs = {t: torch.sigmoid(outputs[t]) for t in self.task_names}
            penalties = [expectation_calibration(probs[later], probs[first], batch) for later, first in self.pairs]
            losses[CALIBRATOR] = self.calibrator_weight * torch.stack(penalties).sum()
        return losses

    def probabilities(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sigmoid per task; a task observed after another is divided by the earlier task's probability."""
        entire = super().probabilities(outputs)
        probs = dict(entire)
        for later, earlier in self.pairs:
            probs[later] = (entire[later] / entire[earlier].clamp_min(1e-12)).clamp(0.0, 1.0)
        return probs
