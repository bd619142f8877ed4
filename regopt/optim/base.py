"""The step skeleton shared by every regopt optimizer.

One step of any optimizer, per parameter group, is the same five stages; only stage 3 differs
between optimizers, and it lives in that optimizer's own file:

1. gather      the parameters that have a gradient, and their gradients (negated if maximize)
2. couple      coupled L2 weight decay, the classic form:    g <- g + lambda * theta
3. update      the optimizer's own rule                      theta <- theta - lr * direction(g)
   decouple    decoupled weight decay (Loshchilov & Hutter, 2019, "Decoupled Weight Decay
               Regularization"), from the weights before the update:
                                                             theta <- theta - lr * lambda * theta
               or, with decay_scaled_by_lr=False:            theta <- theta - lambda * theta
4. shrink      proximal L1 (the soft-threshold operator):    theta <- sign(theta) max(|theta| - lr * l1, 0)

Regularization (stages 2, 3-decouple and 4) is written here once, so every optimizer gets every
regularizer, with the same group options:

- ``weight_decay`` (float): the decay coefficient lambda.
- ``decoupled_weight_decay`` (bool): apply lambda in the decoupled (AdamW) form instead of the coupled
  (L2) form. Decoupled decay is applied from the weights before the update, which is the AdamW paper's
  theta_t = theta_{t-1} - lr * (update + lambda * theta_{t-1}) and torch.optim.AdamW's numbers.
- ``decay_scaled_by_lr`` (bool, default True): if False, decoupled decay is not scaled by the learning
  rate (theta <- (1 - lambda) theta), so changing or scheduling lr leaves the decay strength alone.
- ``l1`` (float): proximal L1 strength. The proximal step of lr * l1 * |theta| is the soft threshold
  with threshold lr * l1; it sets weights exactly to zero, which the subgradient l1 * sign(theta) added
  to the gradient never does. For adaptive rules (Adagrad, RMSprop, Adam, LAMB) the threshold is
  still lr * l1 with the base learning rate lr, not the per-coordinate effective rate: this is the
  prox of the L1 term under the identity metric, the common "proximal Adam" simplification.

Rules in which weight decay is part of the algorithm itself (LARS, LAMB) set
``applies_weight_decay_itself`` and read :meth:`coupled_weight_decay` in their update.
"""

from __future__ import annotations

import functools
import math
from itertools import chain
from typing import Any, Callable

import torch
from torch.optim import optimizer as torch_optimizer

__all__ = ["RegularizedOptimizer", "check_argument"]

REGULARIZATION_DEFAULTS = {
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "decay_scaled_by_lr": True,
    "l1": 0.0,
}

# torch.optim's implementation switches: accepted for drop-in compatibility, kept in the groups.
# ``fused=True`` selects regopt's fast path (regopt.optim.fast) on every optimizer.
UNSUPPORTED_SWITCHES = ("differentiable", "capturable")


def check_argument(name: str, value: Any, ok: bool, requirement: str) -> None:
    """Raise ``ValueError("Invalid <name>: <value> (<requirement>)")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} ({requirement})")


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_nonnegative(name: str, value: Any) -> None:
    ok = _is_number(value) and math.isfinite(float(value)) and float(value) >= 0.0
    check_argument(name, value, ok, "must be a finite number >= 0")


def check_positive(name: str, value: Any) -> None:
    ok = _is_number(value) and math.isfinite(float(value)) and float(value) > 0.0
    check_argument(name, value, ok, "must be a finite number > 0")


def check_unit_interval(name: str, value: Any) -> None:
    ok = _is_number(value) and 0.0 <= float(value) < 1.0
    check_argument(name, value, ok, "must be in [0, 1)")


def check_betas(betas: Any) -> None:
    ok = isinstance(betas, (tuple, list)) and len(betas) == 2
    check_argument("betas", betas, ok, "must be a pair (beta1, beta2)")
    for index, beta in enumerate(betas):
        check_unit_interval(f"betas[{index}]", beta)


def scalar_step_tensor() -> torch.Tensor:
    """The per-parameter step counter, stored as torch.optim stores it (a 0-d float tensor)."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(0.0, dtype=dtype)


def step_hooks(step: Callable[..., Any]) -> Callable[..., Any]:
    """torch.optim.Optimizer's wrapper of ``step`` (``profile_hook_step``), for less per step.

    The same contract: the global and per-optimizer step pre-hooks run first (a pre-hook may return
    new ``(args, kwargs)``), then the step, then the post-hooks, and under a profiler the step is
    labelled ``Optimizer.step#<class>.step``. torch's wrapper enters its profiler label on every
    step, profiling or not; here it is entered only while a profiler runs. That saves ~40 us per
    step on this machine, more than the compiled kernel of a small MLP's step takes
    (BENCHMARKS.md). ``hooked`` tells torch.optim.Optimizer not to wrap it a second time.
    """
    @functools.wraps(step)
    def hooked_step(*args: Any, **kwargs: Any) -> Any:
        if torch._C._autograd._profiler_enabled():
            name = f"Optimizer.step#{type(args[0]).__name__}.step"
            with torch.autograd.profiler.record_function(name):
                return run_step_hooks(step, args, kwargs)
        return run_step_hooks(step, args, kwargs)

    hooked_step.hooked = True  # type: ignore[attr-defined]
    return hooked_step


def run_step_hooks(step: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """Pre-hooks, ``step(*args, **kwargs)``, post-hooks: torch.optim's order and protocol."""
    optimizer = args[0]
    for pre_hook in chain(torch_optimizer._global_optimizer_pre_hooks.values(),
                          optimizer._optimizer_step_pre_hooks.values()):
        result = pre_hook(optimizer, args, kwargs)
        if result is not None:
            if not (isinstance(result, tuple) and len(result) == 2):
                raise RuntimeError(f"{step} must return None or a tuple of (new_args, new_kwargs), "
                                   f"but got {result}.")
            args, kwargs = result
    out = step(*args, **kwargs)
    optimizer._optimizer_step_code()
    for post_hook in chain(optimizer._optimizer_step_post_hooks.values(),
                           torch_optimizer._global_optimizer_post_hooks.values()):
        post_hook(optimizer, args, kwargs)
    return out


class RegularizedOptimizer(torch.optim.Optimizer):
    """Base class: torch.optim.Optimizer plus the regularization stages of the step skeleton.

    Subclasses implement :meth:`init_state` (the per-parameter state, with torch.optim's keys) and
    :meth:`update` (the rule, over lists of tensors with ``torch._foreach_*`` ops).
    """

    applies_weight_decay_itself = False

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        for switch in UNSUPPORTED_SWITCHES:
            check_argument(switch, defaults.get(switch), not defaults.get(switch),
                           f"{type(self).__name__} does not support {switch}=True")
        check_argument("fused", defaults.get("fused"), defaults.get("fused") in (None, True, False),
                       "must be True, False or None")
        check_nonnegative("lr", defaults["lr"])
        defaults = {**REGULARIZATION_DEFAULTS, **defaults}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating its regularization options (they may differ per group)."""
        for name in ("lr", "weight_decay", "l1"):
            if name in param_group:
                check_nonnegative(name, param_group[name])
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A state_dict saved by torch.optim lacks regopt's group options: give them their defaults.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in {**REGULARIZATION_DEFAULTS, **self.defaults}.items():
                group.setdefault(key, value)

    # -- the two methods a rule provides ---------------------------------------------------------

    def init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """The initial per-parameter state (torch.optim's keys). Empty by default."""
        return {}

    def update(self, group: dict[str, Any], params: list[torch.Tensor],
               grads: list[torch.Tensor], states: list[dict[str, Any]]) -> None:
        """Apply the rule in place to ``params``. Overridden by each optimizer."""
        raise TypeError(f"{type(self).__name__} must define update()")

    # -- the skeleton ------------------------------------------------------------------------------

    @step_hooks
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("fused") and self._step_group_fast(group):
                continue
            params, grads = self._gather(group)
            if params:
                self._step_group(group, params, grads)
        return loss

    def _step_group_fast(self, group: dict[str, Any]) -> bool:
        """The same step on the fast path (regopt.optim.fast); False: take the reference path."""
        from . import fast
        return fast.step_group(self, group)

    def _gather(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Stage 1: the parameters with a gradient, and their gradients (sign flipped if maximize)."""
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                               "(use dense gradients, e.g. nn.Embedding(sparse=False))")
        if group.get("maximize", False):
            grads = torch._foreach_neg(grads)
        return params, grads

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor],
                    grads: list[torch.Tensor]) -> None:
        states = [self._state_of(p, group) for p in params]
        decay = group["weight_decay"]
        if decay and not group["decoupled_weight_decay"] and not self.applies_weight_decay_itself:
            grads = torch._foreach_add(grads, params, alpha=decay)          # stage 2: coupled
        if decay and group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1.0 - self.decoupled_decay_rate(group))  # decoupled
        self.update(group, params, grads, states)                           # stage 3: the rule
        if group["l1"]:
            soft_threshold_(params, float(group["lr"]) * group["l1"])       # stage 4: prox L1

    def _state_of(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            state.update(self.init_state(param, group))
        return state

    @staticmethod
    def decoupled_decay_rate(group: dict[str, Any]) -> float:
        """The fraction of each weight removed by decoupled decay: lr * lambda, or lambda."""
        scale = float(group["lr"]) if group["decay_scaled_by_lr"] else 1.0
        return scale * group["weight_decay"]

    @staticmethod
    def coupled_weight_decay(group: dict[str, Any]) -> float:
        """lambda for rules that apply coupled decay themselves (0 when decay is decoupled)."""
        return 0.0 if group["decoupled_weight_decay"] else group["weight_decay"]


def soft_threshold_(params: list[torch.Tensor], threshold: float) -> None:
    """theta <- sign(theta) * max(|theta| - t, 0), in place, written as theta - clamp(theta, -t, t).

    The two forms are equal: where |theta| <= t the clamp returns theta and the result is exactly 0;
    elsewhere it returns +-t. One temporary list, no per-tensor Python loop.
    """
    clamped = torch._foreach_clamp_min(params, -threshold)
    torch._foreach_clamp_max_(clamped, threshold)
    torch._foreach_sub_(params, clamped)


def step_counts(states: list[dict[str, Any]]) -> list[float]:
    """Increment each state's ``step`` tensor and return the new counts as Python floats."""
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, 1.0)
    return [float(step) for step in steps]


def tensors(states: list[dict[str, Any]], key: str) -> list[torch.Tensor]:
    """The state tensors stored under ``key``, in parameter order."""
    return [state[key] for state in states]
