"""The multilayer perceptron regopt trains.

Per hidden layer: Linear -> [BatchNorm1d] -> activation -> [Dropout(p)]; the last Linear gives
the logits. BatchNorm (Ioffe & Szegedy, 2015) sits before the nonlinearity as in the paper;
dropout (Srivastava et al., 2014) after it, and only when p > 0. The layers live in one
nn.Sequential, `self.layers`, so state_dict keys ("layers.0.weight", ...) are stable for a given
configuration. Weights use torch's default initialization, so torch.manual_seed fixes them.
"""

from __future__ import annotations

import difflib
from numbers import Integral, Real
from typing import Sequence

import torch
from torch import nn

from regopt.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Module):
    """sizes = (inputs, hidden_1, ..., hidden_k, classes); len(sizes) - 1 Linear layers.

    Inputs of shape [N, D] (or [N, ...], flattened to [N, D]); output logits [N, classes].

    >>> model = MLP((784, 256, 128, 10), activation="relu", dropout=0.2, batchnorm=True)
    >>> model(torch.zeros(2, 784)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        sizes: Sequence[int] = (784, 256, 128, 10),
        activation: str = "relu",
        dropout: float = 0.0,
        batchnorm: bool = False,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.sizes = _check_sizes(sizes)
        self.activation = _check_activation(activation)
        self.dropout = _check_dropout(dropout)
        self.batchnorm = bool(batchnorm)
        self.input_dropout = _check_dropout(input_dropout)
        self.layers = nn.Sequential(*self._build_layers())

    def _build_layers(self) -> list[nn.Module]:
        layers: list[nn.Module] = []
        if self.input_dropout > 0:  # dropout of input pixels (Srivastava et al., 2014, used 0.2)
            layers.append(nn.Dropout(self.input_dropout))
        hidden_sizes = zip(self.sizes[:-2], self.sizes[1:-1])
        for inputs, outputs in hidden_sizes:
            layers.append(nn.Linear(inputs, outputs))
            if self.batchnorm:
                layers.append(nn.BatchNorm1d(outputs))
            layers.append(ACTIVATIONS[self.activation]())
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
        layers.append(nn.Linear(self.sizes[-2], self.sizes[-1]))
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


def build_mlp(
    num_features: int, num_classes: int, hidden: Sequence[int] = (256, 128), **kwargs
) -> MLP:
    """MLP((num_features, *hidden, num_classes), **kwargs); hidden=() is logistic regression."""
    return MLP((num_features, *hidden, num_classes), **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (those with requires_grad when trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if len(sizes) < 2:
        raise ConfigError(f"MLP sizes need at least inputs and classes, got {sizes}")
    if any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in sizes):
        raise ConfigError(f"MLP sizes must be integers >= 1, got {sizes}")
    return tuple(int(s) for s in sizes)


def _check_activation(activation: str) -> str:
    key = str(activation).strip().lower().replace("-", "_")
    if key not in ACTIVATIONS:
        close = difflib.get_close_matches(key, list(ACTIVATIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown activation {activation!r}{hint} (known: {', '.join(ACTIVATIONS)})"
        )
    return key


def _check_dropout(dropout: float) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)
