"""ESCM², the Entire Space Counterfactual Multi-task Model (Wang et al., SIGIR 2022, "ESCM²: Entire Space
Counterfactual Multi-Task Model for Post-Click Conversion Rate Estimation"), as objectives for any model.

ESMM's entire-space losses (:class:`~mtrec.objectives.objective.EntireSpace`: CTR on all impressions,
CTCVR = CTR * CVR on all impressions) plus a counterfactual risk of the CVR estimate over the entire
impression space, for each binary task observed after another (conversion after click). For such a task,
over the real rows ``i`` of the step (``N`` of them): ``o_i`` the earlier task's observation (the task's
mask: 1 where the click happened), ``e_i = BCE(r_i, pCVR_i)`` the CVR error on the conversion label, and
the propensity ``p_i = p(the earlier task)`` (pCTR; along a longer chain, the entire-space probability
of the task it is observed after), taken under stop-gradient and clipped to ``[propensity_clip, 1]``,
so the risk trains the CVR estimate only, never the propensity.

- ``escm2_ips`` (inverse propensity scoring): ``R_IPS = 1/N sum_i o_i e_i / p_i``.
- ``escm2_dr`` (doubly robust): an imputation tower (parameters of the objective: its own embeddings of
  the same features and an MLP per such task) predicts the conversion ``r~_i`` on every row; the imputed
  error is ``e^_i = BCE(sg(r~_i), pCVR_i)``, and ``R_DR = 1/N sum_i [e^_i + o_i (e_i - e^_i) / p_i]``:
  the clicked rows correct the imputed errors, which reach the unclicked ones. The tower learns
  ``L_imp = 1/N sum_i o_i (sg(e_i) - e^'_i)^2 / p_i`` with ``e^'_i = BCE(r~_i, sg(pCVR_i))``, so it
  fits the errors and the CVR estimate does not move to fit the tower.

The risk is the auxiliary term ``counterfactual`` (``counterfactual_weight * sum over such tasks``; the
paper's ``lambda_c``), DR's tower loss the term ``imputation``; both are added with weight 1 beside the
weighted task losses. Every mean is :func:`~mtrec.objectives.losses.step_mean`'s, so the terms are exact
under data-parallel training. Predictions are ESMM's (the conditional pCVR).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import TaskTowers
from mtrec.objectives.losses import entire_space_log_prob, step_mean
from mtrec.objectives.objective import EntireSpace, ObjectiveConfigError, register_objective

COUNTERFACTUAL = "counterfactual"
IMPUTATION = "imputation"


def soft_bce(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of probability ``target`` against ``sigmoid(logit)`` per row, differentiable in both:
    ``softplus(z) - target * z``."""
    return F.softplus(logit) - target * logit


class CounterfactualRisk(EntireSpace):
    """The ESCM² objectives' common part: ESMM's losses, the propensities and the IPS weights."""

    name = "escm2"
    terms: tuple[str, ...] = (COUNTERFACTUAL,)

    def __init__(self, schema: DatasetSchema, counterfactual_weight: float = 1.0,
                 propensity_clip: float = 0.05) -> None:
        super().__init__(schema)
        if not self.chained:
            raise ObjectiveConfigError(f"objective {self.name}: needs a binary task observed after another "
                                       "(conversion after click); this schema has none")
        if counterfactual_weight < 0 or not 0 < propensity_clip <= 1:
            raise ObjectiveConfigError(f"objective {self.name}: need counterfactual_weight >= 0 and 0 < "
                                       f"propensity_clip <= 1; got {counterfactual_weight}, {propensity_clip}")
        clash = sorted(set(self.terms) & set(schema.task_names))
        if clash:
            raise ObjectiveConfigError(f"objective {self.name}: task(s) {clash} clash with its loss terms; "
                                       "rename the task")
        self.counterfactual_weight = counterfactual_weight
        self.propensity_clip = propensity_clip

    def propensities(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per chained task, ``p(the task it is observed after)`` ``[B]``, detached, in
        ``[propensity_clip, 1]``."""
        result = {}
        for task in self.chained:
            earlier = self.schema.task(task).observed_after
            assert earlier is not None
            p = torch.exp(entire_space_log_prob(outputs, self.schema, earlier)).detach()
            result[task] = p.clamp(min=self.propensity_clip, max=1.0)
        return result

    def ips_weights(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Per chained task, ``o_i / p_i`` ``[B]``: 0 where the task is not observed, at most
        ``1 / propensity_clip``."""
        return {task: batch.masks[task] / p for task, p in self.propensities(outputs).items()}

    def risks(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """The counterfactual risk of each chained task (scalars) and any other loss term."""
        raise NotImplementedError

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        losses = super().losses(outputs, batch)
        risks = self.risks(outputs, batch)
        losses[COUNTERFACTUAL] = self.counterfactual_weight * torch.stack(
            [risks.pop(task) for task in self.chained]).sum()
        return {**losses, **risks}

    def _errors(self, outputs: dict[str, torch.Tensor], batch: Batch, task: str) -> torch.Tensor:
        """``e_i``: the CVR error on the task's label, every row ``[B]`` (0/1 labels on unobserved rows
        are weighted 0 by ``o_i``)."""
        return F.binary_cross_entropy_with_logits(outputs[task], batch.labels[task], reduction="none")


@register_objective("escm2_ips")
class ESCM2IPS(CounterfactualRisk):
    """ESCM² with the inverse-propensity-scored risk (see the module docstring)."""

    name = "escm2_ips"

    def risks(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        weights = self.ips_weights(outputs, batch)
        return {task: step_mean(weights[task] * self._errors(outputs, batch, task), batch) for task in self.chained}


@register_objective("escm2_dr")
class ESCM2DR(CounterfactualRisk):
    """ESCM² with the doubly robust risk and its imputation tower (see the module docstring)."""

    name = "escm2_dr"
    terms = (COUNTERFACTUAL, IMPUTATION)

    def __init__(self, schema: DatasetSchema, counterfactual_weight: float = 1.0, propensity_clip: float = 0.05,
                 imputation_dim: int = 8, imputation_sizes: Sequence[int] = (64,)) -> None:
        super().__init__(schema, counterfactual_weight, propensity_clip)
        self.embedding = FeatureEmbedding(schema, imputation_dim)
        in_dim = self.embedding.num_all_fields * imputation_dim
        self.imputation = TaskTowers(len(self.chained), in_dim, imputation_sizes)

    def imputed(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The imputation tower's logits of ``r~`` per chained task ``[B]``."""
        logits = self.imputation(self.embedding.all_fields(batch.features).flatten(1))  # [C, B]
        return dict(zip(self.chained, logits, strict=True))

    def risks(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        weights = self.ips_weights(outputs, batch)
        imputed = self.imputed(batch)
        risks, tower = {}, []
        for task in self.chained:
            errors = self._errors(outputs, batch, task)  # e_i
            r_tilde = torch.sigmoid(imputed[task])
            imputed_errors = soft_bce(outputs[task], r_tilde.detach())  # e^_i: trains the CVR estimate
            risks[task] = step_mean(imputed_errors + weights[task] * (errors - imputed_errors), batch)
            fitted = soft_bce(outputs[task].detach(), r_tilde)  # e^'_i: trains the tower
            tower.append(step_mean(weights[task] * (errors.detach() - fitted) ** 2, batch))
        return {**risks, IMPUTATION: torch.stack(tower).sum()}
