"""Tests for regopt.models: the MLP's layer order, shapes, validation and parameter count."""

import pytest
import torch
from torch import nn

from regopt.errors import ConfigError
from regopt.models import ACTIVATIONS, MLP, build_mlp, count_parameters


def layer_types(model: MLP) -> list[type]:
    return [type(layer) for layer in model.layers]


def test_default_layers_and_output_shape():
    model = MLP()
    assert layer_types(model) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(l.in_features, l.out_features) for l in model.layers if isinstance(l, nn.Linear)] == [
        (784, 256), (256, 128), (128, 10)
    ]
    assert model(torch.randn(5, 784)).shape == (5, 10)


def test_batchnorm_before_activation_dropout_after():
    model = MLP((20, 16, 8, 4), activation="tanh", dropout=0.3, batchnorm=True)
    hidden = [nn.Linear, nn.BatchNorm1d, nn.Tanh, nn.Dropout]
    assert layer_types(model) == hidden + hidden + [nn.Linear]
    assert [l.p for l in model.layers if isinstance(l, nn.Dropout)] == [0.3, 0.3]
    assert [l.num_features for l in model.layers if isinstance(l, nn.BatchNorm1d)] == [16, 8]


def test_state_dict_keys_are_stable():
    keys = list(MLP((6, 5, 3), batchnorm=True).state_dict())
    assert keys == [
        "layers.0.weight", "layers.0.bias",
        "layers.1.weight", "layers.1.bias", "layers.1.running_mean", "layers.1.running_var",
        "layers.1.num_batches_tracked",
        "layers.3.weight", "layers.3.bias",
    ]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation(name):
    model = MLP((4, 3, 2), activation=name)
    assert isinstance(model.layers[1], ACTIVATIONS[name])
    assert model(torch.randn(2, 4)).shape == (2, 2)


def test_activation_name_is_normalized():
    assert isinstance(MLP((4, 3, 2), activation="Leaky-ReLU").layers[1], nn.LeakyReLU)


def test_bad_activation_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown activation 'rellu'; did you mean 'relu'\?"):
        MLP(activation="rellu")
    with pytest.raises(ConfigError, match=r"unknown activation 'softmax' \(known: relu, tanh"):
        MLP(activation="softmax")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sizes": (784,)}, "MLP sizes need at least inputs and classes"),
        ({"sizes": (784, 0, 10)}, "MLP sizes must be integers >= 1"),
        ({"sizes": (784, 2.5, 10)}, "MLP sizes must be integers >= 1"),
        ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be a probability in \[0, 1\), got -0.1"),
    ],
)
def test_bad_sizes_and_dropout(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MLP(**kwargs)


def test_init_is_deterministic_under_manual_seed():
    torch.manual_seed(42)
    first = MLP((10, 7, 3)).state_dict()
    torch.manual_seed(42)
    second = MLP((10, 7, 3)).state_dict()
    torch.manual_seed(43)
    third = MLP((10, 7, 3)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["layers.0.weight"], third["layers.0.weight"])


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = MLP((8, 64, 2), dropout=0.5)
    x = torch.randn(4, 8)
    assert not torch.equal(model(x), model(x))  # different dropout masks
    model.eval()
    assert torch.equal(model(x), model(x))


def test_image_shaped_input_is_flattened():
    model = MLP((16, 5, 3))
    x = torch.randn(2, 4, 4)
    assert torch.equal(model(x), model(x.reshape(2, 16)))


def test_count_parameters():
    assert count_parameters(MLP()) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10 == 235_146
    assert count_parameters(MLP(batchnorm=True)) == 235_146 + 2 * (256 + 128)
    model = MLP((3, 2))
    model.layers[0].bias.requires_grad_(False)
    assert count_parameters(model) == 6
    assert count_parameters(model, trainable_only=False) == 8


def test_build_mlp():
    model = build_mlp(64, 10, hidden=(32,), activation="gelu", dropout=0.1)
    assert model.sizes == (64, 32, 10)
    assert layer_types(model) == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert build_mlp(20, 4).sizes == (20, 256, 128, 4)
    assert layer_types(build_mlp(20, 4, hidden=())) == [nn.Linear]  # logistic regression


def test_input_dropout_comes_first_and_only_when_asked():
    model = MLP((8, 4, 2), dropout=0.1, input_dropout=0.2)
    assert isinstance(model.layers[0], nn.Dropout) and model.layers[0].p == 0.2
    assert not isinstance(MLP((8, 4, 2)).layers[0], nn.Dropout)
    with pytest.raises(ConfigError):
        MLP((8, 4, 2), input_dropout=1.0)
