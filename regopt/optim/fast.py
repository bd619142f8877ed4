"""The fast path: one pass over memory per optimizer step, for every rule and every regularizer.

Switch it on with ``fused=True`` on any regopt optimizer (or in one parameter group)::

    optimizer = regopt.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2,
                                  decoupled_weight_decay=True, l1=1e-5, fused=True)

The reference path (``fused`` unset, the default) stays the readable ground truth; the tests hold
the fast path to it within float tolerance, for every optimizer and regularizer option.

Why it is fast (numbers from bench/bench_optim.py)
--------------------------------------------------
A reference step is a chain of ``torch._foreach_*`` calls: every stage (decay, each moment, the
division, prox L1) reads and writes every tensor again, and several allocate temporaries. Here
each rule is written once more as a function of plain tensors, the per-element formula of its
docstring, and the regularization stages around it are written once, in :func:`regularized`.
TorchInductor turns that function into one C++ loop that reads each parameter, gradient and state
element once and writes it once. LARS and LAMB need a norm per tensor before they can update it;
they take one more read pass, the minimum for those rules, compiled as a kernel of its own that
returns the tensor's step size (so the update's loop does not recompute it per element).

- Compiling: the function is traced by ``make_fx`` over 1-D tensors of symbolic length and compiled
  by ``torch._inductor.compile``, once per rule variant and dtype (for large groups never per
  model or tensor shape), and cached on disk by Inductor's FX graph cache: a later process pays
  ~0.3 s per kernel plus Inductor's start-up (~3 s, once). Calling the compiled function costs
  ~10 us; through ``torch.compile`` (TorchDynamo's frame evaluation, guards and wrappers) it cost
  25-35 us here, as much as a whole fused Adam step of a small MLP. The learning rate, every hyperparameter and
  the step-dependent bias corrections travel in a tensor ``s`` of scalars (in the parameters'
  dtype, rounded as torch rounds a Python scalar for such tensors), so lr and weight-decay
  schedules never recompile: no TorchDynamo, hence no guards, in the loop.
- Layout, small groups (:class:`GroupPlan`): a group of at most ``GROUP_KERNEL_MAX_TENSORS``
  tensors and ``GROUP_KERNEL_MAX_NUMEL`` elements (a small model: the classic MLP has 6 and 235k)
  gets one kernel per pass compiled for its shapes, which updates every tensor where it lives in
  one call. Its loops too short to share run on one thread, instead of opening a parallel region
  per tensor. Compiled once per model shape and thread count, then cached on disk like the rest.
- Layout, large groups (:class:`ChunkedPlan`): a tensor of at least ``SMALL_TENSOR`` elements is
  updated where it lives (the parameter, its ``.grad`` and its state tensors, no copies), by a
  kernel compiled for any length. The smaller tensors (biases, norm weights, small layers) are
  packed into one flat chunk, so that they cost one kernel call together: their state lives in
  flat buffers (``optimizer.state[p]`` holds views of them, with the reference's keys and shapes,
  so ``state_dict()`` is unchanged) and their parameters and gradients are copied in and out
  around the call, which is cheap at that size. Packing large tensors would cost 8 more bytes per
  parameter per step for the gradient copy (an Adam step moves 28), more than the call it saves.
  The step counts of a group are views of one tensor too. Large tensors that share their scalars
  go STEP_BUCKET per call (:func:`bucket_kernels`), which saves the Python and wrapper cost of a
  call per tensor (~15 us here): tensors of one length through a kernel that runs one loop over
  all of them (:func:`equal_length_buckets`), the rest through a kernel for any lengths. Rules of
  two passes (LARS, LAMB) put fewer large tensors to a call, as many as the second pass finds in
  cache after the first read them (:func:`bucket_size`), down to one.
- Vector width: kernels that widen float32 to float64 (the norms) are compiled with 256-bit
  vectors on AVX-512 CPUs (:func:`widening_options`); the rest with the widest.
- torch's own fused kernels (``torch._fused_adam_``, ``_fused_adamw_``, ``_fused_sgd_``,
  ``_fused_adagrad_``) run the step where regopt's formula is exactly theirs (no ``l1``; decay
  coupled, or decoupled and scaled by lr): on large tensors they are as fast as the compiled loop,
  and on small models they cost less per call. ``USE_TORCH_KERNELS = False`` compiles those too.
- Gradient clipping folds into the step: :func:`clipped_step` reads the gradients once for the
  global norm and hands the clipping factor to the kernel, instead of writing scaled gradients.
  Where one small group (GroupPlan) of a single-pass rule holds every gradient, its kernel
  computes the norm and the factor itself: clipping then costs no call of its own.
- Reductions read several streams: a norm (the global gradient norm, LARS's per-tensor norms)
  reads its tensor as READ_STREAMS segments side by side (:func:`segments`). On this machine one
  stream is read at about half the in-place bandwidth; four come within 1.2x of the bound, which
  made the global norm 2x faster than torch's ``_foreach_norm`` (BENCHMARKS.md).

Where compilation is unavailable (no C++ compiler, a dtype other than float32 and float64, a group
spread over devices), the fast path warns once per process and takes the reference path. A step
whose gradients are sparse, not contiguous or of another dtype than their parameter takes the
reference path for that group, silently (the reference path raises the proper error for sparse
gradients).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .adagrad import Adagrad
from .adam import Adam
from .base import RegularizedOptimizer
from .lamb import LAMB
from .lars import LARS
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["clipped_step", "engines", "compiled_kernels", "workspace_bytes", "SMALL_TENSOR",
           "USE_TORCH_KERNELS"]

SMALL_TENSOR = 16384
"""Tensors with fewer elements than this are packed into one flat chunk per group."""

USE_TORCH_KERNELS = True
"""Use torch's fused kernels where their formula is exactly regopt's (see the module docstring)."""

COMPILED_DTYPES = (torch.float32, torch.float64)

# -- the scalars of one step: a tensor, so that no value is baked into the compiled code -------

GRAD_FACTOR, COUPLED_DECAY, KEEP, THRESHOLD, LR = range(5)   # shared; each rule appends its own


def regularization_scalars(optimizer: Any, group: dict[str, Any],
                           grad_factor: float) -> list[float]:
    """The scalars of the skeleton's stages (regopt.optim.base), then lr.

    grad factor: -1 for maximize, times the gradient-clipping factor; coupled decay: lambda, or 0
    for rules that apply weight decay themselves (LARS, LAMB) or when decay is decoupled; keep: 1
    minus the decoupled decay rate; threshold: lr * l1, the prox-L1 step.
    """
    lr, decay = float(group["lr"]), group["weight_decay"]
    decoupled = bool(decay) and group["decoupled_weight_decay"]
    coupled = 0.0 if decoupled or optimizer.applies_weight_decay_itself else decay
    keep = 1.0 - optimizer.decoupled_decay_rate(group) if decoupled else 1.0
    sign = -1.0 if group.get("maximize", False) else 1.0
    return [sign * grad_factor, coupled, keep, lr * group["l1"], lr]


# -- the regularization stages, written once around every rule -------------------------------------

def soft_threshold(theta: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """sign(theta) max(|theta| - t, 0), as theta - clamp(theta, -t, t), as the reference does."""
    return theta - theta.clamp(-threshold, threshold)


def regularized(rule: Callable[..., torch.Tensor], prox: bool, coupled: bool,
                decoupled: bool) -> Callable[..., None]:
    """A rule's per-element update inside the skeleton's stages, as one function of plain tensors.

    g     <- factor g + lambda theta        (maximize, clipping; coupled L2, compiled in only when
                                             ``coupled``)
    theta <- keep theta                     (decoupled decay, from the weights before the update;
                                             only when ``decoupled``)
    theta <- rule(theta, g, state)          (the rule; it writes its state in place)
    theta <- soft_threshold(theta, lr l1)   (prox L1; compiled in only when l1 > 0: in cache the
                                             clamp costs a third of an Adam step)

    A stage that is off is left out, as the reference path leaves it out, rather than run with a
    neutral scalar: the loop is partly compute-bound here, and the coupled term alone (a multiply
    and an add per element) cost 4-5% of an Adam step with prox L1 on 25M parameters.
    """
    def kernel(p: torch.Tensor, g: torch.Tensor, *state_and_scalars: torch.Tensor) -> None:
        *state, s = state_and_scalars
        g = g * s[GRAD_FACTOR]
        if coupled:
            g = g + s[COUPLED_DECAY] * p
        finish(p, rule(p * s[KEEP] if decoupled else p, g, state, s), s, prox)
    kernel.__name__ = rule.__name__ + "_l2" * coupled + "_decoupled" * decoupled + "_l1" * prox
    return kernel


def finish(p: torch.Tensor, theta: torch.Tensor, s: torch.Tensor, prox: bool) -> None:
    """Write the updated weights, through the soft threshold when prox L1 is on."""
    p.copy_(soft_threshold(theta, s[THRESHOLD]) if prox else theta)


# -- the rules, per element, with the symbols of each optimizer's docstring ------------------------

def sgd(theta, g, state, s):
    """theta - lr g."""
    return theta - s[LR] * g


def sgd_momentum(theta, g, state, s, nesterov=False):
    """b = mu b + (1 - tau) g, with b_1 = g (the first step passes mu = 0 and 1 - tau = 1);
    heavy ball: theta - lr b; Nesterov: theta - lr (g + mu b)."""
    (b,) = state
    mu_now, one_minus_tau_now, mu = s[5], s[6], s[7]
    b_new = b * mu_now + one_minus_tau_now * g
    b.copy_(b_new)
    direction = g + mu * b_new if nesterov else b_new
    return theta - s[LR] * direction


def sgd_nesterov(theta, g, state, s):
    return sgd_momentum(theta, g, state, s, nesterov=True)


def adam_moments(g, m, v, s, v_max=None):
    """m = b1 m + (1 - b1) g (torch's lerp), v = b2 v + (1 - b2) g^2, AMSGrad: v = max(v_max, v).

    Returns m_t and sqrt(v_hat) + eps. Scalars: s[5] = 1 - b1, s[6] = b2, s[7] = 1 - b2,
    s[9] = 1 / sqrt(1 - b2^t), s[10] = eps.
    """
    m_new = m + s[5] * (g - m)
    v_new = v * s[6] + s[7] * (g * g)
    m.copy_(m_new)
    v.copy_(v_new)
    if v_max is not None:
        v_new = torch.maximum(v_max, v_new)
        v_max.copy_(v_new)
    return m_new, v_new.sqrt() * s[9] + s[10]


def adam(theta, g, state, s):
    """theta - lr m_hat / (sqrt(v_hat) + eps), m_hat = m_t / (1 - b1^t); s[8] = lr / (1 - b1^t)."""
    m, v = state
    m_new, denominator = adam_moments(g, m, v, s)
    return theta - s[8] * (m_new / denominator)


def amsgrad(theta, g, state, s):
    m, v, v_max = state
    m_new, denominator = adam_moments(g, m, v, s, v_max=v_max)
    return theta - s[8] * (m_new / denominator)


def adagrad(theta, g, state, s):
    """s_t = s + g^2, theta - lr_t g / (sqrt(s_t) + eps), with s[5] = lr_t = lr / (1 + (t-1) d)."""
    (total,) = state
    total_new = total + g * g
    total.copy_(total_new)
    return theta - s[5] * (g / (total_new.sqrt() + s[6]))


def rmsprop_rule(centered: bool, momentum: bool) -> Callable[..., torch.Tensor]:
    """v = a v + (1-a) g^2; centered: gbar = a gbar + (1-a) g, v~ = v - gbar^2;
    d = g / (sqrt(v~) + eps); theta - lr d, or with momentum b = mu b + d, theta - lr b.

    State: square_avg[, momentum_buffer][, grad_avg]; s[5:9] = a, 1 - a, eps, mu."""
    def rmsprop(theta, g, state, s):
        square_avg = state[0]
        v_new = square_avg * s[5] + s[6] * (g * g)
        square_avg.copy_(v_new)
        if centered:
            grad_avg = state[-1]
            gbar_new = grad_avg + s[6] * (g - grad_avg)
            grad_avg.copy_(gbar_new)
            v_new = v_new - gbar_new * gbar_new
        direction = g / (v_new.sqrt() + s[7])
        if momentum:
            b = state[1]
            direction = b * s[8] + direction
            b.copy_(direction)
        return theta - s[LR] * direction
    rmsprop.__name__ = "rmsprop" + "_centered" * centered + "_momentum" * momentum
    return rmsprop


READ_STREAMS = 8
"""A reduction reads its tensor as this many segments side by side (see :func:`sum_of_squares`)."""


def segments(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """1-D tensors of one length n cut alike into READ_STREAMS segments of q = n // READ_STREAMS
    elements, and the tail past READ_STREAMS q: a pass written over these reads each tensor as
    READ_STREAMS streams side by side.

    A plain reduction reads one stream per thread, and on this machine one stream is read at half
    the in-place bandwidth of bench_optim.py's probe: the memory system keeps more reads in flight
    for more streams. On one machine here four streams read 25M floats in 2.4 ms against 3.7 ms
    for one (a 128 MB add_ took 5.5 ms in the same run); on another (AVX-512), eight read them in
    2.7-3.2 ms against 4.5-4.9 ms for four and 10 ms for one. Separate segments are also separate
    accumulators, so the additions do not wait on each other.

    Where the length is symbolic (a kernel compiled for any length), it must be a multiple of
    READ_STREAMS when the kernel runs: Inductor (torch 2.13) miscompiles a reduction over the tail
    whose length is n mod READ_STREAMS (it returned NaN). Callers cut the tail off
    (:func:`global_norm`) or take a one-stream kernel for such lengths (:class:`ChunkedPlan`).
    """
    q = tensors[0].shape[0] // READ_STREAMS
    bounds = [(i * q, (i + 1) * q) for i in range(READ_STREAMS)] + [(READ_STREAMS * q, None)]
    return [tuple(t[start:stop] for t in tensors) for start, stop in bounds]


def squares(x: torch.Tensor) -> torch.Tensor:
    """sum_i x_i^2, accumulated in float64 (0-d). float64: Inductor sums float32 through a
    cascade-summation helper that keeps its partial sums in memory; float64 accumulators stay in
    registers and are at least as exact."""
    x = x.to(torch.float64)
    return (x * x).sum()


def sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """sum_i x_i^2 of a 1-D tensor, in float64, read as READ_STREAMS streams (:func:`segments`).

    The segments' squares are added element by element and then reduced, which Inductor compiles
    to one loop over the streams; a reduction per segment became a loop per segment (one stream at
    a time, 1.5x slower)."""
    *body, (tail,) = segments(x)
    wide = [segment.to(torch.float64) for (segment,) in body]
    return sum(segment * segment for segment in wide).sum() + squares(tail)


def root(sum_squares: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A norm from its sum of squares, in ``like``'s dtype."""
    return sum_squares.sqrt().to(like.dtype)


def trust_ratio(weight_norm, denominator, adapted, coefficient, eps):
    """coefficient ||w|| / (denominator + eps); 1 where a norm is 0 or the tensor is excluded."""
    usable = (weight_norm > 0) & (denominator > 0) & (adapted > 0.5)
    ratio = coefficient * weight_norm / (denominator + eps)
    return torch.where(usable, ratio, torch.ones_like(ratio))


def lars_step_size(one_stream: bool = False) -> Callable[..., tuple[torch.Tensor]]:
    """LARS, first pass: lr local_lr, local_lr = eta ||w|| / (||g|| + beta ||w|| + eps), 0-d.

    A pass of its own, so that the scalar is computed once per tensor: fused into the update's
    loop, Inductor evaluated its square roots and division in every iteration, which made the
    loop compute-bound. Its norms read each tensor as several streams (:func:`sum_of_squares`);
    ``one_stream``: as one (:func:`squares`), for lengths that READ_STREAMS does not divide.
    s[5:10] = m, beta (0 for excluded tensors), eta, eps, adapted (1 or 0).
    """
    reduce = squares if one_stream else sum_of_squares

    def step_size(p, g, v, s):
        theta, g = p * s[KEEP], g * s[GRAD_FACTOR]
        weight_norm = root(reduce(theta), p)
        local_lr = trust_ratio(weight_norm, root(reduce(g), p) + s[6] * weight_norm,
                               s[9], s[7], s[8])
        return (s[LR] * local_lr,)
    step_size.__name__ = "lars_step_size" + "_one_stream" * one_stream
    return step_size


def lars_apply(prox: bool) -> Callable[..., None]:
    """LARS, second pass: v = m v + lr local_lr (g + beta w); w - v; then prox L1."""
    def apply(p, g, v, s, step_size):
        theta, g = p * s[KEEP], g * s[GRAD_FACTOR]
        v_new = v * s[5] + (g + s[6] * theta) * step_size
        v.copy_(v_new)
        finish(p, theta - v_new, s, prox)
    apply.__name__ = "lars_apply" + "_l1" * prox
    return apply


def lamb_update(theta, m, v, s):
    """u = m_hat / (sqrt(v_hat) + eps) + lambda w; s[8] = 1 / (1 - b1^t), s[11] = lambda."""
    return (m / (v.sqrt() * s[9] + s[10])) * s[8] + s[11] * theta


def lamb_moments(p, g, m, v, s):
    """LAMB, first pass: update the moments; return lr ||w|| / ||u|| of this tensor (0-d; 1 for
    lr where a norm is 0 or the tensor is excluded, s[12] = adapted).

    Its norms read one stream (:func:`squares`, not :func:`segments`): the pass also writes the
    moments, and written over segments, Inductor copied whole tensors for the segments' writes
    (7x slower)."""
    theta = p * s[KEEP]
    one_minus_b1, b2, one_minus_b2 = s[5], s[6], s[7]
    g = g * s[GRAD_FACTOR]
    m_new = m + one_minus_b1 * (g - m)
    v_new = v * b2 + one_minus_b2 * (g * g)
    u = lamb_update(theta, m_new, v_new, s)
    ratio = trust_ratio(root(squares(theta), p), root(squares(u), p), s[12], 1.0, 0.0)
    m.copy_(m_new)
    v.copy_(v_new)
    return (s[LR] * ratio,)


def lamb_apply(prox: bool) -> Callable[..., None]:
    """LAMB, second pass: w - lr (||w|| / ||u||) u, then prox L1."""
    def apply(p, g, m, v, s, step_size):
        theta = p * s[KEEP]
        finish(p, theta - step_size * lamb_update(theta, m, v, s), s, prox)
    apply.__name__ = "lamb_apply" + "_l1" * prox
    return apply


# -- each optimizer's rule: state keys, kernels and scalars ----------------------------------------

@dataclass(frozen=True)
class Rule:
    """How the fast path runs one optimizer with one group's options."""

    name: str
    state_keys: tuple[str, ...]                  # state tensors passed to the kernels, in order
    passes: tuple[tuple[Callable, tuple[str, ...]], ...]   # (function, argument kinds) per pass
    counts_steps: bool                           # the state holds a "step" tensor
    scalars: Callable[[dict[str, Any], int, "ChunkKey"], list[float]]
    own_chunk: Callable[[torch.Tensor], bool] = lambda param: False   # needs a per-tensor ratio
    one_stream_passes: tuple | None = None   # for lengths the passes' segments do not divide


@dataclass(frozen=True)
class ChunkKey:
    """What the scalars of a chunk depend on besides the group: its step, first step, ratio."""

    step: int = 0
    first: bool = False
    adapted: bool = False


def one_pass(function: Callable, n_state: int,
             group: dict[str, Any]) -> tuple[tuple[Callable, tuple[str, ...]], ...]:
    kinds = ("vec", "vec") + ("vec",) * n_state + ("scalars",)
    decay, decoupled = bool(group["weight_decay"]), bool(group["decoupled_weight_decay"])
    return ((regularized(function, prox=bool(group["l1"]), coupled=decay and not decoupled,
                         decoupled=decay and decoupled), kinds),)


STRUCTURAL_OPTIONS = ("l1", "momentum", "nesterov", "amsgrad", "centered", "exclude_1d",
                      "weight_decay", "decoupled_weight_decay", "decay_scaled_by_lr")
"""Group options that choose kernels or layouts: a plan is rebuilt when one of them changes."""


def structure(group: dict[str, Any]) -> tuple:
    return tuple([bool(group.get(option)) for option in STRUCTURAL_OPTIONS])


def rule_for(optimizer: Any, group: dict[str, Any]) -> Rule | None:
    """The fast rule of a regopt optimizer with these group options (None: none)."""
    if isinstance(optimizer, SGD):
        return sgd_rule(group)
    if isinstance(optimizer, Adam):
        return adam_rule(group)
    if isinstance(optimizer, Adagrad):
        return Rule("adagrad", ("sum",), one_pass(adagrad, 1, group), True, adagrad_scalars)
    if isinstance(optimizer, RMSprop):
        return rmsprop_rule_for(group)
    if isinstance(optimizer, LARS):
        return lars_rule(optimizer, group)
    if isinstance(optimizer, LAMB):
        return lamb_rule(optimizer, group)
    return None


def sgd_rule(group: dict[str, Any]) -> Rule:
    if group["momentum"] == 0:
        return Rule("sgd", (), one_pass(sgd, 0, group), False, lambda group, t, key: [])
    function = sgd_nesterov if group["nesterov"] else sgd_momentum

    def scalars(group: dict[str, Any], t: int, key: ChunkKey) -> list[float]:
        mu, tau = group["momentum"], group["dampening"]
        return [0.0, 1.0, mu] if key.first else [mu, 1.0 - tau, mu]
    return Rule(function.__name__, ("momentum_buffer",), one_pass(function, 1, group), False,
                scalars)


def adam_scalars(group: dict[str, Any], t: int, key: ChunkKey) -> list[float]:
    beta1, beta2 = group["betas"]
    bias_correction1, bias_correction2 = 1 - beta1 ** t, 1 - beta2 ** t
    return [1 - beta1, beta2, 1 - beta2, float(group["lr"]) / bias_correction1,
            1 / bias_correction2 ** 0.5, group["eps"]]


def adam_rule(group: dict[str, Any]) -> Rule:
    if group["amsgrad"]:
        return Rule("amsgrad", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                    one_pass(amsgrad, 3, group), True, adam_scalars)
    return Rule("adam", ("exp_avg", "exp_avg_sq"), one_pass(adam, 2, group), True, adam_scalars)


def adagrad_scalars(group: dict[str, Any], t: int, key: ChunkKey) -> list[float]:
    return [float(group["lr"]) / (1 + (t - 1) * group["lr_decay"]), group["eps"]]


def rmsprop_rule_for(group: dict[str, Any]) -> Rule:
    centered, momentum = bool(group["centered"]), group["momentum"] > 0
    keys = ("square_avg",) + ("momentum_buffer",) * momentum + ("grad_avg",) * centered
    function = rmsprop_rule(centered, momentum)

    def scalars(group: dict[str, Any], t: int, key: ChunkKey) -> list[float]:
        alpha = group["alpha"]
        return [alpha, 1 - alpha, group["eps"], group["momentum"]]
    return Rule(function.__name__, keys, one_pass(function, len(keys), group), True, scalars)


def adapted(param: torch.Tensor, group: dict[str, Any]) -> bool:
    """LARS/LAMB: whether the tensor gets a trust ratio (regopt.optim.lars.adapted_mask)."""
    return not group["exclude_1d"] or param.ndim >= 2


def lars_rule(optimizer: Any, group: dict[str, Any]) -> Rule:
    def scalars(group: dict[str, Any], t: int, key: ChunkKey) -> list[float]:
        beta = optimizer.coupled_weight_decay(group) if key.adapted else 0.0
        return [group["momentum"], beta, group["trust_coefficient"], group["eps"],
                float(key.adapted)]
    def passes(one_stream: bool) -> tuple:
        return ((lars_step_size(one_stream), ("vec", "vec", "vec", "scalars")),
                (lars_apply(bool(group["l1"])), ("vec", "vec", "vec", "scalars", "sum")))
    return Rule("lars", ("momentum_buffer",), passes(False), False, scalars,
                own_chunk=lambda param: adapted(param, group), one_stream_passes=passes(True))


def lamb_rule(optimizer: Any, group: dict[str, Any]) -> Rule:
    def scalars(group: dict[str, Any], t: int, key: ChunkKey) -> list[float]:
        beta1, beta2 = group["betas"]
        decay = optimizer.coupled_weight_decay(group) if key.adapted else 0.0
        return [1 - beta1, beta2, 1 - beta2, 1 / (1 - beta1 ** t), 1 / (1 - beta2 ** t) ** 0.5,
                group["eps"], decay, float(key.adapted)]
    passes = ((lamb_moments, ("vec", "vec", "vec", "vec", "scalars")),
              (lamb_apply(bool(group["l1"])), ("vec", "vec", "vec", "vec", "scalars", "sum")))
    return Rule("lamb", ("exp_avg", "exp_avg_sq"), passes, True, scalars,
                own_chunk=lambda param: adapted(param, group))


# -- compiling: once per (function, dtype, device type), cached on disk by Inductor ---------------

INDUCTOR_OPTIONS = {"realize_reads_threshold": 100, "cpp.dynamic_threads": True}
"""realize_reads_threshold: recompute a value read by several consumers rather than store it;
Inductor's default (4 reads) made LAMB's first pass write v_t to a full-size temporary and copy it
over, a fresh allocation and two more passes over memory per step. dynamic_threads: the OpenMP
regions take torch's thread count at run time (torch.set_num_threads), not at compile time."""

_KERNELS: dict[tuple, Callable] = {}
_FAILED: dict[tuple, str] = {}
_WARNED = False


def compiled_kernels() -> list[tuple]:
    """(function, dtype, device type, number of scalars) of each kernel compiled in this process."""
    return sorted(_KERNELS, key=str)


def compile_kernel(function: Callable, kinds: Sequence[str], dtype: torch.dtype,
                   device: torch.device, n_scalars: int) -> Callable:
    """Trace ``function`` over 1-D tensors of symbolic length and compile it with TorchInductor."""
    def example(kind: str) -> torch.Tensor:
        if kind == "scalars":
            return torch.zeros(n_scalars, dtype=dtype, device=device)
        if kind == "sum":
            return torch.ones((), dtype=dtype, device=device)
        return torch.ones(2**20, dtype=dtype, device=device)  # a large size: parallel code

    return compile_traced(function, [example(kind) for kind in kinds], "symbolic")


def compile_traced(function: Callable, examples: Sequence[torch.Tensor],
                   tracing_mode: str) -> Callable:
    """Trace ``function`` with make_fx ("symbolic": any length; "fake": these shapes; neither
    runs it) and compile the graph with TorchInductor, without TorchDynamo.

    Kernels for given shapes are compiled for this thread count: Inductor then runs the loops too
    short to share serially, instead of opening a parallel region for each tensor (~3 us each)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    import torch._inductor

    graph = make_fx(function, tracing_mode=tracing_mode)(*[t.detach() for t in examples])
    fake_inputs = [node.meta["val"] for node in graph.graph.nodes if node.op == "placeholder"]
    options = INDUCTOR_OPTIONS if tracing_mode == "symbolic" else \
        {**INDUCTOR_OPTIONS, "cpp.dynamic_threads": False, "cpp.threads": torch.get_num_threads()}
    if widens_to_float64(graph) and examples[0].device.type == "cpu":
        options = {**options, **widening_options()}
    return torch._inductor.compile(graph, fake_inputs, options=options)


def widens_to_float64(graph: torch.fx.GraphModule) -> bool:
    """Whether the traced graph turns narrower floats into float64 (the float64 sums of squares)."""
    def dtypes(nodes) -> set[torch.dtype]:
        return {node.meta["val"].dtype for node in nodes
                if isinstance(node.meta.get("val"), torch.Tensor)}
    nodes = list(graph.graph.nodes)
    inputs = dtypes(node for node in nodes if node.op == "placeholder")
    return torch.float64 in dtypes(nodes) and bool(inputs - {torch.float64})


@cache
def widening_options() -> dict[str, Any]:
    """Inductor options for kernels that widen float32 to float64: 256-bit vectors on a CPU whose
    widest are 512-bit, where it has both.

    torch 2.13 has no vectorized float -> double conversion: each goes through a scalar loop over
    one vector's lanes (``VecConvert``'s generic case), which the C++ compiler turns into fast code
    for 8 lanes and slow code for 16. On an AVX-512 machine here, the float64 sum of squares of
    25M floats took 9.7 ms with 512-bit vectors, 4.5 ms with 256-bit ones (BLAS's dot: 3.4 ms),
    and LARS's step went from 2.07x to 1.11x its bandwidth bound. Elementwise float32 kernels
    keep the widest vectors. Elsewhere (AVX2 only, ARM): no options."""
    try:
        from torch._inductor import cpu_vec_isa
        widest = cpu_vec_isa.pick_vec_isa().bit_width()
        has_256 = any(isa.bit_width() == 256 for isa in cpu_vec_isa.valid_vec_isa_list())
    except Exception:                                  # no compiler to probe the ISA with
        return {}
    return {"cpp.simdlen": 256} if widest == 512 and has_256 else {}


def kernel(function: Callable, kinds: Sequence[str], dtype: torch.dtype, device: torch.device,
           n_scalars: int) -> Callable | None:
    """The compiled ``function`` from the cache, compiling it on first use; None if that fails."""
    key = (function.__name__, str(dtype).removeprefix("torch."), device.type, n_scalars)
    return cached_compile(key, lambda: compile_kernel(function, kinds, dtype, device, n_scalars))


def cached_compile(key: tuple, build: Callable[[], Callable], warn: bool = True) -> Callable | None:
    """``build()``'s kernel, once per process per key; None (and one warning) if it fails."""
    if key in _KERNELS:
        return _KERNELS[key]
    if key in _FAILED:
        return None
    try:
        _KERNELS[key] = build()
    except Exception as error:                    # no compiler, unsupported device, ...
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        _FAILED[key] = f"{type(error).__name__}: {first_line}"
        if warn:
            warn_unavailable(f"compiling {key[0]} for {key[-3]} on {key[-2]} failed "
                             f"({_FAILED[key]})")
        return None
    return _KERNELS[key]


GROUP_KERNEL_MAX_NUMEL = 1 << 22
"""Groups with at most this many elements (and GROUP_KERNEL_MAX_TENSORS tensors) get one kernel
compiled for their shapes: small models, where per-call overhead, not memory, bounds the step."""

GROUP_KERNEL_MAX_TENSORS = 32


def whole_group_passes(rule: Rule, n_params: int, slot_index: Sequence[int]) -> list[Callable]:
    """Each pass of the rule over every tensor of a group, as one function per pass.

    A pass takes (params, grads, state, slots, what the pass before returned for each tensor) and
    returns what the next one needs. Passes are compiled apart: in one graph, Inductor keeps the
    first pass's values in full-size buffers and recomputes the scalars in every iteration.
    """
    n_state = len(rule.state_keys)

    def over_tensors(function: Callable, n_earlier: int) -> Callable:
        def whole(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            params, grads = tensors[:n_params], tensors[n_params:2 * n_params]
            state = tensors[2 * n_params:2 * n_params + n_params * n_state]
            rest = tensors[2 * n_params + n_params * n_state:]
            n_slots = len(rest) - n_params * n_earlier
            slots, earlier = rest[:n_slots], rest[n_slots:]
            results: list[torch.Tensor] = []
            for i, slot in enumerate(slot_index):
                out = function(params[i].view(-1), grads[i].view(-1),
                               *[s.view(-1) for s in state[i * n_state:(i + 1) * n_state]],
                               slots[slot], *earlier[i * n_earlier:(i + 1) * n_earlier])
                results.extend(out or ())
            return tuple(results)
        whole.__name__ = "group_" + function.__name__
        return whole

    return [over_tensors(function, kinds.count("sum")) for function, kinds in rule.passes]


STEP_BUCKET = 8
"""Large tensors per kernel call in a large group (ChunkedPlan): Adam with prox L1 on 100 tensors of
250k elements stepped in 15.6 ms in 13 calls against 16.8 ms in 100 (bench A/B, 5 s of compiling
once per rule variant and dtype)."""


PASSES_IN_CACHE_BYTES = 16 << 20
"""A rule of several passes (LARS, LAMB) puts as many large tensors to a call (a power of 2, at
most STEP_BUCKET) as fit in this many bytes with their gradients and state, so that the second
pass finds in cache what the first pass read (half the 32 MB of L3 of the AMD EPYC VM it was
measured on). 100 tensors of 250k elements (1 MB each; LAMB's bucket then holds 4, LARS's 4), in
interleaved A/B runs: LAMB 21.4 ms against 23.7 ms 8 to a call, LARS 16.7 against 19.4 ms; with
8 MB 22.8 and 18.0 ms; one to a call up to 16% faster than 8 for LAMB. Smaller tensors gain from
sharing a call: 150 of 40k elements, LAMB one to a call 10.6 ms, 8 to a call (what this budget
gives them) 8.1-8.6 ms. Reproduce: ``python bench/bench_buckets.py``."""


def bucket_size(rule: Rule, numel: int, itemsize: int) -> int:
    """Tensors of ``numel`` elements per call: STEP_BUCKET for a rule of one pass; for several,
    the largest power of 2 up to STEP_BUCKET whose tensors (parameter, gradient, state) fit in
    PASSES_IN_CACHE_BYTES, or 1."""
    if len(rule.passes) == 1:
        return STEP_BUCKET
    tensor_bytes = numel * itemsize * (2 + len(rule.state_keys))
    size = STEP_BUCKET
    while size > 1 and size * tensor_bytes > PASSES_IN_CACHE_BYTES:
        size //= 2
    return size


def bucket_examples(count: int, dtype: torch.dtype, device: torch.device,
                    equal: bool) -> list[torch.Tensor]:
    """Example tensors for a kernel over ``count`` tensors per call. ``equal``: of one length,
    so that Inductor fuses them into one loop over that length; else each of its own length
    (traced with equal lengths, a kernel assumes them equal). Lengths divisible by READ_STREAMS
    (:func:`segments`) and large (Inductor emits parallel loops for them)."""
    step = 0 if equal else 64
    return [torch.ones(2**18 + step * i, dtype=dtype, device=device) for i in range(count)]


def equal_length_buckets(items: list, length: Callable[[Any], int],
                         size: int) -> tuple[list[list], list]:
    """``items`` of equal length, ``size`` per bucket; and the rest, in their order.

    One loop over several tensors of one length costs less than a loop per tensor: 100 tensors of
    250k elements, 8 per call, took 19.5 against 21.4 ms for an Adam step with prox L1, and 3.5-4.2
    against 5.5-6.2 ms for their sum of squares (each loop is a parallel region of its own, with
    its own start, end and, for a reduction, combination of the threads' partial sums; the
    threads of this 2-core VM do not reach the end of a loop together)."""
    by_length: dict[int, list[int]] = {}
    for position, item in enumerate(items):
        by_length.setdefault(length(item), []).append(position)
    buckets = [same[start:start + size] for same in by_length.values()
               for start in range(0, len(same) - len(same) % size, size)]
    taken = {position for bucket in buckets for position in bucket}
    return ([[items[position] for position in bucket] for bucket in buckets],
            [item for position, item in enumerate(items) if position not in taken])


def any_length_buckets(items: list, size: int) -> tuple[list[list], list]:
    """``items``, ``size`` per bucket in their order; and the few left over."""
    full = len(items) - len(items) % size
    return [items[start:start + size] for start in range(0, full, size)], items[full:]


def bucket_kernels(rule: Rule, dtype: torch.dtype, device: torch.device, n_scalars: int,
                   equal: bool, count: int) -> list[Callable] | None:
    """The rule's passes over ``count`` tensors per call, compiled once for tensors of any
    lengths, or (``equal``) of one length (:func:`bucket_examples`); lengths divisible by
    READ_STREAMS, as :func:`segments` needs. None if that fails (silently: the tensors go one per
    call)."""
    params = bucket_examples(count, dtype, device, equal)
    for param in params:
        param.grad = torch.ones_like(param)
    slots = [torch.zeros(n_scalars, dtype=dtype, device=device)]
    key = ("bucket" + "_equal" * equal, count, str(dtype).removeprefix("torch."),
           device.type, n_scalars)
    return compile_whole_passes(rule, params, slots, (0,) * count, "symbolic", key)


def group_kernels(rule: Rule, params: list[torch.Tensor], slots: list[torch.Tensor],
                  slot_index: tuple[int, ...]) -> list[Callable] | None:
    """The rule's passes over a whole group, each compiled for its shapes (cached in memory and on
    disk); None if that fails (silently: the chunked plan's kernels are tried next, and warn)."""
    return compile_whole_passes(rule, params, slots, slot_index, "fake", group_key(params, slots))


def group_key(params: list[torch.Tensor], slots: list[torch.Tensor]) -> tuple:
    """What a kernel compiled for a group's shapes is compiled for (with the function's name)."""
    return (tuple(tuple(p.shape) for p in params), torch.get_num_threads(),
            str(params[0].dtype).removeprefix("torch."), params[0].device.type, len(slots[0]))


def group_examples(rule: Rule, params: list[torch.Tensor],
                   slots: list[torch.Tensor]) -> list[torch.Tensor]:
    """A whole-group kernel's arguments to trace with: parameters, gradients, state, scalars. The
    state tensors are fresh: state left packed by an earlier plan would be views of one buffer,
    and tracing with those would tell Inductor that they alias."""
    state = [torch.empty_like(p, memory_format=torch.contiguous_format)
             for p in params for _ in rule.state_keys]
    return [*params, *[p.grad for p in params], *state, *slots]


def compile_whole_passes(rule: Rule, params: list[torch.Tensor], slots: list[torch.Tensor],
                         slot_index: Sequence[int], tracing_mode: str,
                         key: tuple) -> list[Callable] | None:
    """Each of the rule's passes over all of ``params`` (:func:`whole_group_passes`), compiled
    and cached under (its name, slot_index, *key); each pass is traced with the results of the one
    before (LARS, LAMB). None if a pass fails to compile."""
    examples = group_examples(rule, params, slots)
    like = params[0]
    kernels = []
    for index, whole in enumerate(whole_group_passes(rule, len(params), slot_index)):
        compiled = cached_compile((whole.__name__, tuple(slot_index), *key),
                                  lambda w=whole, e=examples: compile_traced(w, e, tracing_mode),
                                  warn=False)
        if compiled is None:
            return None
        kernels.append(compiled)
        if index + 1 < len(rule.passes):          # the next pass: the results after the rest
            n_results = rule.passes[index + 1][1].count("sum") * len(params)
            examples = [*group_examples(rule, params, slots),
                        *[torch.zeros((), dtype=like.dtype, device=like.device)
                          for _ in range(n_results)]]
    return kernels


def warn_unavailable(reason: str) -> None:
    """Say once per process that the fast path falls back to the reference path."""
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(f"regopt fast path unavailable: {reason}; using the reference path "
                      "(same numbers, slower)", RuntimeWarning, stacklevel=4)


# -- plans: how one group's tensors are laid out and stepped ---------------------------------------

class StepCounts:
    """The step counts (state["step"]) of a group as 0-d views of one tensor: one add per step
    instead of one per parameter (torch._foreach_add_ over 0-d tensors costs ~2 us each)."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        steps = [state["step"] for state in states]
        self.flat = torch.stack(steps) if len({(s.dtype, s.device) for s in steps}) == 1 else None
        if self.flat is not None:
            for index, state in enumerate(states):
                state["step"] = self.flat[index]
        self.views = [state["step"] for state in states]

    def increment(self) -> None:
        if self.flat is not None:
            self.flat.add_(1.0)
        else:
            torch._foreach_add_(self.views, 1.0)


class ScalarSlot:
    """The scalars tensor shared by the chunks with one ChunkKey, refilled in place each step."""

    def __init__(self, key: ChunkKey, size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.key = key
        self.host = np.zeros(size, dtype=torch.empty((), dtype=dtype).numpy().dtype)
        host_tensor = torch.from_numpy(self.host)
        self.tensor = host_tensor if device.type == "cpu" else host_tensor.to(device)
        self.device = device

    def fill(self, values: list[float]) -> None:
        """Write this step's scalars. On a CUDA device, through pinned memory without waiting: a
        blocking copy from pageable memory would wait for the device every step. (The pinned
        block comes from torch's caching host allocator, which does not hand it out again before
        the copy is done. Untested here: no GPU was lent to this project's sessions.)"""
        self.host[:] = values
        if self.device.type == "cuda":
            self.tensor.copy_(torch.from_numpy(self.host).pin_memory(), non_blocking=True)
        elif self.device.type != "cpu":
            self.tensor.copy_(torch.from_numpy(self.host))


class Chunk:
    """Tensors updated by one kernel call: one large tensor in place, or small ones packed flat."""

    def __init__(self, params: list[torch.Tensor], state_keys: Sequence[str],
                 states: list[dict[str, Any]], packed: bool, slot: ScalarSlot) -> None:
        self.params, self.packed, self.slot = params, packed, slot
        self.numel = sum(p.numel() for p in params)
        if not packed:
            state = states[0]
            for key in state_keys:
                state[key] = state[key].contiguous()
            self.state = [state[key].view(-1) for key in state_keys]
            return
        sizes = [p.numel() for p in params]
        like = params[0]
        self.param_buffer = like.new_empty(sum(sizes))
        self.grad_buffer = like.new_empty(sum(sizes))
        self.param_pieces = pieces(self.param_buffer, params)
        self.grad_pieces = pieces(self.grad_buffer, params)
        self.state = []
        for key in state_keys:                  # state moves into a flat buffer; the state dict
            buffer = like.new_empty(sum(sizes))  # keeps views with the original shapes
            views = pieces(buffer, params)
            torch._foreach_copy_(views, [state[key] for state in states])
            for state, view in zip(states, views):
                state[key] = view
            self.state.append(buffer)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameter and gradient as 1-D tensors (packed: gathered into the flat buffers)."""
        if self.packed:
            torch._foreach_copy_(self.param_pieces, self.params)
            torch._foreach_copy_(self.grad_pieces, [p.grad for p in self.params])
            return self.param_buffer, self.grad_buffer
        (param,) = self.params
        return param.detach().view(-1), param.grad.view(-1)

    def write_back(self) -> None:
        if self.packed:
            torch._foreach_copy_(self.params, self.param_pieces)

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The kernels' arguments: parameter, gradient, state, scalars."""
        return (*self.tensors(), *self.state, self.slot.tensor)


class Bucket:
    """Large chunks (one tensor each, one scalar slot) updated by one kernel call."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.state = [tensor for chunk in chunks for tensor in chunk.state]
        self.slot = chunks[0].slot

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """Parameters, gradients, state (tensor by tensor), scalars: :func:`whole_group_passes`."""
        params = [chunk.params[0] for chunk in self.chunks]
        return (*[p.detach().view(-1) for p in params], *[p.grad.view(-1) for p in params],
                *self.state, self.slot.tensor)

    def write_back(self) -> None:
        """Nothing to copy: every tensor is updated where it lives."""


def pieces(buffer: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of a flat buffer shaped like ``params``."""
    return [piece.view(p.shape) for piece, p in zip(buffer.split([p.numel() for p in params]),
                                                     params)]


class CompiledPlan:
    """What every compiled plan shares: the group's state, step counts and scalar slots."""

    engine = "compiled"

    def __init__(self, optimizer: Any, group: dict[str, Any], params: list[torch.Tensor],
                 rule: Rule) -> None:
        self.optimizer, self.rule = optimizer, rule
        self.key = plan_key(group, params)
        self.states = [initial_state(optimizer, p, group, rule) for p in params]
        self.steps = StepCounts(self.states) if rule.counts_steps else None
        self.slots: dict[ChunkKey, ScalarSlot] = {}
        self.slot_of: list[ScalarSlot] = []        # each parameter's slot, in parameter order
        n_scalars = 5 + len(rule.scalars(group, 1, ChunkKey()))
        for param, state in zip(params, self.states):
            key = ChunkKey(step=int(state["step"]) if rule.counts_steps else 0,
                           first=bool(state.get("_fast_first", False)),
                           adapted=rule.own_chunk(param))
            if key not in self.slots:
                self.slots[key] = ScalarSlot(key, n_scalars, param.dtype, param.device)
            self.slot_of.append(self.slots[key])

    def claim_state(self) -> None:
        """Once the plan is built: drop the marks that initial_state left for it."""
        for state in self.states:
            state.pop("_fast_first", None)

    def fill_slots(self, group: dict[str, Any], grad_factor: torch.Tensor | float | None) -> None:
        """Count the step and write this step's scalars (lr, bias corrections, ...) per slot;
        ``grad_factor``: the clipping factor (None: no clipping)."""
        if self.steps is not None:
            self.steps.increment()
        on_device = isinstance(grad_factor, torch.Tensor) and grad_factor.device.type != "cpu"
        factor = 1.0 if grad_factor is None or on_device else float(grad_factor)
        common = regularization_scalars(self.optimizer, group, factor)
        for slot in self.slots.values():
            if self.rule.counts_steps:
                slot.key = ChunkKey(slot.key.step + 1, slot.key.first, slot.key.adapted)
            slot.fill(common + self.rule.scalars(group, slot.key.step, slot.key))
            if on_device:                        # the clipping factor, without reading it back
                slot.tensor[GRAD_FACTOR:GRAD_FACTOR + 1].mul_(grad_factor)
            if slot.key.first:                   # SGD: b_1 = g only on the first step
                slot.key = ChunkKey(slot.key.step, False, slot.key.adapted)


class ChunkedPlan(CompiledPlan):
    """A group stepped chunk by chunk by kernels compiled for any length: each large tensor where
    it lives, the small ones packed into one flat chunk per scalar slot."""

    def __init__(self, optimizer: Any, group: dict[str, Any], params: list[torch.Tensor],
                 rule: Rule, kernels: list[Callable],
                 one_stream: Callable[[], list[Callable] | None],
                 bucket: Callable[[bool, int], list[Callable] | None]) -> None:
        """``one_stream()`` compiles the rule's one-stream passes, for chunks whose length
        READ_STREAMS does not divide (:func:`segments`); self.kernels is None if that fails.
        ``bucket(equal, count)`` compiles its passes over ``count`` tensors per call, for the
        large tensors (:func:`bucket_kernels`); where that fails, they go one per call."""
        super().__init__(optimizer, group, params, rule)
        self.kernels: list[Callable] | None = kernels
        self.chunks: list[Chunk] = []
        small: dict[int, list[int]] = {}
        for index, (param, slot) in enumerate(zip(params, self.slot_of)):
            if param.numel() >= SMALL_TENSOR or rule.own_chunk(param):
                self.chunks.append(Chunk([param], rule.state_keys, [self.states[index]], False,
                                         slot))
            else:
                small.setdefault(id(slot), []).append(index)
        for indices in small.values():
            self.chunks.append(Chunk([params[i] for i in indices], rule.state_keys,
                                     [self.states[i] for i in indices], True,
                                     self.slot_of[indices[0]]))
        self.chunk_kernels = [kernels] * len(self.chunks)
        if rule.one_stream_passes is not None:
            uneven = [i for i, chunk in enumerate(self.chunks) if chunk.numel % READ_STREAMS]
            one_stream_kernels = one_stream() if uneven else []
            if one_stream_kernels is None:
                self.kernels = None
                return
            for index in uneven:
                self.chunk_kernels[index] = one_stream_kernels
        self.work = self.buckets(kernels, bucket)
        self.claim_state()

    def buckets(self, kernels: list[Callable],
                bucket: Callable[[bool, int], list[Callable] | None]
                ) -> list[tuple[list[Callable], "Chunk | Bucket"]]:
        """What one step calls: (kernels, inputs) per call. Large tensors that share a scalar
        slot and the main kernels go several per call (:func:`bucket_size`: STEP_BUCKET, fewer
        for rules of several passes where a bucket would not stay in cache between them): those
        of equal length together first (:func:`equal_length_buckets`), then the rest in buckets
        of mixed lengths; every other chunk, one per call."""
        candidates: dict[tuple[int, int], list[int]] = {}    # (slot, bucket size): chunks
        for index, chunk in enumerate(self.chunks):
            if not chunk.packed and self.chunk_kernels[index] is kernels:
                size = bucket_size(self.rule, chunk.numel, chunk.params[0].element_size())
                if size > 1:
                    candidates.setdefault((id(chunk.slot), size), []).append(index)

        def cut(indices: list[int], equal: bool, size: int) -> tuple[list[list[int]], list[int]]:
            if equal:
                return equal_length_buckets(indices, lambda i: self.chunks[i].numel, size)
            return any_length_buckets(indices, size)

        work: list[tuple[list[Callable], Chunk | Bucket]] = []
        for equal in (True, False):
            for (slot, size), indices in candidates.items():
                full, rest = cut(indices, equal, size)
                many = bucket(equal, size) if full else None
                if many is None:                   # none, or not compiled: they stay candidates
                    continue
                work += [(many, Bucket([self.chunks[i] for i in bucket_indices]))
                         for bucket_indices in full]
                candidates[(slot, size)] = rest
        taken = {id(chunk) for _, unit in work for chunk in unit.chunks}
        return work + [(self.chunk_kernels[i], chunk) for i, chunk in enumerate(self.chunks)
                       if id(chunk) not in taken]

    def step(self, group: dict[str, Any], params: list[torch.Tensor],
             grad_factor: torch.Tensor | None) -> None:
        self.fill_slots(group, grad_factor)
        for kernels, unit in self.work:
            apply_passes(kernels, *unit.inputs())
            unit.write_back()


class GroupPlan(CompiledPlan):
    """A small group stepped by one call of a kernel compiled for its shapes: every tensor where
    it lives, no packing copies, one call (~10 us) per step instead of one per chunk."""

    def __init__(self, optimizer: Any, group: dict[str, Any], params: list[torch.Tensor],
                 rule: Rule) -> None:
        super().__init__(optimizer, group, params, rule)
        self.norm_kernel: Callable | None = None
        self.clip_kernel: Callable | None = None
        self.total_norm: torch.Tensor | None = None
        slots = list(self.slots.values())
        self.slot_tensors = [slot.tensor for slot in slots]
        self.slot_index = tuple(slots.index(slot) for slot in self.slot_of)
        self.kernels = group_kernels(rule, params, self.slot_tensors, self.slot_index)
        if self.kernels is None:
            return                               # build_plan takes the chunked plan instead
        for state in self.states:
            for key in rule.state_keys:
                state[key] = state[key].contiguous()
        self.state = [state[key] for state in self.states for key in rule.state_keys]
        self.claim_state()

    def step(self, group: dict[str, Any], params: list[torch.Tensor],
             grad_factor: torch.Tensor | None) -> None:
        self.fill_slots(group, grad_factor)
        apply_passes(self.kernels, *params, *[p.grad for p in params], *self.state,
                     *self.slot_tensors)

    def clipping_kernel(self, params: list[torch.Tensor]) -> Callable | None:
        """The rule's update with gradient clipping inside: one call, compiled on first use (for
        single-pass rules; None where that fails or the rule has more passes)."""
        if self.clip_kernel is None and len(self.rule.passes) == 1:
            self.max_norm = ScalarSlot(ChunkKey(), 1, params[0].dtype, params[0].device)
            self.clip_kernel = clipped_group_kernel(self.rule, params, self.slot_tensors,
                                                    self.slot_index, self.max_norm.tensor)
        return self.clip_kernel

    def clipped_step(self, group: dict[str, Any], params: list[torch.Tensor],
                     max_norm: float) -> None:
        """A step with the gradients clipped to a global norm of ``max_norm`` inside the kernel
        (this group holds every gradient of the optimizer; :func:`clipped_step`)."""
        self.fill_slots(group, None)
        self.max_norm.fill([max_norm])
        (self.total_norm,) = self.clip_kernel(*params, *[p.grad for p in params], *self.state,
                                              *self.slot_tensors, self.max_norm.tensor)

    def grad_squares(self, params: list[torch.Tensor]) -> torch.Tensor:
        """sum g^2 over the group's gradients (float64, 0-d), by one call of a kernel compiled
        for its shapes (on first use; :func:`global_norm`)."""
        grads = [p.grad for p in params]
        if self.norm_kernel is None:
            key = ("group_grad_squares", tuple(tuple(g.shape) for g in grads),
                   torch.get_num_threads(), str(grads[0].dtype), grads[0].device.type)
            self.norm_kernel = cached_compile(
                key, lambda: compile_traced(group_grad_squares, grads, "fake"))
        if self.norm_kernel is None:
            return torch.stack(torch._foreach_norm(grads)).double().square().sum()
        return self.norm_kernel(*grads)[0]


def clipped_group_kernel(rule: Rule, params: list[torch.Tensor], slots: list[torch.Tensor],
                         slot_index: tuple[int, ...], max_norm: torch.Tensor) -> Callable | None:
    """A single-pass rule's update over a whole group with global-norm clipping inside, compiled
    for the group's shapes: one call computes the norm of all gradients (float64 sums over
    segments), the factor min(1, max_norm / (norm + 1e-6)) as clip_grad_norm_ does, and the update
    with every gradient scaled by it; returns the norm (in the gradients' dtype, as torch's)."""
    n, n_state = len(params), len(rule.state_keys)
    (update,) = whole_group_passes(rule, n, slot_index)
    head = 2 * n + n * n_state                   # params, grads, state; then slots, max_norm

    def clipped(*tensors):
        grads, slot_tensors, limit = tensors[n:2 * n], tensors[head:-1], tensors[-1]
        total = sum(sum_of_squares(g.view(-1)) for g in grads).sqrt().to(grads[0].dtype)
        factor = torch.clamp(limit / (total + 1e-6), max=1.0)
        scaled = [torch.cat([s[:GRAD_FACTOR + 1] * factor, s[GRAD_FACTOR + 1:]])
                  for s in slot_tensors]         # GRAD_FACTOR is 0: s[0] *= factor
        update(*tensors[:head], *scaled)
        return (total,)

    examples = [*group_examples(rule, params, slots), max_norm]
    key = ("clipped_" + update.__name__, slot_index, *group_key(params, slots))
    return cached_compile(key, lambda: compile_traced(clipped, examples, "fake"), warn=False)


def group_grad_squares(*grads):
    """sum g^2 over all ``grads``, in float64: :meth:`GroupPlan.grad_squares`'s kernel."""
    return (sum(sum_of_squares(g.view(-1)) for g in grads),)


def apply_passes(kernels: Sequence[Callable], *inputs: torch.Tensor) -> None:
    """A rule's passes over the same inputs; each pass also gets what the one before returned
    (LARS, LAMB: each tensor's step size, from its norms, then the update)."""
    results: Sequence[torch.Tensor] = ()
    for kernel in kernels:
        results = kernel(*inputs, *results) or ()


def initial_state(optimizer: Any, param: torch.Tensor, group: dict[str, Any],
                  rule: Rule) -> dict[str, Any]:
    """The parameter's state, created as the reference path creates it, plus what the kernels need.

    SGD creates its momentum buffer on the first step as a copy of the gradient; here it starts at 0
    and the first step passes mu = 0, 1 - tau = 1, which gives the same b_1 = g.
    """
    state = optimizer._state_of(param, group)
    for key in rule.state_keys:
        if key not in state:
            state[key] = torch.zeros_like(param, memory_format=torch.contiguous_format)
            state["_fast_first"] = True
    return state


# -- torch's fused kernels, where the formula is exactly regopt's ---------------------------------

class TorchKernelPlan:
    """A group stepped by one of torch's fused kernels (see the module docstring for when)."""

    engine = "torch"

    def __init__(self, optimizer: Any, group: dict[str, Any], params: list[torch.Tensor],
                 kind: str) -> None:
        self.kind = kind
        self.key = plan_key(group, params)
        self.states = [optimizer._state_of(p, group) for p in params]
        self.steps = StepCounts(self.states) if "step" in self.states[0] else None
        self.lists = {key: [state[key] for state in self.states]
                      for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "sum",
                                  "momentum_buffer") if key in self.states[0]}

    def step(self, group: dict[str, Any], params: list[torch.Tensor],
             grad_factor: torch.Tensor | None) -> None:
        grads = [p.grad for p in params]
        options = dict(lr=float(group["lr"]), maximize=group.get("maximize", False),
                       weight_decay=group["weight_decay"], grad_scale=None)
        if grad_factor is not None:               # torch's kernels divide gradients by grad_scale
            options["grad_scale"] = torch.reciprocal(grad_factor).to(grads[0].device)  # 1/0: inf
        if self.kind == "sgd":
            self.sgd_step(group, params, grads, options)
            return
        self.steps.increment()
        if self.kind == "adagrad":
            torch._fused_adagrad_(params, grads, self.lists["sum"], self.steps.views,
                                  lr_decay=group["lr_decay"], eps=group["eps"], **options)
            return
        beta1, beta2 = group["betas"]
        fused = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        fused(params, grads, self.lists["exp_avg"], self.lists["exp_avg_sq"],
              self.lists.get("max_exp_avg_sq", []), self.steps.views, beta1=beta1, beta2=beta2,
              eps=group["eps"], amsgrad=group["amsgrad"], **options)

    def sgd_step(self, group: dict[str, Any], params: list[torch.Tensor],
                 grads: list[torch.Tensor], options: dict[str, Any]) -> None:
        momentum, first = group["momentum"], False
        if momentum != 0 and "momentum_buffer" not in self.lists:   # b_1 = g: the kernel copies
            first = True
            for state, grad in zip(self.states, grads):
                state["momentum_buffer"] = torch.empty_like(grad)
            self.lists["momentum_buffer"] = [state["momentum_buffer"] for state in self.states]
        torch._fused_sgd_(params, grads, self.lists.get("momentum_buffer", []) if momentum else [],
                          momentum=momentum, dampening=group["dampening"],
                          nesterov=group["nesterov"], is_first_step=first, **options)


def torch_kernel_for(optimizer: Any, group: dict[str, Any],
                     params: list[torch.Tensor]) -> str | None:
    """The torch fused kernel whose formula is exactly this group's, or None."""
    if not USE_TORCH_KERNELS or group["l1"]:
        return None
    decoupled = bool(group["weight_decay"]) and group["decoupled_weight_decay"]
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1 or len({p.device for p in params}) != 1:
        return None
    states = [optimizer._state_of(p, group) for p in params]     # created as the reference does
    if isinstance(optimizer, SGD):
        has_buffer = {"momentum_buffer" in state for state in states}
        return "sgd" if not decoupled and len(has_buffer) == 1 else None
    step_dtypes = {state["step"].dtype for state in states if "step" in state}
    if step_dtypes - {torch.float32}:
        return None                              # torch's kernels read float32 step counts
    if isinstance(optimizer, Adam) and (not decoupled or group["decay_scaled_by_lr"]):
        return "adam"
    if isinstance(optimizer, Adagrad) and not decoupled:
        return "adagrad"
    return None


# -- choosing and running a plan -------------------------------------------------------------------

class FastCache:
    """Per optimizer: each group's plan, rebuilt when its parameters or structural options change
    and when a state dict is loaded."""

    def __init__(self, optimizer: Any) -> None:
        self.plans: dict[int, Any] = {}
        optimizer.register_load_state_dict_post_hook(lambda opt: self.plans.clear())


def cache_of(optimizer: Any) -> FastCache:
    cache = optimizer.__dict__.get("_regopt_fast")
    if cache is None:
        cache = optimizer.__dict__["_regopt_fast"] = FastCache(optimizer)
    return cache


def build_plan(optimizer: Any, group: dict[str, Any], params: list[torch.Tensor]) -> Any:
    """A plan for this group, or None when the fast path cannot take it."""
    if any(p.layout is not torch.strided or not p.is_contiguous() or p.is_complex()
           for p in params):
        warn_unavailable("a sparse, complex or non-contiguous parameter")
        return None
    kind = torch_kernel_for(optimizer, group, params)
    if kind is not None:
        return TorchKernelPlan(optimizer, group, params, kind)
    rule = rule_for(optimizer, group)
    dtypes, devices = {p.dtype for p in params}, {p.device for p in params}
    if rule is None:
        warn_unavailable(f"no fast rule for {type(optimizer).__name__}")
        return None
    if len(devices) != 1 or dtypes - set(COMPILED_DTYPES):
        warn_unavailable(f"a group with dtypes {sorted(map(str, dtypes))} on devices "
                         f"{sorted(map(str, devices))} (compiled: float32, float64, one device)")
        return None
    (device,) = devices
    if len(dtypes) == 1 and fits_group_kernel(params):
        plan = GroupPlan(optimizer, group, params, rule)
        if plan.kernels is not None:
            return plan
    if len(dtypes) != 1:
        warn_unavailable(f"a group mixing dtypes {sorted(map(str, dtypes))}")
        return None
    (dtype,) = dtypes
    n_scalars = 5 + len(rule.scalars(group, 1, ChunkKey()))

    def compile_passes(passes: tuple) -> list[Callable] | None:
        kernels = [kernel(function, kinds, dtype, device, n_scalars) for function, kinds in passes]
        return None if any(k is None for k in kernels) else kernels

    kernels = compile_passes(rule.passes)
    if kernels is None:
        return None
    plan = ChunkedPlan(optimizer, group, params, rule, kernels,
                       one_stream=lambda: compile_passes(rule.one_stream_passes),
                       bucket=lambda equal, count: bucket_kernels(rule, dtype, device,
                                                                  n_scalars, equal, count))
    return plan if plan.kernels is not None else None


def fits_group_kernel(params: list[torch.Tensor]) -> bool:
    """Small enough for one kernel compiled for the group's shapes (GroupPlan)."""
    return (1 < len(params) <= GROUP_KERNEL_MAX_TENSORS
            and sum(p.numel() for p in params) <= GROUP_KERNEL_MAX_NUMEL)


def plan_key(group: dict[str, Any], params: list[torch.Tensor]) -> tuple:
    """What a plan is built for: these parameters, these structural options, this thread count
    (kernels compiled for a group's shapes are compiled for a thread count too)."""
    return tuple(map(id, params)), structure(group), torch.get_num_threads()


def gradients_fit(params: list[torch.Tensor]) -> bool:
    """Dense, contiguous gradients of the parameter's dtype (else: the reference path)."""
    for p in params:
        g = p.grad
        if g.layout is not torch.strided or g.dtype != p.dtype or not g.is_contiguous():
            return False
    return True


def step_group(optimizer: Any, group: dict[str, Any]) -> bool:
    """Step one group on the fast path; False means the reference path must step it instead.

    Called by RegularizedOptimizer.step for groups with ``fused=True``.
    """
    params = [p for p in group["params"] if p.grad is not None]
    grad_factor = optimizer.__dict__.get("_regopt_grad_factor")   # clipping: a 0-d tensor
    if not params:
        return True
    cache = cache_of(optimizer)
    plan = cache.plans.get(id(group))
    key = plan_key(group, params)
    if plan is None or plan.key != key:
        if gradients_fit(params):
            plan = build_plan(optimizer, group, params)
            cache.plans[id(group)] = plan if plan is not None else Unsupported(key)
        else:
            plan = None
    if plan is None or plan.engine == "reference" or not gradients_fit(params):
        if grad_factor is not None:               # the reference path gets clipped gradients
            scale_([p.grad for p in params], grad_factor)
        return False
    max_norm = optimizer.__dict__.get("_regopt_clip_in_kernel")
    if max_norm is not None and isinstance(plan, GroupPlan) and plan.clip_kernel is not None:
        plan.clipped_step(group, params, max_norm)
    else:
        plan.step(group, params, grad_factor)
    return True


@dataclass
class Unsupported:
    """A group the fast path cannot take (remembered, so that it is not tried every step)."""

    key: tuple
    engine: str = "reference"


def compiles(optimizer: Any, group: dict[str, Any]) -> bool:
    """Whether the fast path of this group needs compiled kernels, that is, more than torch's
    fused kernels (which cost nothing to start)."""
    return bool(group.get("fused") and group["params"]
                and torch_kernel_for(optimizer, group, list(group["params"])) is None)


def engines(optimizer: Any) -> list[str]:
    """Per group: "compiled", "torch" or "reference", the path of its last step ("-": none yet)."""
    plans = optimizer.__dict__.get("_regopt_fast")
    result = []
    for group in optimizer.param_groups:
        if not group.get("fused"):
            result.append("reference")
            continue
        plan = plans.plans.get(id(group)) if plans is not None else None
        result.append(plan.engine if plan is not None else "-")
    return result


def workspace_bytes(optimizer: Any) -> int:
    """Bytes the fast path holds besides the state: the flat copies of packed small tensors."""
    cache = optimizer.__dict__.get("_regopt_fast")
    total = 0
    for plan in (cache.plans.values() if cache is not None else ()):
        for chunk in getattr(plan, "chunks", ()):
            if chunk.packed:
                total += chunk.param_buffer.nbytes + chunk.grad_buffer.nbytes
    return total


# -- gradient clipping, folded into the step -------------------------------------------------------

def clipped_step(optimizer: Any, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Clip the gradients to a global norm of ``max_norm``, then step; returns the total norm.

    The same as ``torch.nn.utils.clip_grad_norm_(params, max_norm); optimizer.step()``: the factor
    min(1, max_norm / (total + 1e-6)) scales every gradient. On the fast path the factor is applied
    inside the update (one read of the gradients for the norm, from :func:`global_norm`, none to
    rescale them), so afterwards ``.grad`` holds the unclipped gradients there; where one GroupPlan
    holds every gradient, its kernel computes the norm too (:func:`plan_clipping_inside`). On the
    reference path (and for torch.optim optimizers) the gradients are clipped in place first, as
    torch does. The factor stays a tensor up to the kernels that take it as a number.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        optimizer.step()
        return torch.tensor(0.0)
    plan = plan_clipping_inside(optimizer, norm_type)
    if plan is not None:
        plan.total_norm = None
        optimizer.__dict__["_regopt_clip_in_kernel"] = max_norm
        try:
            optimizer.step()
        finally:
            del optimizer.__dict__["_regopt_clip_in_kernel"]
        if plan.total_norm is None:
            raise RuntimeError("regopt: the step did not take the plan it was given for clipping "
                               "(a step pre-hook changed the parameters or gradients?)")
        return plan.total_norm
    total = global_norm(optimizer, norm_type)
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)   # a tensor: no host sync here
    on_fast_path = isinstance(optimizer, RegularizedOptimizer)    # torch.optim's own: clip first
    reference_grads = [p.grad for group in optimizer.param_groups
                       if not (on_fast_path and group.get("fused"))
                       for p in group["params"] if p.grad is not None]
    scale_(reference_grads, factor)
    optimizer.__dict__["_regopt_grad_factor"] = factor
    try:
        optimizer.step()
    finally:
        del optimizer.__dict__["_regopt_grad_factor"]
    return total


def scale_(grads: list[torch.Tensor], factor: torch.Tensor) -> None:
    """grads *= factor in place, per device (clip_grad_norm_'s way: the factor stays a tensor,
    so that on a GPU nothing waits for the norm)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for grad in grads:
        by_device.setdefault(grad.device, []).append(grad)
    for device, same in by_device.items():
        torch._foreach_mul_(same, factor.to(device))


def plan_clipping_inside(optimizer: Any, norm_type: float) -> GroupPlan | None:
    """The GroupPlan that can clip inside its kernel: one group holds every gradient of the
    optimizer, its plan is a GroupPlan of a single-pass rule for these parameters, the norm is the
    2-norm. Then clipping costs no call of its own: the norm, the factor and the update are one
    kernel call (at the MLP's size the norm, the factor's arithmetic and their Python cost as
    much as the update). Else None: :func:`global_norm`, then the step."""
    if norm_type != 2.0 or not isinstance(optimizer, RegularizedOptimizer):
        return None
    holding = [(group, [p for p in group["params"] if p.grad is not None])
               for group in optimizer.param_groups]
    holding = [(group, params) for group, params in holding if params]
    if len(holding) != 1 or not holding[0][0].get("fused"):
        return None
    ((group, params),) = holding
    plan = current_group_plan(cache_of(optimizer).plans, group, params)
    return plan if plan is not None and plan.clipping_kernel(params) is not None else None


def current_group_plan(plans: dict[int, Any], group: dict[str, Any],
                       params: list[torch.Tensor]) -> GroupPlan | None:
    """The group's GroupPlan, if it is built for these parameters and options and this step's
    gradients fit it; else None."""
    plan = plans.get(id(group))
    if isinstance(plan, GroupPlan) and plan.key == plan_key(group, params) \
            and gradients_fit(params):
        return plan
    return None


def grad_squares(g):
    """The compiled kernel of :func:`global_norm` for one large gradient: sum g^2, in float64.

    Traced functions carry no annotations: with ``from __future__ import annotations`` they are
    strings, and a string in the traced graph's signature keeps Inductor from caching it on disk."""
    return (sum_of_squares(g),)


def global_norm(optimizer: Any, norm_type: float = 2.0) -> torch.Tensor:
    """The norm of all the optimizer's gradients together, as
    ``torch.nn.utils.get_total_norm([p.grad for p in params], norm_type)`` returns it.

    Where the optimizer compiles kernels for its fast path anyway (:func:`compiles`) and the norm
    is the 2-norm, the sums of squares come from compiled kernels that read each gradient as
    several streams (:func:`segments`), accumulated in float64: a small group's (GroupPlan) from one
    kernel call over all its gradients; the large gradients of other groups NORM_BUCKET per call
    (:func:`large_grad_squares`); the small ones, and the last few elements of large ones, from
    one ``_foreach_norm`` call. Elsewhere: torch's.
    """
    groups = [[p for p in group["params"] if p.grad is not None] for group in optimizer.param_groups]
    grads = [p.grad for params in groups for p in params]
    if norm_type != 2.0 or not isinstance(optimizer, RegularizedOptimizer) \
            or not any(map(partial(compiles, optimizer), optimizer.param_groups)):
        return torch.nn.utils.get_total_norm(grads, norm_type)
    plans = cache_of(optimizer).plans
    squared, large, small = [], [], []
    for group, params in zip(optimizer.param_groups, groups):
        plan = current_group_plan(plans, group, params)
        if plan is not None:
            squared.append(plan.grad_squares(params))
            continue
        for p in params:
            g = p.grad
            fits = (g.numel() >= SMALL_TENSOR and g.dtype in COMPILED_DTYPES
                    and g.layout is torch.strided and g.is_contiguous())
            (large if fits else small).append(g)
    squared.extend(large_grad_squares(large, small))
    if small:
        squared.append(torch.stack(torch._foreach_norm(small)).double().square().sum())
    device = grads[0].device
    total = squared[0] if len(squared) == 1 else torch.stack([s.to(device) for s in squared]).sum()
    return total.sqrt().to(grads[0].dtype)


NORM_BUCKET = 16
"""Large gradients per call of :func:`global_norm`'s kernels for several tensors. 100 gradients of
250k elements took 3.2 ms in 13 calls against 5.0 ms in 100 (one call for all of them, a kernel
compiled for their shapes, took 2.5 ms but 22 s to compile for each model; these compile in a few
seconds once). Gradients of one length (:func:`equal_length_buckets`), read side by side: 100 of
250k took 3.3 ms 16 per call against 4.1 ms 8 per call (BLAS's dot, one call each: 3.1 ms); 32
per call was slower again. (Steps keep STEP_BUCKET = 8: 16 were no faster there.)"""


def large_grad_squares(grads: list[torch.Tensor], rest: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sums of squares (float64, 0-d) of large contiguous gradients, by compiled kernels for any
    lengths: NORM_BUCKET gradients of one length per call (one loop over all of them, each read
    as one stream: :func:`joint_squares`), then NORM_BUCKET of any lengths per call, then one per
    call. Those last kernels read segments and see lengths divisible by READ_STREAMS
    (:func:`segments`): the last few elements of each, and every gradient whose kernel failed to
    compile, go to ``rest`` (for torch's norm)."""
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        by_kind.setdefault((g.dtype, g.device), []).append(g.view(-1))
    squared = []
    for (dtype, device), flats in by_kind.items():
        equal, flats = equal_length_buckets(flats, len, NORM_BUCKET)
        joint = squares_kernel(joint_squares, True, dtype, device) if equal else None
        if joint is None:
            flats += [g for bucket in equal for g in bucket]
        else:
            squared += [joint(*bucket)[0] for bucket in equal]
        bodies = []
        for flat in flats:
            body = flat.numel() - flat.numel() % READ_STREAMS
            bodies.append(flat[:body])
            if body < flat.numel():
                rest.append(flat[body:])
        one = kernel(grad_squares, ("tensor",), dtype, device, 0)
        if one is None:
            rest.extend(bodies)
            continue
        many = squares_kernel(group_grad_squares, False, dtype, device) \
            if len(bodies) >= NORM_BUCKET else None
        mixed, bodies = any_length_buckets(bodies, NORM_BUCKET) if many else ([], bodies)
        squared += [many(*bucket)[0] for bucket in mixed]
        squared += [one(body)[0] for body in bodies]
    return squared


def joint_squares(*grads):
    """sum g^2 over ``grads`` of one length, in float64: one loop that reads each as a stream."""
    wide = [g.to(torch.float64) for g in grads]
    return (sum(g * g for g in wide).sum(),)


def squares_kernel(function: Callable, equal: bool, dtype: torch.dtype,
                   device: torch.device) -> Callable | None:
    """``function`` over NORM_BUCKET tensors of one length (``equal``) or each of its own
    (:func:`bucket_examples`), compiled once per dtype."""
    def build() -> Callable:
        return compile_traced(function, bucket_examples(NORM_BUCKET, dtype, device, equal),
                              "symbolic")
    return cached_compile((function.__name__, NORM_BUCKET, str(dtype).removeprefix("torch."),
                           device.type), build)
