"""Tests for regopt.regularize.groups and regopt.regularize.penalties (torch and NumPy as oracles)."""
import numpy as np
import pytest
import torch
from torch import nn

from regopt.errors import ConfigError
from regopt.regularize import L1, L2, ElasticNet, decayed_parameters, is_no_decay, param_groups


def make_model(dtype=torch.float64, seed=0):
    """Linear -> BatchNorm -> ReLU -> Linear: names 0.weight 0.bias 1.weight 1.bias 3.weight 3.bias."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():  # non-trivial norm parameters, so a test can tell them apart from zeros/ones
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.to(dtype)


def ids(tensors):
    return [id(t) for t in tensors]


def named(model, *names):
    params = dict(model.named_parameters())
    return [id(params[name]) for name in names]


class TiedModel(nn.Module):
    """An embedding whose weight is shared with the output layer (weight tying)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6)
        self.head.weight = self.embed.weight


# ---------------------------------------------------------------------------------------------------
# param_groups / decayed_parameters


def test_is_no_decay_uses_ndim():
    assert is_no_decay("x.bias", torch.zeros(3))
    assert is_no_decay("scalar", torch.zeros(()))
    assert not is_no_decay("x.weight", torch.zeros(3, 2))
    assert not is_no_decay("conv.weight", torch.zeros(3, 2, 3, 3))


def test_default_split_decays_matrices_only():
    model = make_model()
    groups = param_groups(model, weight_decay=0.1, l1=0.01, lr=0.5, momentum=0.9)
    assert len(groups) == 2
    decayed, rest = groups
    assert ids(decayed["params"]) == named(model, "0.weight", "3.weight")
    assert ids(rest["params"]) == named(model, "0.bias", "1.weight", "1.bias", "3.bias")
    assert (decayed["weight_decay"], decayed["l1"]) == (0.1, 0.01)
    assert (rest["weight_decay"], rest["l1"]) == (0.0, 0.0)
    for group in groups:
        assert (group["lr"], group["momentum"]) == (0.5, 0.9)
    assert ids(decayed_parameters(model)) == ids(decayed["params"])


def test_precedence_no_decay_over_decay_over_ndim():
    model = make_model()
    # decay pattern beats the ndim rule: the BatchNorm weight (1-d) is decayed
    decayed = decayed_parameters(model, decay=["1.weight"])
    assert ids(decayed) == named(model, "0.weight", "1.weight", "3.weight")
    # no_decay pattern beats the ndim rule: a 2-d weight is not decayed
    decayed = decayed_parameters(model, no_decay=["0.*"])
    assert ids(decayed) == named(model, "3.weight")
    # no_decay beats decay when both match
    decayed = decayed_parameters(model, decay=["*.bias"], no_decay=["3.*"])
    assert ids(decayed) == named(model, "0.weight", "0.bias", "1.bias")


def test_single_string_pattern_is_one_pattern():
    model = make_model()
    assert ids(decayed_parameters(model, no_decay="3.weight")) == named(model, "0.weight")
    # a string must not be split into one-character patterns ("*" would match everything)
    assert ids(decayed_parameters(model, no_decay="*x")) == named(model, "0.weight", "3.weight")


def test_empty_groups_are_dropped_and_frozen_params_skipped():
    model = nn.Linear(3, 2, bias=False)
    groups = param_groups(model, weight_decay=0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1
    model = make_model()
    model[0].weight.requires_grad_(False)
    model[1].requires_grad_(False)
    decayed, rest = param_groups(model, weight_decay=0.1)
    assert ids(decayed["params"]) == named(model, "3.weight")
    assert ids(rest["params"]) == named(model, "0.bias", "3.bias")
    assert param_groups(nn.ReLU()) == []


def test_tied_parameters_appear_once_and_any_name_matches():
    model = TiedModel()
    groups = param_groups(model, weight_decay=0.1)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len(set(ids(all_params))) == 2  # shared weight + head.bias
    assert ids(groups[0]["params"]) == [id(model.embed.weight)]
    # the shared tensor is reachable as embed.weight and head.weight; a pattern on either name applies
    assert decayed_parameters(model, no_decay="head.weight") == []
    assert decayed_parameters(model, no_decay="embed.*") == []


@pytest.mark.parametrize("argument,value", [("weight_decay", -0.1), ("l1", -2.0), ("l1", float("nan"))])
def test_param_groups_rejects_negative_strength(argument, value):
    with pytest.raises(ValueError, match=rf"{argument} value: {value}"):
        param_groups(make_model(), **{argument: value})


def test_param_groups_rejects_bad_input():
    with pytest.raises(ConfigError, match="params"):
        param_groups(make_model(), params=[])
    with pytest.raises(TypeError, match="nn.Module"):
        param_groups([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ConfigError, match="no_decay pattern"):
        decayed_parameters(make_model(), no_decay=[3])


def test_groups_with_torch_adamw_decay_only_weights():
    model = make_model()
    lr, wd = 0.01, 0.1
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=wd), lr=lr)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's step is 0, so only the decoupled decay moves weights
    optimizer.step()
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            assert torch.equal(p, before[name] * (1 - lr * wd)), name
            assert not torch.equal(p, before[name])
        else:
            assert torch.equal(p, before[name]), name


# ---------------------------------------------------------------------------------------------------
# penalties


def decayed_numpy(model):
    return [p.detach().numpy() for name, p in model.named_parameters() if p.ndim >= 2]


@pytest.mark.parametrize("lam", [0.0, 0.3, 2.5])
def test_penalty_values_match_numpy(lam):
    model = make_model()
    weights = decayed_numpy(model)
    sum_abs = sum(np.abs(w).sum() for w in weights)
    sum_sq = sum((w * w).sum() for w in weights)
    np.testing.assert_allclose(L1(lam)(model).item(), lam * sum_abs, rtol=1e-12, atol=0)
    np.testing.assert_allclose(L2(lam)(model).item(), lam / 2 * sum_sq, rtol=1e-12, atol=0)
    elastic = ElasticNet(lam, 0.7)(model).item()
    np.testing.assert_allclose(elastic, lam * sum_abs + 0.35 * sum_sq, rtol=1e-12, atol=0)


def test_penalty_gradients_match_formula():
    model = make_model()
    with torch.no_grad():
        model[0].weight[0, :2] = 0.0  # subgradient at 0 is 0
    lam = 0.3
    L1(lam)(model).backward()
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            assert torch.equal(p.grad, lam * torch.sign(p.detach())), name
        else:
            assert p.grad is None, name  # biases and BatchNorm parameters are not penalized
    assert torch.equal(model[0].weight.grad[0, :2], torch.zeros(2, dtype=torch.float64))
    model.zero_grad(set_to_none=True)
    L2(lam)(model).backward()
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            torch.testing.assert_close(p.grad, lam * p.detach(), rtol=1e-14, atol=1e-15)
        else:
            assert p.grad is None, name


def test_penalty_excludes_biases_by_default_and_patterns_include_them():
    model = make_model()
    value = L2(1.0)(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2:
                p.add_(3.0)
    assert torch.equal(L2(1.0)(model), value)  # biases / norm params changed, penalty did not
    with_biases = L1(1.0, decay="*.bias")(model).item()
    covered = [p for name, p in model.named_parameters() if p.ndim >= 2 or name.endswith("bias")]
    expected = sum(p.detach().abs().sum().item() for p in covered)
    assert with_biases == pytest.approx(expected, rel=1e-12)
    assert L1(1.0, no_decay="*")(model).item() == 0.0


def test_elastic_net_is_l1_plus_l2_value_and_gradient():
    a, b = make_model(seed=1), make_model(seed=1)
    elastic = ElasticNet(0.2, 0.05)(a)
    separate = L1(0.2)(b) + L2(0.05)(b)
    torch.testing.assert_close(elastic, separate, rtol=1e-14, atol=0)
    elastic.backward()
    separate.backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.grad is None:
            assert pb.grad is None
        else:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_l2_loss_term_equals_coupled_weight_decay_in_sgd(momentum):
    lam, lr = 0.05, 0.1
    torch.manual_seed(3)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    with_penalty, with_decay = make_model(seed=2), make_model(seed=2)
    with_penalty.eval(), with_decay.eval()  # BatchNorm uses running stats: both models see the same function
    opt_penalty = torch.optim.SGD(with_penalty.parameters(), lr=lr, momentum=momentum)
    opt_decay = torch.optim.SGD(param_groups(with_decay, weight_decay=lam), lr=lr, momentum=momentum)
    penalty = L2(lam)
    for _ in range(3):
        for model, optimizer, extra in ((with_penalty, opt_penalty, penalty), (with_decay, opt_decay, None)):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if extra is not None:
                loss = loss + extra(model)
            loss.backward()
            optimizer.step()
    for (name, pa), pb in zip(with_penalty.named_parameters(), with_decay.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12, msg=name)
    assert not torch.equal(with_penalty[0].weight, make_model(seed=2)[0].weight)


def test_penalty_of_model_without_decayed_tensors_is_zero():
    model = nn.BatchNorm1d(3).to(torch.float64)
    value = L2(1.0)(model)
    assert value.item() == 0.0 and value.dtype == torch.float64 and value.ndim == 0


def test_penalty_keeps_float32():
    model = make_model(dtype=torch.float32)
    assert L1(0.1)(model).dtype == torch.float32


@pytest.mark.parametrize(
    "make,argument,value",
    [(lambda: L1(-1.0), "lam", "-1.0"), (lambda: L2(float("inf")), "lam", "inf"),
     (lambda: ElasticNet(0.1, -0.2), "l2", "-0.2"), (lambda: ElasticNet(-3, 0.1), "l1", "-3")],
)
def test_penalty_rejects_bad_strength(make, argument, value):
    with pytest.raises(ValueError, match=rf"Invalid {argument} value: {value}"):
        make()


def test_penalty_repr():
    assert repr(L1(0.001)) == "L1(lam=0.001)"
    assert repr(L2(0.5)) == "L2(lam=0.5)"
    assert repr(ElasticNet(0.1, 0.2)) == "ElasticNet(l1=0.1, l2=0.2)"
    assert repr(L2(1, no_decay="head.*")) == "L2(lam=1.0, no_decay=('head.*',))"
