"""GaLore-AdamW (Zhao et al., ICML 2024): AdamW whose moments live in a low-rank projection of
each weight matrix's gradient, as MedSAGa fine-tunes with it.

For a weight W (m x n; a conv weight (out, in, k...) as (out, in * prod(k))) with gradient G, every
``update_proj_gap`` steps the projector P is refreshed from G's SVD, G = U S V^T:

    m >= n:  P = V[:, :r]^T  (r x n),  R = G P^T  (m x r),  back: N P
    m <  n:  P = U[:, :r]    (m x r),  R = P^T G  (r x n),  back: P N

Adam's moments follow R (m x r or r x n, not m x n); the normalised step N = M / (sqrt(V) + eps)
is projected back, scaled by ``scale`` and applied with the bias-corrected step size
lr sqrt(1 - b2^t) / (1 - b1^t); then the decoupled weight decay p -= lr wd p, on the full weight.
This projected step is galore-torch's ``AdamW`` (the paper's code, jiaweizzhao/GaLore, in Hugging
Face's form: eps added to sqrt(V) before the bias correction, the decay after the step), op for op,
as GaLore's results were obtained with it. The moments are kept when the projector is refreshed,
as GaLore does.

Every other parameter (those of groups without a ``rank``, and vectors: biases, norms, ``A_log``,
``D``) takes ``torch.optim.AdamW``'s step, bit for bit its single-tensor implementation
(``foreach=False``): the decay p *= 1 - lr wd first, eps added after the bias correction, so that
these parameters train as in the recipe's AdamW.

The state is plain tensors and ints (no Python objects): it loads with ``weights_only``, an
nnU-Net checkpoint with it needs no import of this module to load or predict, and ``--c``
resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

DEFAULT_RANK, DEFAULT_GAP, DEFAULT_SCALE = 128, 200, 0.25  # the GaLore README's example (LLaMA, width 512)


def as_matrix(weight: Tensor) -> Tensor:
    """A weight as GaLore projects it: (first axis, everything else); (out, in x k...) for a conv,
    (in, out x k...) for a transposed one."""
    return weight.reshape(weight.shape[0], -1)


def projects_right(rows: int, cols: int) -> bool:
    """Whether GaLore projects an (m, n) matrix from the right (m >= n) or the left."""
    return rows >= cols


def projector(gradient: Tensor, rank: int) -> Tensor:
    """GaLore's projector for a gradient matrix (m, n): the top-``rank`` right singular vectors
    (r, n) where m >= n, else the left ones (m, r); r = min(rank, m, n)."""
    u, _, vh = torch.linalg.svd(gradient.float(), full_matrices=False)
    return vh[:rank] if projects_right(*gradient.shape) else u[:, :rank]


def project(gradient: Tensor, p: Tensor) -> Tensor:
    """A gradient matrix (m, n) in the projector's space: G P^T (m, r), or P^T G (r, n)."""
    return gradient @ p.T if projects_right(*gradient.shape) else p.T @ gradient


def project_back(low_rank: Tensor, p: Tensor, rows: int, cols: int) -> Tensor:
    """:func:`project`'s way back to an (m, n) = (``rows``, ``cols``) matrix: R P, or P R."""
    return low_rank @ p if projects_right(rows, cols) else p @ low_rank


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore's gradient projection on the groups that set ``rank``.

    Args:
        params: parameter groups; a group with ``rank`` (and optionally ``update_proj_gap``,
            ``scale``) is projected, every parameter in it with 2 or more dimensions.
        lr, betas, eps, weight_decay: AdamW's.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamW settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def add_param_group(self, param_group: dict) -> None:
        """torch's, and a projected group's defaults and checks."""
        if "rank" in param_group:
            param_group.setdefault("update_proj_gap", DEFAULT_GAP)
            param_group.setdefault("scale", DEFAULT_SCALE)
            if param_group["rank"] < 1 or param_group["update_proj_gap"] < 1:
                raise ValueError(f"rank and update_proj_gap must be positive, got {param_group['rank']}, "
                                 f"{param_group['update_proj_gap']}")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict) -> None:
        if "rank" in group and p.dim() >= 2:
            self._projected_update(p, group)
        else:
            self._adamw_update(p, group)

    def _projected_update(self, p: Tensor, group: dict) -> None:
        """galore-torch's step (its ``AdamW`` with a ``GaLoreProjector``), in its order of operations."""
        state = self.state[p]
        gradient = as_matrix(p.grad).float()
        if not state:
            state["step"] = 0
        if state["step"] % group["update_proj_gap"] == 0:
            state["projector"] = projector(gradient, group["rank"])
        gradient = project(gradient, state["projector"])
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(gradient), torch.zeros_like(gradient)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(gradient, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        denominator = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
        normalised = project_back(exp_avg / denominator, state["projector"], *as_matrix(p).shape) * group["scale"]
        p.add_(normalised.reshape(p.shape).to(p.dtype), alpha=-step_size)
        if group["weight_decay"]:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    def _adamw_update(self, p: Tensor, group: dict) -> None:
        """``torch.optim.AdamW``'s step (its single-tensor implementation), in its order of operations."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        lr, (beta1, beta2), gradient = group["lr"], group["betas"], p.grad
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        exp_avg.lerp_(gradient, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        step_size = lr / (1 - beta1 ** state["step"])
        denominator = (exp_avg_sq.sqrt() / (1 - beta2 ** state["step"]) ** 0.5).add_(group["eps"])
        p.addcdiv_(exp_avg, denominator, value=-step_size)

    def state_bytes(self) -> int:
        """Bytes of every tensor in the optimizer's state (moments and projectors)."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values()
                   if isinstance(t, Tensor))
