"""regopt.optim against torch.optim (the for-loop implementation) on the same models and data.

Each case trains two identical models for 100+ steps, one with regopt and one with torch.optim, and
requires parameters and optimizer state to agree within 1e-10 relative (float64) or 1e-5 (float32).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import regopt.optim as ro

STEPS = 120


def make_model(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model.to(dtype)


def batches(dtype: torch.dtype, steps: int = STEPS, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=generator, dtype=dtype)
        y = torch.randint(0, 3, (16,), generator=generator)
        yield x, y


def groups_of(model: torch.nn.Module, split: bool) -> list[dict] | list[torch.Tensor]:
    """One group, or two groups with different options (weights / biases)."""
    params = list(model.parameters())
    if not split:
        return params
    return [{"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "lr": 0.5e-2, "weight_decay": 0.0}]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


def train_side_by_side(ours_cls, theirs_cls, options: dict, dtype=torch.float64, split=False,
                       steps: int = STEPS):
    model_ours, model_theirs = make_model(dtype), make_model(dtype)
    ours = ours_cls(groups_of(model_ours, split), **options)
    theirs = theirs_cls(groups_of(model_theirs, split), foreach=False, **options)
    for x, y in batches(dtype, steps):
        for model, optimizer in ((model_ours, ours), (model_theirs, theirs)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model_ours, model_theirs, ours, theirs


def assert_agree(model_ours, model_theirs, ours, theirs, tolerance: float) -> None:
    for p_ours, p_theirs in zip(model_ours.parameters(), model_theirs.parameters()):
        assert relative_error(p_ours, p_theirs) <= tolerance
    for p_ours, p_theirs in zip(model_ours.parameters(), model_theirs.parameters()):
        state_ours, state_theirs = ours.state[p_ours], theirs.state[p_theirs]
        assert set(state_ours) == set(state_theirs)
        for key in state_theirs:
            a, b = state_ours[key], state_theirs[key]
            if isinstance(b, torch.Tensor):
                assert relative_error(a.to(b.dtype), b) <= tolerance, key
            else:
                assert a == b, key


def grid(**axes):
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


SGD_CASES = [c for c in grid(lr=[0.05], momentum=[0.0, 0.9], dampening=[0.0, 0.1],
                             nesterov=[False, True], weight_decay=[0.0, 1e-2],
                             maximize=[False, True])
             if not (c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0))]
ADAM_CASES = grid(lr=[1e-2], amsgrad=[False, True], weight_decay=[0.0, 1e-2],
                  maximize=[False, True], decoupled_weight_decay=[False, True])
ADAMW_CASES = grid(lr=[1e-2], amsgrad=[False, True], weight_decay=[0.0, 1e-1],
                   maximize=[False, True])
ADAGRAD_CASES = grid(lr=[5e-2], lr_decay=[0.0, 1e-2], weight_decay=[0.0, 1e-2],
                     initial_accumulator_value=[0.0, 0.1], maximize=[False, True])
RMSPROP_CASES = grid(lr=[1e-3], alpha=[0.9], momentum=[0.0, 0.9], centered=[False, True],
                     weight_decay=[0.0, 1e-2], maximize=[False, True])

PAIRS = ([(ro.SGD, torch.optim.SGD, c) for c in SGD_CASES]
         + [(ro.Adam, torch.optim.Adam, c) for c in ADAM_CASES]
         + [(ro.AdamW, torch.optim.AdamW, c) for c in ADAMW_CASES]
         + [(ro.Adagrad, torch.optim.Adagrad, c) for c in ADAGRAD_CASES]
         + [(ro.RMSprop, torch.optim.RMSprop, c) for c in RMSPROP_CASES])


def case_id(pair) -> str:
    ours, _, options = pair
    return ours.__name__ + "-" + "-".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("pair", PAIRS, ids=[case_id(p) for p in PAIRS])
def test_matches_torch_float64(pair):
    ours_cls, theirs_cls, options = pair
    assert_agree(*train_side_by_side(ours_cls, theirs_cls, options), tolerance=1e-10)


@pytest.mark.parametrize("ours_cls,theirs_cls,options", [
    (ro.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    (ro.Adam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=1e-2)),
    (ro.AdamW, torch.optim.AdamW, dict(lr=1e-2)),
    (ro.Adagrad, torch.optim.Adagrad, dict(lr=5e-2, lr_decay=1e-3)),
    (ro.RMSprop, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.9, centered=True)),
])
def test_matches_torch_float32_and_param_groups(ours_cls, theirs_cls, options):
    assert_agree(*train_side_by_side(ours_cls, theirs_cls, options, dtype=torch.float32),
                 tolerance=1e-5)
    assert_agree(*train_side_by_side(ours_cls, theirs_cls, options, split=True), tolerance=1e-10)


@pytest.mark.parametrize("ours_cls,theirs_cls", [
    (ro.SGD, torch.optim.SGD), (ro.Adam, torch.optim.Adam), (ro.AdamW, torch.optim.AdamW),
    (ro.Adagrad, torch.optim.Adagrad), (ro.RMSprop, torch.optim.RMSprop)])
def test_defaults_and_group_keys_match_torch(ours_cls, theirs_cls):
    params = [torch.nn.Parameter(torch.zeros(2))]
    ours, theirs = ours_cls(params), theirs_cls(params)
    for key, value in theirs.defaults.items():
        assert ours.defaults[key] == value, key


def test_params_without_grad_are_skipped():
    model_ours, model_theirs = make_model(torch.float64), make_model(torch.float64)
    model_ours[0].weight.requires_grad_(False)
    model_theirs[0].weight.requires_grad_(False)
    frozen = model_ours[0].weight.detach().clone()
    ours = ro.Adam(model_ours.parameters(), lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.Adam(model_theirs.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    for x, y in batches(torch.float64, 10):
        for model, optimizer in ((model_ours, ours), (model_theirs, theirs)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert torch.equal(model_ours[0].weight, frozen)
    assert model_ours[0].weight not in ours.state
    assert_agree(model_ours, model_theirs, ours, theirs, tolerance=1e-10)


def test_torch_state_dict_loads_into_regopt():
    """Swapping the import keeps a saved torch.optim checkpoint usable."""
    model_ours, model_theirs = make_model(torch.float64), make_model(torch.float64)
    theirs = torch.optim.Adam(model_theirs.parameters(), lr=1e-2, foreach=False)
    data = list(batches(torch.float64, 20))
    for x, y in data[:10]:
        theirs.zero_grad()
        torch.nn.functional.cross_entropy(model_theirs(x), y).backward()
        theirs.step()
    model_ours.load_state_dict(model_theirs.state_dict())
    ours = ro.Adam(model_ours.parameters())
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert ours.param_groups[0]["l1"] == 0.0
    for x, y in data[10:]:
        for model, optimizer in ((model_ours, ours), (model_theirs, theirs)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert_agree(model_ours, model_theirs, ours, theirs, tolerance=1e-10)
