"""Each optimizer against a plain NumPy transcription of its textbook rule.

The objective is a quadratic f(W, b) = 1/2 sum(c_W * W^2) + sum(d_W * W) + (same for b), so the
gradient c * w + d depends on the weights and a wrong rule drifts away from the transcription.
Each NumPy function is written from the paper's formula, not from the regopt code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import regopt.optim as ro

STEPS = 50
RNG = np.random.default_rng(0)
SHAPES = {"W": (4, 3), "b": (3,)}
INITIAL = {k: RNG.normal(size=s) for k, s in SHAPES.items()}
CURVATURE = {k: RNG.uniform(0.5, 2.0, size=s) for k, s in SHAPES.items()}
OFFSET = {k: RNG.normal(size=s) for k, s in SHAPES.items()}


def gradient(name: str, w: np.ndarray) -> np.ndarray:
    return CURVATURE[name] * w + OFFSET[name]


def run_regopt(optimizer_cls, **options) -> dict[str, np.ndarray]:
    params = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in INITIAL.items()}
    optimizer = optimizer_cls(list(params.values()), **options)
    for _ in range(STEPS):
        for name, p in params.items():
            p.grad = torch.tensor(gradient(name, p.detach().numpy()), dtype=torch.float64)
        optimizer.step()
    return {k: p.detach().numpy() for k, p in params.items()}


def run_numpy(rule, **options) -> dict[str, np.ndarray]:
    result = {}
    for name, w0 in INITIAL.items():
        w, state = w0.copy(), {}
        for t in range(1, STEPS + 1):
            w = rule(w, gradient(name, w), state, t, is_matrix=w.ndim >= 2, **options)
        result[name] = w
    return result


def sgd(w, g, s, t, is_matrix, lr, momentum=0.0, nesterov=False):
    if momentum == 0:
        return w - lr * g
    s["b"] = g if t == 1 else momentum * s["b"] + g
    return w - lr * (g + momentum * s["b"] if nesterov else s["b"])


def adagrad(w, g, s, t, is_matrix, lr, eps=1e-10):
    s["G"] = s.get("G", 0.0) + g * g
    return w - lr * g / (np.sqrt(s["G"]) + eps)


def rmsprop(w, g, s, t, is_matrix, lr, alpha=0.99, eps=1e-8):
    s["v"] = alpha * s.get("v", 0.0) + (1 - alpha) * g * g
    return w - lr * g / (np.sqrt(s["v"]) + eps)


def adam(w, g, s, t, is_matrix, lr, b1=0.9, b2=0.999, eps=1e-8):
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    m_hat, v_hat = s["m"] / (1 - b1 ** t), s["v"] / (1 - b2 ** t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps)


def lars(w, g, s, t, is_matrix, lr, momentum=0.9, beta=0.0, eta=1e-3):
    """You et al. 2017, Algorithm 1; vectors (biases) excluded: local lr 1, no decay."""
    if is_matrix:
        local_lr = eta * np.linalg.norm(w) / (np.linalg.norm(g) + beta * np.linalg.norm(w))
        step = lr * local_lr * (g + beta * w)
    else:
        step = lr * g
    s["v"] = momentum * s.get("v", 0.0) + step
    return w - s["v"]


def lamb(w, g, s, t, is_matrix, lr, b1=0.9, b2=0.999, eps=1e-6, lam=0.0):
    """You et al. 2020, Algorithm 2 with phi = identity; vectors excluded: ratio 1, no decay."""
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    r = (s["m"] / (1 - b1 ** t)) / (np.sqrt(s["v"] / (1 - b2 ** t)) + eps)
    if not is_matrix:
        return w - lr * r
    u = r + lam * w
    return w - lr * np.linalg.norm(w) / np.linalg.norm(u) * u


CASES = [
    ("gd", ro.SGD, dict(lr=0.1), sgd, dict(lr=0.1)),
    ("heavy-ball", ro.SGD, dict(lr=0.05, momentum=0.9), sgd, dict(lr=0.05, momentum=0.9)),
    ("nesterov", ro.SGD, dict(lr=0.05, momentum=0.9, nesterov=True),
     sgd, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("adagrad", ro.Adagrad, dict(lr=0.1), adagrad, dict(lr=0.1)),
    ("rmsprop", ro.RMSprop, dict(lr=0.01), rmsprop, dict(lr=0.01)),
    ("adam", ro.Adam, dict(lr=0.05), adam, dict(lr=0.05)),
    ("lars", ro.LARS, dict(lr=2.0, momentum=0.9, weight_decay=1e-3, eps=0.0),
     lars, dict(lr=2.0, momentum=0.9, beta=1e-3)),
    ("lamb", ro.LAMB, dict(lr=0.01, weight_decay=0.01), lamb, dict(lr=0.01, lam=0.01)),
]


@pytest.mark.parametrize("name,ours,options,rule,rule_options", CASES, ids=[c[0] for c in CASES])
def test_optimizer_follows_textbook_formula(name, ours, options, rule, rule_options):
    ours_result, textbook = run_regopt(ours, **options), run_numpy(rule, **rule_options)
    for key in SHAPES:
        np.testing.assert_allclose(ours_result[key], textbook[key], rtol=1e-10, atol=1e-12)
        assert not np.allclose(ours_result[key], INITIAL[key])  # the rule actually moved it


def test_adam_eps_is_added_after_the_square_root():
    """eps inside the root (sqrt(v_hat + eps)) gives visibly different numbers: we add it outside."""
    def adam_eps_inside(w, g, s, t, is_matrix, lr, b1=0.9, b2=0.999, eps=1e-2):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        return w - lr * (s["m"] / (1 - b1 ** t)) / np.sqrt(s["v"] / (1 - b2 ** t) + eps)
    ours = run_regopt(ro.Adam, lr=0.05, eps=1e-2)
    outside = run_numpy(adam, lr=0.05, eps=1e-2)
    inside = run_numpy(adam_eps_inside, lr=0.05, eps=1e-2)
    np.testing.assert_allclose(ours["W"], outside["W"], rtol=1e-10)
    assert not np.allclose(ours["W"], inside["W"], rtol=1e-6)


def test_lars_and_lamb_exclusion_can_be_turned_off():
    excluded = run_regopt(ro.LAMB, lr=0.01)
    adapted = run_regopt(ro.LAMB, lr=0.01, exclude_1d=False)
    np.testing.assert_array_equal(excluded["W"], adapted["W"])
    assert not np.allclose(excluded["b"], adapted["b"])
