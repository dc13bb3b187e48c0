"""ESMM, the Entire Space Multi-task Model (Ma et al., SIGIR 2018, "Entire Space Multi-Task Model: An
Effective Approach for Estimating Post-Click Conversion Rate").

Shared: the embeddings. Task-specific: one tower per task (the CTR tower and the CVR tower).

A task observed after another (``TaskSpec.observed_after``: conversion after click) has its tower's
logit read as the conditional probability ``p(task | earlier)`` (pCVR); its entire-space probability is
the product along its chain, ``pCTCVR = pCTR * pCVR``. The loss is on click and on CTCVR over all
impressions (:func:`~mtrec.objectives.losses.entire_space_task_losses`), so the CVR tower is never fit
on the biased sample of clicked rows alone, yet ``probabilities`` (the default sigmoid of each task's
logit) returns pCVR for the conversion task, as it is evaluated (on clicked rows) and served.

Generalisation beyond the paper's two tasks: every task observed after another is chained the same way,
to any depth (click -> cart -> buy: ``p(buy and cart and click) = pCTR * p(cart | click) *
p(buy | cart)``); a task observed after none is learned on all impressions by plain BCE (on a schema with
no such task, ESMM is simply one tower per task on shared embeddings). ``forward`` also returns each
chained task's entire-space probability as a logit by name (``sigmoid(outputs["ctcvr"]) = pCTR * pCVR``):
``ctcvr`` when the schema has one chained task (the paper's case), ``ctcvr_<task>`` for each when it
has several.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import ModelConfigError, register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import TaskTowers
from mtrec.objectives.losses import entire_space_log_prob, entire_space_task_losses, log_prob_to_logit


def entire_space_names(schema: DatasetSchema) -> dict[str, str]:
    """Chained task -> the name of its entire-space output (``ctcvr``, or ``ctcvr_<task>`` if several)."""
    chained = [t.name for t in schema.tasks if t.observed_after is not None]
    names = {task: "ctcvr" if len(chained) == 1 else f"ctcvr_{task}" for task in chained}
    clash = sorted(set(names.values()) & set(schema.task_names))
    if clash:
        raise ModelConfigError(f"esmm: task name(s) {clash} clash with ESMM's entire-space outputs; "
                               "rename the task(s)")
    return names


@register_model("esmm")
class ESMM(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        tower_sizes: Sequence[int] = (256, 128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema)
        self.entire_space_names = entire_space_names(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.towers = TaskTowers(len(self.task_names), in_dim, tower_sizes, dropout)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(batch).flatten(1)  # [B, F*d]
        logits = self.towers(x)  # [T, B]
        outputs = dict(zip(self.task_names, logits, strict=True))
        for task, name in self.entire_space_names.items():
            outputs[name] = log_prob_to_logit(entire_space_log_prob(outputs, self.schema, task))
        return outputs

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Click (and any task observed after none) by BCE, chained tasks by BCE of their entire-space
        product, all over every impression."""
        return entire_space_task_losses(outputs, batch, self.schema)
