"""Stochastic gradient descent, with heavy-ball momentum or Nesterov momentum.

Full-batch gradient descent, stochastic gradient descent and mini-batch SGD are one rule; they differ
only in how many samples the gradient g is averaged over, which the training loop decides.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RegularizedOptimizer, check_argument, check_nonnegative, tensors

__all__ = ["SGD"]


class SGD(RegularizedOptimizer):
    r"""SGD with optional momentum (Polyak, 1964) and Nesterov momentum (Sutskever et al., 2013).

    With gradient g_t (after maximize and coupled weight decay), momentum mu, dampening tau::

        plain:     theta_t = theta_{t-1} - lr * g_t
        momentum:  b_1 = g_1,  b_t = mu * b_{t-1} + (1 - tau) * g_t
                   heavy ball:  theta_t = theta_{t-1} - lr * b_t
                   Nesterov:    theta_t = theta_{t-1} - lr * (g_t + mu * b_t)

    Arguments, defaults and the state key ``momentum_buffer`` are torch.optim.SGD's; the
    regularization options (``decoupled_weight_decay``, ``decay_scaled_by_lr``, ``l1``) are described
    in :mod:`regopt.optim.base`.
    """

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False,
                 decay_scaled_by_lr: bool = True, l1: float = 0.0) -> None:
        check_nonnegative("momentum", momentum)
        check_nonnegative("dampening", dampening)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("l1", l1)
        check_argument("nesterov", nesterov, not nesterov or (momentum > 0 and dampening == 0),
                       "Nesterov momentum requires momentum > 0 and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        decay_scaled_by_lr=decay_scaled_by_lr, l1=l1)
        super().__init__(params, defaults)

    def update(self, group: dict[str, Any], params: list[torch.Tensor],
               grads: list[torch.Tensor], states: list[dict[str, Any]]) -> None:
        lr, momentum = float(group["lr"]), group["momentum"]
        if momentum != 0:
            buffers = self._momentum_buffers(grads, states, momentum, group["dampening"])
            if group["nesterov"]:
                grads = torch._foreach_add(grads, buffers, alpha=momentum)   # g + mu * b
            else:
                grads = buffers                                              # b
        torch._foreach_add_(params, grads, alpha=-lr)                        # theta -= lr * d

    @staticmethod
    def _momentum_buffers(grads: list[torch.Tensor], states: list[dict[str, Any]],
                          momentum: float, dampening: float) -> list[torch.Tensor]:
        """b_t = mu * b_{t-1} + (1 - tau) * g_t, with b_1 = g_1 (torch.optim's convention)."""
        if all("momentum_buffer" in state for state in states):
            buffers = tensors(states, "momentum_buffer")
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads, alpha=1 - dampening)
            return buffers
        buffers = []
        for grad, state in zip(grads, states):   # first step: only here, once per tensor
            if "momentum_buffer" in state:
                state["momentum_buffer"].mul_(momentum).add_(grad, alpha=1 - dampening)
            else:
                state["momentum_buffer"] = torch.clone(grad).detach()
            buffers.append(state["momentum_buffer"])
        return buffers
