"""Which tensors get weight decay and L1: parameter groups for an optimizer.

The rule (as in nanoGPT and most modern training code): weight matrices and convolution kernels are
decayed, biases and normalization parameters (BatchNorm/LayerNorm weight and bias) are not, because
shrinking them toward zero does not reduce the capacity of the network, it only shifts or rescales
activations. "Weight matrix" is recognized by shape: a tensor with 2 or more dimensions.

Name patterns override the shape rule. Precedence, highest first:

1. ``no_decay`` pattern matches  -> not decayed
2. ``decay`` pattern matches     -> decayed
3. shape rule (:func:`is_no_decay`): ``param.ndim < 2`` -> not decayed, otherwise decayed

Patterns are :func:`fnmatch.fnmatchcase` patterns (case-sensitive; ``*`` also matches dots) over the
names from ``model.named_parameters()``, e.g. ``"*.bias"``, ``"embedding.*"``, ``"0.weight"``.
A tensor shared by several modules (tied weights) is listed once, under the first name it has, and
a pattern that matches any of its names applies to it.

Example::

    groups = param_groups(model, weight_decay=1e-2, lr=1e-3)
    optimizer = torch.optim.AdamW(groups)
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
from torch import nn

from regopt.errors import ConfigError

__all__ = ["is_no_decay", "param_groups", "decayed_parameters"]

Patterns = str | Iterable[str]


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Default rule: True for tensors with fewer than 2 dimensions (biases, normalization weights).

    ``name`` is unused by the default rule; it is part of the signature so a rule can look at it.
    """
    return param.ndim < 2


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.0,
    l1: float = 0.0,
    no_decay: Patterns = (),
    decay: Patterns = (),
    **group_options,
) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed group and a no-decay group.

    Returns up to two optimizer parameter groups, in this order (empty groups are dropped)::

        {"params": [...decayed...], "weight_decay": weight_decay, "l1": l1, **group_options}
        {"params": [...the rest...], "weight_decay": 0.0,          "l1": 0.0, **group_options}

    Only tensors with ``requires_grad`` are included; each tensor appears once. ``group_options``
    (``lr``, ``momentum``, ``decoupled_weight_decay``, ...) are copied into both groups. The groups
    work with regopt optimizers and with torch.optim ones (which ignore the extra ``l1`` key).
    See the module docstring for the decay rule and the precedence of ``no_decay`` / ``decay``.
    """
    weight_decay = _check_non_negative("weight_decay", weight_decay)
    l1 = _check_non_negative("l1", l1)
    if "params" in group_options:
        raise ConfigError("param_groups() takes the parameters from the model; do not pass params=")
    decayed, not_decayed = _split_parameters(model, no_decay, decay)
    groups = [
        {"params": decayed, "weight_decay": weight_decay, "l1": l1, **group_options},
        {"params": not_decayed, "weight_decay": 0.0, "l1": 0.0, **group_options},
    ]
    return [group for group in groups if group["params"]]


def decayed_parameters(model: nn.Module, no_decay: Patterns = (), decay: Patterns = ()) -> list[torch.Tensor]:
    """The tensors :func:`param_groups` puts in the decayed group (same rule, same order)."""
    decayed, _ = _split_parameters(model, no_decay, decay)
    return decayed


def _split_parameters(
    model: nn.Module, no_decay: Patterns, decay: Patterns
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(decayed, not decayed) trainable tensors of ``model``, in named_parameters() order, deduplicated."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    no_decay_patterns = _as_patterns("no_decay", no_decay)
    decay_patterns = _as_patterns("decay", decay)
    decayed, not_decayed = [], []
    for names, param in _named_unique_parameters(model):
        if not param.requires_grad:
            continue
        if _decays(names, param, no_decay_patterns, decay_patterns):
            decayed.append(param)
        else:
            not_decayed.append(param)
    return decayed, not_decayed


def _decays(names: list[str], param: torch.Tensor, no_decay: tuple[str, ...], decay: tuple[str, ...]) -> bool:
    """Precedence: explicit no_decay pattern > explicit decay pattern > shape rule."""
    if _any_match(names, no_decay):
        return False
    if _any_match(names, decay):
        return True
    return not is_no_decay(names[0], param)


def _named_unique_parameters(model: nn.Module) -> list[tuple[list[str], torch.Tensor]]:
    """Each distinct parameter tensor once, with every name it is reachable under (tied weights)."""
    by_id: dict[int, tuple[list[str], torch.Tensor]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), ([], param))[0].append(name)
    return list(by_id.values())


def _any_match(names: list[str], patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)


def _as_patterns(argument: str, patterns: Patterns) -> tuple[str, ...]:
    """A single string is one pattern (not a sequence of one-character patterns)."""
    if isinstance(patterns, str):
        return (patterns,)
    patterns = tuple(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"Invalid {argument} pattern: {pattern!r} (must be a string)")
    return patterns


def _check_non_negative(argument: str, value: float) -> float:
    """``value`` as a float, or ConfigError (a ValueError) naming the argument and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"Invalid {argument} value: {value!r} (must be a finite number >= 0)")
    return float(value)
