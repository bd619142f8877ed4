"""regopt.optim: drop-in torch.optim optimizers, each with every regularizer.

Every class here is a ``torch.optim.Optimizer``; the regularization options shared by all of them
(``weight_decay``, ``decoupled_weight_decay``, ``decay_scaled_by_lr``, ``l1``) are documented in
:mod:`regopt.optim.base`.
"""

from __future__ import annotations

import difflib

from ..errors import ConfigError
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .base import RegularizedOptimizer
from .lamb import LAMB
from .lars import LARS
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "LARS", "LAMB", "RegularizedOptimizer",
           "OPTIMIZERS", "get_optimizer"]

OPTIMIZERS: dict[str, type[RegularizedOptimizer]] = {
    "sgd": SGD,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "lars": LARS,
    "lamb": LAMB,
}


def get_optimizer(name: str) -> type[RegularizedOptimizer]:
    """The optimizer class for a name such as "adam" (case-insensitive)."""
    key = name.strip().lower()
    if key in OPTIMIZERS:
        return OPTIMIZERS[key]
    close = difflib.get_close_matches(key, list(OPTIMIZERS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown optimizer '{name}'{hint}; choose from {', '.join(OPTIMIZERS)}")
