"""L1, L2 and elastic-net penalties: loss terms added to the data loss before ``backward()``.

    L1(lam)            = lam * sum |w|                          (Tibshirani 1996, the lasso)
    L2(lam)            = (lam / 2) * sum w^2                    (Hoerl & Kennard 1970, ridge)
    ElasticNet(l1, l2) = l1 * sum |w| + (l2 / 2) * sum w^2      (Zou & Hastie 2005)

The sums run over the decayed tensors of the model (see :mod:`regopt.regularize.groups`: weight
matrices, not biases or normalization parameters), unless ``no_decay=`` / ``decay=`` patterns say
otherwise. The gradient of L2(lam) is lam * w, exactly the coupled ``weight_decay=lam`` of
torch.optim.SGD; the gradient of L1(lam) is the subgradient lam * sign(w) (0 at w == 0), which makes
weights oscillate around zero rather than reach it: for exact zeros use the optimizers' proximal
``l1=`` option instead.

Example::

    penalty = L2(1e-4)
    loss = F.cross_entropy(model(x), y) + penalty(model)
    loss.backward()
"""
from __future__ import annotations

import abc
import functools

import torch
from torch import nn

from regopt.regularize.groups import Patterns, _as_patterns, _check_non_negative, decayed_parameters

__all__ = ["Penalty", "L1", "L2", "ElasticNet"]


class Penalty(abc.ABC):
    """Base class: selects the tensors a penalty covers and computes per-tensor norms in one call."""

    def __init__(self, no_decay: Patterns = (), decay: Patterns = ()):
        self.no_decay = _as_patterns("no_decay", no_decay)
        self.decay = _as_patterns("decay", decay)

    def tensors_of(self, model: nn.Module) -> list[torch.Tensor]:
        """The tensors of ``model`` this penalty covers (select once, then ``compute`` each step)."""
        return decayed_parameters(model, no_decay=self.no_decay, decay=self.decay)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The penalty for ``model`` as a scalar tensor that autograd can differentiate."""
        tensors = self.tensors_of(model)
        if not tensors:
            return _zero_like_model(model)
        return self.compute(tensors)

    @abc.abstractmethod
    def compute(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The penalty over the selected tensors (each subclass gives its formula)."""

    def _pattern_repr(self) -> str:
        parts = [f"no_decay={self.no_decay!r}"] if self.no_decay else []
        parts += [f"decay={self.decay!r}"] if self.decay else []
        return "".join(f", {part}" for part in parts)


class L1(Penalty):
    """lam * sum |w| over the selected tensors (the lasso penalty; Tibshirani 1996)."""

    def __init__(self, lam: float, no_decay: Patterns = (), decay: Patterns = ()):
        super().__init__(no_decay, decay)
        self.lam = _check_non_negative("lam", lam)

    def compute(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return self.lam * sum_abs(tensors)

    def __repr__(self) -> str:
        return f"L1(lam={self.lam!r}{self._pattern_repr()})"


class L2(Penalty):
    """(lam / 2) * sum w^2 over the selected tensors; gradient lam * w (ridge; Hoerl & Kennard 1970)."""

    def __init__(self, lam: float, no_decay: Patterns = (), decay: Patterns = ()):
        super().__init__(no_decay, decay)
        self.lam = _check_non_negative("lam", lam)

    def compute(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return (self.lam / 2) * sum_squares(tensors)

    def __repr__(self) -> str:
        return f"L2(lam={self.lam!r}{self._pattern_repr()})"


class ElasticNet(Penalty):
    """l1 * sum |w| + (l2 / 2) * sum w^2 over the selected tensors (Zou & Hastie 2005)."""

    def __init__(self, l1: float, l2: float, no_decay: Patterns = (), decay: Patterns = ()):
        super().__init__(no_decay, decay)
        self.l1 = _check_non_negative("l1", l1)
        self.l2 = _check_non_negative("l2", l2)

    def compute(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return self.l1 * sum_abs(tensors) + (self.l2 / 2) * sum_squares(tensors)

    def __repr__(self) -> str:
        return f"ElasticNet(l1={self.l1!r}, l2={self.l2!r}{self._pattern_repr()})"


def sum_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """sum over all tensors of sum |w|: one _foreach_norm(ord=1) call, then a sum of the per-tensor norms."""
    return torch.stack(torch._foreach_norm(tensors, 1, dtype=_common_dtype(tensors))).sum()


def sum_squares(tensors: list[torch.Tensor]) -> torch.Tensor:
    """sum over all tensors of sum w^2 = sum of squared per-tensor L2 norms (one _foreach_norm call)."""
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=_common_dtype(tensors))).square().sum()


def _common_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    """The promoted dtype, so a model that mixes float32 and float64 tensors still stacks."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def _zero_like_model(model: nn.Module) -> torch.Tensor:
    """0 on the device/dtype of the model's first parameter (CPU/default dtype for a parameterless model)."""
    first = next(model.parameters(), None)
    if first is None:
        return torch.zeros(())
    return torch.zeros((), dtype=first.dtype, device=first.device)

