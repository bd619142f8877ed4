"""Checkpointing, schedulers, regularization options, validation and sparse gradients."""

from __future__ import annotations

import io

import pytest
import torch

import regopt.optim as ro
from regopt.errors import ConfigError

ALL = [ro.SGD, ro.Adagrad, ro.RMSprop, ro.Adam, ro.AdamW, ro.LARS, ro.LAMB]
RICH_OPTIONS = {
    ro.SGD: dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, l1=1e-3),
    ro.Adagrad: dict(lr=0.05, lr_decay=1e-3, weight_decay=1e-3),
    ro.RMSprop: dict(lr=1e-3, momentum=0.9, centered=True, l1=1e-3),
    ro.Adam: dict(lr=1e-2, amsgrad=True, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3),
    ro.AdamW: dict(lr=1e-2, weight_decay=1e-1, decay_scaled_by_lr=False),
    ro.LARS: dict(lr=1.0, momentum=0.9, weight_decay=1e-4),
    ro.LAMB: dict(lr=1e-2, weight_decay=1e-2, l1=1e-4),
}


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    generator = torch.Generator().manual_seed(seed + 1)
    data = [(torch.randn(8, 5, generator=generator), torch.randint(0, 3, (8,), generator=generator))
            for _ in range(30)]
    return model, data


def train(model, optimizer, data, scheduler=None):
    for x, y in data:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_state_dict_mid_training_continues_identically(cls):
    model, data = model_and_data()
    optimizer = cls(model.parameters(), **RICH_OPTIONS[cls])
    train(model, optimizer, data[:15])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, data[15:])

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model, _ = model_and_data(seed=99)           # different initial weights on purpose
    resumed_model.load_state_dict(saved["model"])
    resumed = cls(resumed_model.parameters(), lr=123.0)  # the saved groups override these
    resumed.load_state_dict(saved["optimizer"])
    train(resumed_model, resumed, data[15:])
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make_scheduler", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5),
    lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=30),
], ids=["step", "cosine", "onecycle"])
def test_lr_schedulers_drive_regopt_as_they_drive_torch(make_scheduler):
    model_ours, data = model_and_data()
    model_theirs, _ = model_and_data()
    ours = ro.Adam(model_ours.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(model_theirs.parameters(), lr=1e-2, foreach=False)
    train(model_ours, ours, data, make_scheduler(ours))
    train(model_theirs, theirs, data, make_scheduler(theirs))
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    for a, b in zip(model_ours.parameters(), model_theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_proximal_l1_gives_exact_zeros_and_subgradient_does_not():
    model_prox, data = model_and_data()
    model_sub, _ = model_and_data()
    prox = ro.SGD(model_prox.parameters(), lr=0.1, l1=0.05)
    sub = ro.SGD(model_sub.parameters(), lr=0.1)
    for x, y in data * 3:
        prox.zero_grad()
        torch.nn.functional.cross_entropy(model_prox(x), y).backward()
        prox.step()
        sub.zero_grad()
        loss = torch.nn.functional.cross_entropy(model_sub(x), y)
        (loss + 0.05 * sum(p.abs().sum() for p in model_sub.parameters())).backward()
        sub.step()
    zeros_prox = sum((p == 0).sum().item() for p in model_prox.parameters())
    zeros_sub = sum((p == 0).sum().item() for p in model_sub.parameters())
    assert zeros_prox > 20
    assert zeros_sub == 0


def test_soft_threshold_formula_on_one_step():
    w = torch.nn.Parameter(torch.tensor([0.30, -0.30, 0.04, -0.04, 0.0], dtype=torch.float64))
    w.grad = torch.zeros_like(w)
    ro.SGD([w], lr=0.5, l1=0.1).step()                   # threshold lr * l1 = 0.05
    expected = torch.tensor([0.25, -0.25, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.equal(w.detach() == 0, expected == 0)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_l1_option_works_on_every_optimizer(cls):
    model, data = model_and_data()
    options = dict(RICH_OPTIONS[cls])
    options["l1"] = 0.02 / options["lr"]                 # a soft threshold of 0.02 per step
    train(model, cls(model.parameters(), **options), data)
    assert sum((p == 0).sum().item() for p in model.parameters()) > 0


def one_step_with_zero_gradient(cls, w0: torch.Tensor, **options) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    w.grad = torch.zeros_like(w)
    cls([w], **options).step()
    return w.detach()


def test_coupled_and_decoupled_decay_differ_as_documented():
    w0 = torch.tensor([2.0, -0.5, 0.1], dtype=torch.float64)
    lr, decay = 0.1, 0.01
    decoupled = one_step_with_zero_gradient(ro.Adam, w0, lr=lr, weight_decay=decay,
                                            decoupled_weight_decay=True)
    coupled = one_step_with_zero_gradient(ro.Adam, w0, lr=lr, weight_decay=decay)
    unscaled = one_step_with_zero_gradient(ro.AdamW, w0, lr=lr, weight_decay=decay,
                                           decay_scaled_by_lr=False)
    torch.testing.assert_close(decoupled, w0 * (1 - lr * decay), rtol=1e-15, atol=0)
    torch.testing.assert_close(unscaled, w0 * (1 - decay), rtol=1e-15, atol=0)
    # Coupled: Adam normalizes the decay gradient lambda*w, so every weight moves by about lr.
    torch.testing.assert_close(coupled, w0 - lr * torch.sign(w0), rtol=1e-4, atol=1e-6)


def test_coupled_and_decoupled_decay_coincide_for_plain_sgd():
    model_a, data = model_and_data()
    model_b, _ = model_and_data()
    train(model_a, ro.SGD(model_a.parameters(), lr=0.1, weight_decay=0.01), data)
    train(model_b, ro.SGD(model_b.parameters(), lr=0.1, weight_decay=0.01,
                          decoupled_weight_decay=True), data)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_trust_ratio_is_one_for_zero_weights():
    for cls in (ro.LARS, ro.LAMB):
        w = torch.nn.Parameter(torch.zeros(3, 3))
        w.grad = torch.ones(3, 3)
        cls([w], lr=0.1, eps=1e-8).step()
        assert torch.isfinite(w).all() and (w != 0).all()


@pytest.mark.parametrize("cls,options,argument", [
    (ro.SGD, dict(lr=-0.1), "lr"),
    (ro.Adam, dict(lr=float("nan")), "lr"),
    (ro.SGD, dict(momentum=-0.9), "momentum"),
    (ro.SGD, dict(nesterov=True), "nesterov"),
    (ro.SGD, dict(momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (ro.SGD, dict(weight_decay=-1e-4), "weight_decay"),
    (ro.SGD, dict(l1=-1.0), "l1"),
    (ro.Adam, dict(betas=(1.0, 0.999)), "betas[0]"),
    (ro.Adam, dict(betas=(0.9, -0.1)), "betas[1]"),
    (ro.AdamW, dict(eps=0.0), "eps"),
    (ro.Adam, dict(eps=-1e-8), "eps"),
    (ro.Adam, dict(differentiable=True), "differentiable"),
    (ro.RMSprop, dict(alpha=1.5), "alpha"),
    (ro.RMSprop, dict(momentum=-1), "momentum"),
    (ro.Adagrad, dict(lr_decay=-1), "lr_decay"),
    (ro.Adagrad, dict(initial_accumulator_value=-1), "initial_accumulator_value"),
    (ro.LARS, dict(trust_coefficient=0.0), "trust_coefficient"),
    (ro.LAMB, dict(betas=(0.9,)), "betas"),
])
def test_bad_hyperparameters_name_the_argument_and_value(cls, options, argument):
    with pytest.raises(ValueError) as error:
        cls([torch.nn.Parameter(torch.zeros(2))], **options)
    message = str(error.value)
    assert f"Invalid {argument}:" in message
    value = next(iter(options.values())) if argument != "nesterov" else True
    if argument.startswith("betas["):
        value = options["betas"][int(argument[6])]
    assert repr(value) in message or str(value) in message


def test_bad_group_option_is_rejected():
    optimizer = ro.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="Invalid l1: -0.5"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "l1": -0.5})


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_sparse_gradients_raise_a_clear_error(cls):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = cls(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optimizer.step()
    assert torch.equal(embedding.weight, before)


def test_get_optimizer_suggests_a_close_name():
    assert ro.get_optimizer("AdamW") is ro.AdamW
    with pytest.raises(ConfigError, match="did you mean 'adam'"):
        ro.get_optimizer("adma")


def test_closure_is_evaluated_and_its_loss_returned():
    model, data = model_and_data()
    optimizer = ro.SGD(model.parameters(), lr=0.1)
    x, y = data[0]

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    first = optimizer.step(closure)
    second = optimizer.step(closure)
    assert second.item() < first.item()


def test_step_hooks_run_as_torch_runs_them():
    """regopt's step wrapper keeps torch.optim's hook contract: global and per-optimizer pre-hooks
    (which may replace the arguments), the step, post-hooks, in torch's order."""
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    calls = []
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    optimizer = ro.SGD([param], lr=0.1)

    def closure():
        calls.append("closure")
        return torch.tensor(7.0)

    def replace_closure(opt, args, kwargs):
        calls.append("pre")
        return (args[0], closure), kwargs
    handles = [register_optimizer_step_pre_hook(lambda opt, args, kwargs: calls.append("global pre")),
               optimizer.register_step_pre_hook(replace_closure),
               optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post")),
               register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append("global post"))]
    try:
        loss = optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["global pre", "pre", "closure", "post", "global post"]
    assert float(loss) == 7.0
    torch.testing.assert_close(param.detach(), torch.full((3,), 0.9))
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: "not a pair")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        optimizer.step()


def test_a_step_is_labelled_in_the_profiler_as_torch_labels_it():
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    optimizer = ro.Adam([param], lr=0.1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.step()
    names = {event.name for event in profile.events()}
    assert "Optimizer.step#Adam.step" in names
    assert type(optimizer).step.__code__.co_name == "hooked_step"   # not wrapped a second time
