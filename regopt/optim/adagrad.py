"""Adagrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from typing import Any

import torch

from .base import (RegularizedOptimizer, check_nonnegative, check_positive, scalar_step_tensor,
                   step_counts, tensors)

__all__ = ["Adagrad"]


class Adagrad(RegularizedOptimizer):
    r"""Adagrad (Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online Learning").

    With gradient g_t, step count t, learning-rate decay d::

        lr_t    = lr / (1 + (t - 1) * d)
        s_t     = s_{t-1} + g_t^2                      (s_0 = initial_accumulator_value)
        theta_t = theta_{t-1} - lr_t * g_t / (sqrt(s_t) + eps)

    Arguments, defaults and state keys (``step``, ``sum``) are torch.optim.Adagrad's; like torch, the
    state is created when the optimizer is built. Sparse gradients raise an error.
    """

    def __init__(self, params: Any, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10,
                 foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, decay_scaled_by_lr: bool = True,
                 l1: float = 0.0) -> None:
        check_nonnegative("lr_decay", lr_decay)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("initial_accumulator_value", initial_accumulator_value)
        check_positive("eps", eps)
        check_nonnegative("l1", l1)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        decay_scaled_by_lr=decay_scaled_by_lr, l1=l1)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for param in group["params"]:
                self._state_of(param, group)

    def init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        initial = group["initial_accumulator_value"]
        return {"step": scalar_step_tensor(),
                "sum": torch.full_like(param, initial, memory_format=torch.preserve_format)}

    def update(self, group: dict[str, Any], params: list[torch.Tensor],
               grads: list[torch.Tensor], states: list[dict[str, Any]]) -> None:
        lr, lr_decay, eps = float(group["lr"]), group["lr_decay"], group["eps"]
        steps = step_counts(states)
        sums = tensors(states, "sum")
        torch._foreach_addcmul_(sums, grads, grads, value=1)                 # s += g^2
        denominators = torch._foreach_sqrt(sums)
        torch._foreach_add_(denominators, eps)                               # sqrt(s) + eps
        minus_lr_t = [-lr / (1 + (t - 1) * lr_decay) for t in steps]
        torch._foreach_addcdiv_(params, grads, denominators, minus_lr_t)     # theta -= lr_t g / den
