"""LAMB: layer-wise adaptive rates on top of Adam, for large-batch training."""

from __future__ import annotations

from typing import Any

import torch

from .adam import adam_direction, adam_state
from .base import RegularizedOptimizer, check_betas, check_nonnegative, check_positive
from .lars import adapted_mask, decayed_directions, trust_ratios

__all__ = ["LAMB"]


class LAMB(RegularizedOptimizer):
    r"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", Algorithm 2), with phi the identity.

    Per tensor (layer) w with gradient g, weight decay lambda, step count t::

        m_t = b1 * m_{t-1} + (1 - b1) * g,      v_t = b2 * v_{t-1} + (1 - b2) * g^2
        m_hat = m_t / (1 - b1^t),               v_hat = v_t / (1 - b2^t)
        r_t = m_hat / (sqrt(v_hat) + eps)
        u_t = r_t + lambda * w
        w_t = w_{t-1} - lr * (||w|| / ||u_t||) * u_t      (ratio 1 if ||w|| = 0 or ||u_t|| = 0)

    With ``exclude_1d=True`` (the default), tensors with fewer than 2 dimensions (biases, layer and
    batch norm parameters) get ratio 1 and no weight decay, as in the paper's BERT setup. State keys
    are Adam's (``step``, ``exp_avg``, ``exp_avg_sq``).
    """

    applies_weight_decay_itself = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, exclude_1d: bool = True, *,
                 maximize: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, decay_scaled_by_lr: bool = True,
                 l1: float = 0.0) -> None:
        check_betas(betas)
        check_positive("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("l1", l1)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        exclude_1d=exclude_1d, maximize=maximize, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        decay_scaled_by_lr=decay_scaled_by_lr, l1=l1)
        super().__init__(params, defaults)

    def init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return adam_state(param)

    def update(self, group: dict[str, Any], params: list[torch.Tensor],
               grads: list[torch.Tensor], states: list[dict[str, Any]]) -> None:
        numerators, denominators, bias_corrections1 = adam_direction(group, grads, states)
        adam_steps = torch._foreach_div(numerators, denominators)
        torch._foreach_div_(adam_steps, bias_corrections1)                 # r = m_hat / den
        adapted = adapted_mask(params, group["exclude_1d"])
        decay = self.coupled_weight_decay(group)
        updates = decayed_directions(adam_steps, params,
                                     [decay if a else 0.0 for a in adapted])  # u = r + lambda w
        ratios = trust_ratios(torch._foreach_norm(params), torch._foreach_norm(updates), adapted)
        torch._foreach_mul_(updates, [-float(group["lr"]) * r for r in ratios])
        torch._foreach_add_(params, updates)                               # w -= lr ratio u
