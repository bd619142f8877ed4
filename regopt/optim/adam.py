"""Adam and AMSGrad, and AdamW (Adam with decoupled weight decay)."""

from __future__ import annotations

from typing import Any

import torch

from .base import (RegularizedOptimizer, check_betas, check_nonnegative, check_positive,
                   scalar_step_tensor, step_counts, tensors)

__all__ = ["Adam", "AdamW", "adam_direction"]


class Adam(RegularizedOptimizer):
    r"""Adam (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization"), with the AMSGrad
    variant (Reddi, Kale & Kumar, 2018, "On the Convergence of Adam and Beyond").

    With gradient g_t and step count t::

        m_t     = b1 * m_{t-1} + (1 - b1) * g_t
        v_t     = b2 * v_{t-1} + (1 - b2) * g_t^2
        AMSGrad: v_t = max(v_t^max, v_t), kept as state
        m_hat   = m_t / (1 - b1^t)
        v_hat   = v_t / (1 - b2^t)
        theta_t = theta_{t-1} - lr * m_hat / (sqrt(v_hat) + eps)

    eps is added after the square root of v_hat, as in the paper and torch.optim. Arguments,
    defaults and state keys (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) are
    torch.optim.Adam's; ``weight_decay`` is coupled L2 unless ``decoupled_weight_decay=True``.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, decay_scaled_by_lr: bool = True,
                 l1: float = 0.0) -> None:
        check_betas(betas)
        check_positive("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("l1", l1)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        decay_scaled_by_lr=decay_scaled_by_lr, l1=l1)
        super().__init__(params, defaults)

    def init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return adam_state(param, amsgrad=group["amsgrad"])

    def update(self, group: dict[str, Any], params: list[torch.Tensor],
               grads: list[torch.Tensor], states: list[dict[str, Any]]) -> None:
        lr = float(group["lr"])
        numerators, denominators, bias_corrections1 = adam_direction(group, grads, states)
        step_sizes = [-lr / bc1 for bc1 in bias_corrections1]
        torch._foreach_addcdiv_(params, numerators, denominators, step_sizes)  # -lr m_hat / den


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization").

    Adam with decoupled weight decay, applied from the weights before the Adam update::

        theta_t = theta_{t-1} - lr * (m_hat / (sqrt(v_hat) + eps) + lambda * theta_{t-1})

    Same as ``Adam(..., decoupled_weight_decay=True)``; the default ``weight_decay`` is 1e-2, as in
    torch.optim.AdamW.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = True, decay_scaled_by_lr: bool = True,
                 l1: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay,
                         decay_scaled_by_lr=decay_scaled_by_lr, l1=l1)


def adam_state(param: torch.Tensor, amsgrad: bool = False) -> dict[str, Any]:
    """Adam's initial state: a step count and zero first and second moments."""
    zeros = lambda: torch.zeros_like(param, memory_format=torch.preserve_format)  # noqa: E731
    state = {"step": scalar_step_tensor(), "exp_avg": zeros(), "exp_avg_sq": zeros()}
    if amsgrad:
        state["max_exp_avg_sq"] = zeros()
    return state


def adam_direction(group: dict[str, Any], grads: list[torch.Tensor],
                   states: list[dict[str, Any]]
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    """Update Adam's moments in place; return (m_t, sqrt(v_hat) + eps, 1 - b1^t) per tensor.

    The Adam direction is m_hat / (sqrt(v_hat) + eps) = (m_t / (1 - b1^t)) / denominator. Shared
    by Adam and LAMB, which differ only in what they do with it.
    """
    beta1, beta2 = group["betas"]
    steps = step_counts(states)
    exp_avgs, exp_avg_sqs = tensors(states, "exp_avg"), tensors(states, "exp_avg_sq")
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)                 # m = b1 m + (1 - b1) g
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)   # v = b2 v + (1 - b2) g^2
    second_moments = exp_avg_sqs
    if group.get("amsgrad", False):
        second_moments = tensors(states, "max_exp_avg_sq")
        torch._foreach_maximum_(second_moments, exp_avg_sqs)         # v_max = max(v_max, v)
    bias_corrections1 = [1 - beta1 ** t for t in steps]
    bias_corrections2_sqrt = [(1 - beta2 ** t) ** 0.5 for t in steps]
    denominators = torch._foreach_sqrt(second_moments)
    torch._foreach_div_(denominators, bias_corrections2_sqrt)        # sqrt(v_hat)
    torch._foreach_add_(denominators, group["eps"])                  # sqrt(v_hat) + eps
    return exp_avgs, denominators, bias_corrections1
