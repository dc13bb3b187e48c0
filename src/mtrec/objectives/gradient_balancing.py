"""Gradient-level balancing: PCGrad, CAGrad, MetaBalance and GradCraft as weighting strategies.

Each strategy reads the task gradients ``g_k`` ``[T, P]`` on the parameters the model declares shared
(``model.shared_parameters()``) and replaces their combination there by a direction ``d`` of its own;
every other parameter gets the plain gradient of the combined loss ``sum_k w_k L_k`` (``w_k = 1``, CAGrad
``1/T``), as in the papers, where the surgery is on the shared parameters.

**How it fits** :meth:`~mtrec.objectives.weighting.WeightingStrategy.combine`: the strategy cannot set
gradients itself (the trainer clears them after ``combine`` and then runs one backward pass, which DDP
averages over the ranks), so it returns a **surrogate loss**::

    L = sum_k w_k L_k  +  sum_p <c_p, theta_p> - sg(sum_p <c_p, theta_p>),   c = d - sum_k w_k g_k

over the shared parameters ``theta``, with ``c`` constant. Its value is the combined loss (so logging and
the non-finite checks see the real loss), and its gradient is ``sum_k w_k g_k`` everywhere plus ``c`` on
the shared parameters, which is ``d`` there. In distributed training the ``g_k`` are first averaged over
the ranks (one all-reduce of ``[T, P]`` per step, as GradNorm does), so ``d`` and ``c`` are those of the
whole step and the same on every rank; DDP's average of the ranks' gradients of ``sum_k w_k L_k`` is the
step's ``sum_k w_k g_k``, and adding the common ``c`` gives exactly ``d``: the update is the one-process
update with the same global batch.

The ``g_k`` cost one extra backward pass per task through the graph above the shared parameters
(``torch.autograd.grad``), as for GradNorm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtrec.objectives.gradients import mean_over_ranks, task_gradients
from mtrec.objectives.weighting import (
    WeightingConfigError,
    WeightingStrategy,
    register_weighting,
    trainable_shared,
)

EPS = 1e-12


def linear_surrogate(correction: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A scalar of value 0 whose gradient with respect to ``params`` (parameters, or any tensors of the
    graph) is ``correction`` ``[P]`` (split and reshaped like them)."""
    parts = correction.split([p.numel() for p in params])
    term = torch.stack([(c.view_as(p) * p).sum() for c, p in zip(parts, params, strict=True)]).sum()
    return term - term.detach()


class GradientBalancing(WeightingStrategy):
    """Base: ``combine`` returns the surrogate loss of the module docstring for :meth:`direction`."""

    name = ""
    reads_gradients = True

    def loss_weights(self) -> torch.Tensor:
        """``w_k`` ``[T]``: the weights of the combined loss (every parameter's gradient but the shared)."""
        return torch.ones(len(self.task_names))

    def direction(self, grads: torch.Tensor) -> torch.Tensor:
        """The shared parameters' update direction ``[P]`` from the step's task gradients ``[T, P]``."""
        raise NotImplementedError

    def combine(self, task_losses: dict[str, torch.Tensor], shared: list[nn.Parameter],
                representation: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        losses = torch.stack([task_losses[t] for t in self.task_names])  # [T]
        weights = self.loss_weights().to(losses)
        loss = losses @ weights
        if not (torch.is_grad_enabled() and losses.requires_grad):
            return loss
        params = trainable_shared(self.name, shared)
        grads = mean_over_ranks(task_gradients(list(losses.unbind()), params))  # [T, P], the step's
        with torch.no_grad():
            correction = self.direction(grads) - weights @ grads  # [P]
        return loss + linear_surrogate(correction, params)

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.loss_weights().tolist(), strict=True))


def pcgrad_project(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's projected task gradients ``[T, P]`` from ``grads`` ``[T, P]``.

    For each task ``i``, over the other tasks ``j`` in a random order: where ``g_i' . g_j < 0``,
    ``g_i' <- g_i' - (g_i' . g_j) / |g_j|^2 g_j`` (``g_i'`` starts at ``g_i``; the ``g_j`` are the
    original gradients), removing from ``g_i'`` its component along a gradient it conflicts with. The
    conflict test is a clamp (``min(dot, 0)``), not a branch, so no value leaves the device.
    """
    projected = grads.clone()
    T = grads.shape[0]
    squared = (grads * grads).sum(1).clamp_min(EPS)  # |g_j|^2 [T]
    for i in range(T):
        for j in torch.randperm(T, generator=generator).tolist():
            if j != i:
                dot = (projected[i] @ grads[j]).clamp(max=0.0)
                projected[i] -= dot / squared[j] * grads[j]
    return projected


@register_weighting("pcgrad")
class PCGrad(GradientBalancing):
    """PCGrad, projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020,
    "Gradient Surgery for Multi-Task Learning").

    ``d = sum_i g_i'`` (:func:`pcgrad_project`); the losses are summed (``w_k = 1``). The random order is
    drawn from a generator seeded with ``(seed, step)``, so every rank draws the same one and a resumed
    run continues the sequence.
    """

    name = "pcgrad"

    def __init__(self, task_names: list[str], seed: int = 0) -> None:
        super().__init__(task_names)
        self.seed = seed
        self.steps = 0

    def direction(self, grads: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        self.steps += 1
        return pcgrad_project(grads, generator).sum(0)

    def get_extra_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])


def cagrad_weights(gram: torch.Tensor, c: float, iterations: int = 50, step: float = 2.0) -> torch.Tensor:
    """CAGrad's dual weights ``w`` ``[T]`` on the simplex from the Gram matrix ``G = g g^T`` ``[T, T]``:

        min_w  F(w) = g_w . g_0 + sqrt(phi) |g_w|,   g_w = sum_i w_i g_i,  g_0 = mean_i g_i,
        phi = c^2 |g_0|^2,

    i.e. ``w^T G b + c sqrt(b^T G b) sqrt(w^T G w)`` with ``b = 1/T``, a convex function of ``w``. Solved
    by exponentiated gradient (mirror descent on the simplex) from the uniform ``w``:
    ``w <- w * exp(-step * dF/dw)``, renormalised, with ``dF/dw = G b + sqrt(phi) G w / |g_w|``; ``G`` is
    first divided by its mean diagonal (``F`` scales with it, its minimiser does not), so ``step`` does
    not depend on the scale of the gradients. A few tensor operations on ``[T, T]`` per iteration."""
    T = gram.shape[0]
    g = gram / gram.diagonal().mean().clamp_min(EPS)
    mean = torch.full((T,), 1.0 / T, dtype=g.dtype, device=g.device)
    sqrt_phi = c * (mean @ g @ mean).clamp_min(0.0).sqrt()
    g_mean = g @ mean  # [T]
    w = mean.clone()
    for _ in range(iterations):
        g_w = g @ w  # [T]
        grad = g_mean + sqrt_phi * g_w / (w @ g_w).clamp_min(EPS).sqrt()
        w = w * torch.exp(-step * (grad - grad.min()))
        w = w / w.sum()
    return w


@register_weighting("cagrad")
class CAGrad(GradientBalancing):
    """CAGrad, Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021,
    "Conflict-Averse Gradient Descent for Multi-task Learning").

    The update maximises the worst task's improvement ``min_i g_i . d`` within a ball around the mean
    gradient, ``|d - g_0| <= c |g_0|``; by its dual, ``d = g_0 + sqrt(phi) / |g_w| g_w`` with the
    weights ``w`` of :func:`cagrad_weights` and ``phi = c^2 |g_0|^2``. ``c = 0`` is the mean gradient
    (plain averaged multi-task training); larger ``c`` moves toward the worst-off task. The losses are
    averaged (``w_k = 1/T``), so ``d`` and the task-specific gradients are on the same scale.
    """

    name = "cagrad"

    def __init__(self, task_names: list[str], c: float = 0.4, iterations: int = 50) -> None:
        super().__init__(task_names)
        if c < 0 or iterations < 1:
            raise WeightingConfigError(f"cagrad: need c >= 0 and iterations >= 1; got c={c}, iterations={iterations}")
        self.c = c
        self.iterations = iterations

    def loss_weights(self) -> torch.Tensor:
        return torch.full((len(self.task_names),), 1.0 / len(self.task_names))

    def direction(self, grads: torch.Tensor) -> torch.Tensor:
        mean = grads.mean(0)  # g_0
        if self.c == 0:
            return mean
        w = cagrad_weights(grads @ grads.T, self.c, self.iterations)
        gw = w @ grads  # [P]
        return mean + self.c * mean.norm() / gw.norm().clamp_min(EPS) * gw


class MagnitudeBalancer(WeightingStrategy):
    """MetaBalance's magnitude rule, shared by :class:`MetaBalance` (on the shared parameters) and
    :class:`~mtrec.objectives.multibalance.MultiBalance` (on the shared representation).

    One task is the target (``main``, default the first), the others auxiliary. Moving averages of the
    gradient norms ``m_k <- beta m_k + (1 - beta) |g_k|`` (started at the first step's norms) set each
    auxiliary task's scale ``s_a = relax * m_main / m_a + 1 - relax`` (``s_main = 1``). ``relax = 1``
    brings every auxiliary gradient to the main task's (averaged) norm, ``relax = 0`` leaves them as they
    are. The logged weights are the last step's scales (1 for the main task).
    """

    name = ""
    norms: torch.Tensor
    scales: torch.Tensor

    def __init__(self, task_names: list[str], main: str | None = None, relax: float = 0.7,
                 beta: float = 0.9) -> None:
        super().__init__(task_names)
        if main is not None and main not in task_names:
            raise WeightingConfigError(f"{self.name}: main task {main!r} is not a task; tasks: {task_names}")
        if not 0 <= relax <= 1 or not 0 <= beta < 1:
            raise WeightingConfigError(f"{self.name}: need 0 <= relax <= 1 and 0 <= beta < 1; got relax={relax}, "
                                       f"beta={beta}")
        self.main = task_names.index(main) if main is not None else 0
        self.relax = relax
        self.beta = beta
        self.register_buffer("norms", torch.zeros(len(task_names)))
        self.register_buffer("scales", torch.ones(len(task_names)))
        self.has_norms = False

    def balance(self, norms: torch.Tensor) -> torch.Tensor:
        """The scales ``s`` ``[T]`` after a step whose task gradients have the norms ``norms`` ``[T]``."""
        if self.has_norms:
            self.norms.mul_(self.beta).add_((1 - self.beta) * norms)
        else:
            self.norms.copy_(norms)
            self.has_norms = True
        scales = self.relax * self.norms[self.main] / self.norms.clamp_min(EPS) + (1 - self.relax)
        scales[self.main] = 1.0
        self.scales.copy_(scales)
        return scales

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.scales.tolist(), strict=True))

    def get_extra_state(self) -> dict[str, bool]:
        return {"has_norms": self.has_norms}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        self.has_norms = bool(state["has_norms"])


@register_weighting("metabalance")
class MetaBalance(MagnitudeBalancer, GradientBalancing):
    """MetaBalance (He, Feng, Cheng, Rahman, Yan & Chen, WWW 2022, "MetaBalance: Improving Multi-Task
    Recommendations via Adapting Gradient Magnitudes of Auxiliary Tasks").

    On the shared parameters, ``d = sum_k s_k g_k`` with the scales of :class:`MagnitudeBalancer`: each
    auxiliary gradient ``g_a`` moved toward the main task's averaged norm. The losses are summed.
    """

    name = "metabalance"

    def direction(self, grads: torch.Tensor) -> torch.Tensor:
        return self.balance(grads.norm(dim=1)) @ grads


def gradcraft_project(grads: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
    """GradCraft's crafted task gradients ``[T, P]`` from ``grads`` ``[T, P]`` (see :class:`GradCraft`).

    Magnitude: every ``g_i`` is rescaled to the largest norm, ``g~_i = |g|_max / |g_i| g_i``. Direction:
    for each task ``i``, with ``C`` the tasks whose ``g~_j`` conflict with it (``g~_i . g~_j < 0``),
    ``g'_i`` is ``g~_i`` projected onto the orthogonal complement of ``span{g~_j : j in C}`` at once
    (``g~_i - A^T (A A^T)^+ A g~_i``, ``A`` the rows of ``C``), not one conflict after another as in
    PCGrad. A projection that leaves ``g'_i`` in conflict with a task outside ``C`` adds that task to
    ``C`` and projects again (at most ``T - 1`` rounds), so every ``g'_i . g~_j >= 0``.
    """
    norms = grads.norm(dim=1, keepdim=True)  # [T, 1]
    aligned = grads * (norms.max() / norms.clamp_min(EPS))  # g~ [T, P]
    crafted = aligned.clone()
    T = grads.shape[0]
    scale = tolerance * float(norms.max()) ** 2
    for i in range(T):
        conflicting: list[int] = []
        while True:
            dots = aligned @ crafted[i]  # [T]
            new = [j for j in range(T) if j != i and j not in conflicting and float(dots[j]) < -scale]
            if not new:
                break
            conflicting += new
            rows = aligned[conflicting]  # A [C, P]
            coefficients = torch.linalg.pinv(rows @ rows.T) @ (rows @ aligned[i])  # [C]
            crafted[i] = aligned[i] - coefficients @ rows
    return crafted


@register_weighting("gradcraft")
class GradCraft(GradientBalancing):
    """GradCraft (Bai, Zhang, Feng, Lu, Zang, Lei & Song, KDD 2024, "GradCraft: Elevating Multi-task
    Recommendations through Holistic Gradient Crafting").

    ``d = sum_i g'_i`` with the crafted gradients of :func:`gradcraft_project`: magnitudes first aligned
    to the largest task gradient's norm (so no task is drowned by a larger one), then each projected off
    all the tasks it conflicts with at once, which resolves every conflict: ``d . g_j >= 0`` for every
    task ``j`` (global direction balance; ``g'_j . g~_j = |g'_j|^2 >= 0`` and no ``g'_i`` opposes
    ``g~_j``). The losses are summed (``w_k = 1``).

    Choices where the paper leaves room: the magnitudes are aligned fully to the largest norm (no
    partial alignment); a conflict is an inner product below ``-1e-6 |g|_max^2`` (rounding is not a
    conflict); the projection uses the pseudo-inverse, so linearly dependent conflicting gradients are
    handled.
    """

    name = "gradcraft"

    def direction(self, grads: torch.Tensor) -> torch.Tensor:
        return gradcraft_project(grads).sum(0)
