"""RMSprop: gradients divided by a running root mean square of recent gradients."""

from __future__ import annotations

from typing import Any

import torch

from .base import (RegularizedOptimizer, check_nonnegative, check_positive, check_unit_interval,
                   scalar_step_tensor, step_counts, tensors)

__all__ = ["RMSprop"]


class RMSprop(RegularizedOptimizer):
    r"""RMSprop (Hinton, 2012, Lecture 6e of "Neural Networks for Machine Learning"); the centered
    form is Graves (2013), "Generating Sequences With Recurrent Neural Networks".

    With gradient g_t, smoothing alpha, momentum mu::

        v_t     = alpha * v_{t-1} + (1 - alpha) * g_t^2
        centered:  gbar_t = alpha * gbar_{t-1} + (1 - alpha) * g_t,   v~_t = v_t - gbar_t^2
        otherwise: v~_t = v_t
        d_t     = g_t / (sqrt(v~_t) + eps)
        no momentum:  theta_t = theta_{t-1} - lr * d_t
        momentum:     b_t = mu * b_{t-1} + d_t,   theta_t = theta_{t-1} - lr * b_t

    Arguments, defaults and state keys (``step``, ``square_avg``, ``momentum_buffer``, ``grad_avg``)
    are torch.optim.RMSprop's.
    """

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, fused: bool | None = None,
                 decoupled_weight_decay: bool = False,
                 decay_scaled_by_lr: bool = True, l1: float = 0.0) -> None:
        check_unit_interval("alpha", alpha)
        check_positive("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("momentum", momentum)
        check_nonnegative("l1", l1)
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        decay_scaled_by_lr=decay_scaled_by_lr, l1=l1)
        super().__init__(params, defaults)

    def init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        zeros = lambda: torch.zeros_like(param, memory_format=torch.preserve_format)  # noqa: E731
        state = {"step": scalar_step_tensor(), "square_avg": zeros()}
        if group["momentum"] > 0:
            state["momentum_buffer"] = zeros()
        if group["centered"]:
            state["grad_avg"] = zeros()
        return state

    def update(self, group: dict[str, Any], params: list[torch.Tensor],
               grads: list[torch.Tensor], states: list[dict[str, Any]]) -> None:
        lr, alpha, eps, momentum = float(group["lr"]), group["alpha"], group["eps"], group["momentum"]
        step_counts(states)
        square_avgs = tensors(states, "square_avg")
        torch._foreach_mul_(square_avgs, alpha)
        torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)  # v = a v + (1-a) g^2
        if group["centered"]:
            grad_avgs = tensors(states, "grad_avg")
            torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)                # gbar = a gbar + (1-a) g
            denominators = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
            torch._foreach_sqrt_(denominators)                               # sqrt(v - gbar^2)
        else:
            denominators = torch._foreach_sqrt(square_avgs)                  # sqrt(v)
        torch._foreach_add_(denominators, eps)
        if momentum > 0:
            buffers = tensors(states, "momentum_buffer")
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_addcdiv_(buffers, grads, denominators)           # b = mu b + g / den
            torch._foreach_add_(params, buffers, alpha=-lr)                  # theta -= lr b
        else:
            torch._foreach_addcdiv_(params, grads, denominators, value=-lr)  # theta -= lr g / den
