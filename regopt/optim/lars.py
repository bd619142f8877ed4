"""LARS: layer-wise adaptive rate scaling for large-batch SGD."""

from __future__ import annotations

from typing import Any

import torch

from .base import RegularizedOptimizer, check_nonnegative, check_positive, tensors

__all__ = ["LARS", "trust_ratios"]


class LARS(RegularizedOptimizer):
    r"""LARS (You, Gitman & Ginsburg, 2017, "Large Batch Training of Convolutional Networks").

    Algorithm 1 of the paper, per tensor (layer) w with gradient g, weight decay beta, trust
    coefficient eta, momentum m and global learning rate lr::

        local_lr = eta * ||w|| / (||g|| + beta * ||w|| + eps)     (1 if ||w|| = 0 or ||g|| = 0)
        v_t      = m * v_{t-1} + lr * local_lr * (g + beta * w)
        w_t      = w_{t-1} - v_t

    With ``exclude_1d=True`` (the default), tensors with fewer than 2 dimensions (biases and
    normalization parameters) get local_lr = 1 and no weight decay, i.e. plain momentum SGD, as in
    the large-batch training recipes that followed the paper (You et al., 2018; Goyal et al., 2017).
    State key: ``momentum_buffer`` (holds v, which already includes the learning rate).
    """

    applies_weight_decay_itself = True

    def __init__(self, params: Any, lr: float = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 1e-3, eps: float = 1e-8,
                 exclude_1d: bool = True, *, maximize: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, decay_scaled_by_lr: bool = True,
                 l1: float = 0.0) -> None:
        check_nonnegative("momentum", momentum)
        check_nonnegative("weight_decay", weight_decay)
        check_positive("trust_coefficient", trust_coefficient)
        check_nonnegative("eps", eps)
        check_nonnegative("l1", l1)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, exclude_1d=exclude_1d,
                        maximize=maximize, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        decay_scaled_by_lr=decay_scaled_by_lr, l1=l1)
        super().__init__(params, defaults)

    def init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def update(self, group: dict[str, Any], params: list[torch.Tensor],
               grads: list[torch.Tensor], states: list[dict[str, Any]]) -> None:
        adapted = adapted_mask(params, group["exclude_1d"])
        decay = self.coupled_weight_decay(group)
        decays = [decay if a else 0.0 for a in adapted]
        grad_norms = torch._foreach_norm(grads)
        weight_norms = torch._foreach_norm(params)
        denominators = [g + d * w for g, w, d in zip(grad_norms, weight_norms, decays)]
        local_lrs = trust_ratios(weight_norms, denominators, adapted,
                                 coefficient=group["trust_coefficient"], eps=group["eps"])
        directions = decayed_directions(grads, params, decays)              # g + beta w
        buffers = tensors(states, "momentum_buffer")
        torch._foreach_mul_(buffers, group["momentum"])
        scales = [float(group["lr"]) * r for r in local_lrs]
        torch._foreach_mul_(directions, scales)                              # lr * local_lr * (.)
        torch._foreach_add_(buffers, directions)                             # v = m v + (.)
        torch._foreach_sub_(params, buffers)                                 # w -= v


def adapted_mask(params: list[torch.Tensor], exclude_1d: bool) -> list[bool]:
    """Which tensors get the layer-wise trust ratio (all, or only those with >= 2 dimensions)."""
    return [not exclude_1d or p.ndim >= 2 for p in params]


def decayed_directions(grads: list[torch.Tensor], params: list[torch.Tensor],
                       decays: list[float]) -> list[torch.Tensor]:
    """New tensors u + beta * w, with beta per tensor (0 for excluded tensors)."""
    if not any(decays):
        return torch._foreach_mul(grads, 1.0)
    directions = torch._foreach_mul(params, decays)
    torch._foreach_add_(directions, grads)
    return directions


def trust_ratios(weight_norms: list[torch.Tensor], denominators: list[torch.Tensor],
                 adapted: list[bool], coefficient: float = 1.0, eps: float = 0.0) -> list[float]:
    """coefficient * ||w|| / (denominator + eps) per tensor; 1 where either norm is 0 or excluded.

    Computed over stacked norms, with one host sync per group.
    """
    weight_norm = torch.stack(weight_norms)
    denominator = torch.stack(denominators)
    ratio = coefficient * weight_norm / (denominator + eps)
    usable = (weight_norm > 0) & (denominator > 0) & torch.tensor(adapted)
    return torch.where(usable, ratio, torch.ones_like(ratio)).tolist()
