"""The fast path (fused=True, regopt.optim.fast) against the reference path, same models and data.

Every case trains two identical models for 30 steps, one per path, and requires parameters and every
state tensor to agree within 1e-5 relative (float32), with the same state keys and shapes. Each case
also checks which engine ran, so that a silent fallback to the reference path cannot pass for the
fast path.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import regopt.optim as ro
from regopt.optim import fast

pytestmark = pytest.mark.filterwarnings(   # raised by importing TorchInductor, not by regopt
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

STEPS = 30
TOLERANCE = 1e-5


class Net(torch.nn.Module):
    """Tensors on both sides of fast.SMALL_TENSOR, and a 0-d parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(24, 800)    # weight: 19,200 elements, a chunk of its own
        self.out = torch.nn.Linear(800, 3)        # 2,400 + 3, packed with the hidden bias
        self.temperature = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x))) * self.temperature


def make_model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def batches(steps: int = STEPS, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 24, generator=generator),
             torch.randint(0, 3, (16,), generator=generator)) for _ in range(steps)]


def train(model, optimizer, data, clip: float | None = None) -> None:
    sign = -1.0 if optimizer.param_groups[0].get("maximize") else 1.0   # maximize -loss: stable
    for x, y in data:
        optimizer.zero_grad()
        (sign * torch.nn.functional.cross_entropy(model(x), y)).backward()
        if clip is None:
            optimizer.step()
        else:
            fast.clipped_step(optimizer, clip)


def relative_error(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """max |a - b| / max |b|, with the scale at least ``floor``."""
    scale = max(b.abs().max().item(), floor) or 1.0
    return (a - b).abs().max().item() / scale


INITIAL_SCALE = {name: p.abs().max().item() for name, p in make_model().named_parameters()}


def assert_same(model_a, model_b, optimizer_a, optimizer_b, tolerance: float = TOLERANCE) -> None:
    """Parameters relative to their scale over the run (prox L1 and decay shrink some towards 0,
    where relative-to-final would be ill-conditioned); state tensors relative to their own scale."""
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert relative_error(a, b, floor=INITIAL_SCALE[name]) <= tolerance, name
        state_a, state_b = optimizer_a.state[a], optimizer_b.state[b]
        assert set(state_a) == set(state_b), name
        for key, value in state_b.items():
            assert state_a[key].shape == value.shape, (name, key)
            assert relative_error(state_a[key], value) <= tolerance, (name, key)


def groups(model: Net, split: bool):
    if not split:
        return model.parameters()
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": matrices}, {"params": others, "weight_decay": 0.0, "l1": 0.0}]


CASES = [
    (ro.SGD, dict(lr=0.05), "torch"),
    (ro.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2), "torch"),
    (ro.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True), "torch"),
    (ro.SGD, dict(lr=0.05, l1=1e-2), "compiled"),
    (ro.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2,
                  decoupled_weight_decay=True, l1=1e-3), "compiled"),
    (ro.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2, maximize=True,
                  l1=1e-3), "compiled"),
    (ro.Adagrad, dict(lr=0.05, lr_decay=1e-2, weight_decay=1e-2,
                      initial_accumulator_value=0.1), "torch"),
    (ro.Adagrad, dict(lr=0.05, lr_decay=1e-2, weight_decay=1e-2, decoupled_weight_decay=True,
                      decay_scaled_by_lr=False, l1=1e-3), "compiled"),
    (ro.RMSprop, dict(lr=1e-3, weight_decay=1e-2), "compiled"),
    (ro.RMSprop, dict(lr=1e-3, momentum=0.9, centered=True, maximize=True, l1=1e-3), "compiled"),
    (ro.RMSprop, dict(lr=1e-3, weight_decay=1e-1, decoupled_weight_decay=True,
                      decay_scaled_by_lr=False), "compiled"),
    (ro.Adam, dict(lr=1e-2, weight_decay=1e-2), "torch"),
    (ro.Adam, dict(lr=1e-2, amsgrad=True, maximize=True), "torch"),
    (ro.Adam, dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3), "compiled"),
    (ro.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=1e-2, l1=1e-3), "compiled"),
    (ro.AdamW, dict(lr=1e-2, weight_decay=1e-1), "torch"),
    (ro.AdamW, dict(lr=1e-2, weight_decay=1e-2, decay_scaled_by_lr=False), "compiled"),
    (ro.LARS, dict(lr=0.1, momentum=0.9, weight_decay=1e-3), "compiled"),
    (ro.LARS, dict(lr=0.1, weight_decay=1e-3, exclude_1d=False, maximize=True, l1=1e-3),
     "compiled"),
    (ro.LAMB, dict(lr=1e-2, weight_decay=1e-2, l1=1e-4), "compiled"),
    (ro.LAMB, dict(lr=1e-2, weight_decay=1e-1, decoupled_weight_decay=True, exclude_1d=False),
     "compiled"),
]


def case_id(case) -> str:
    cls, options, _ = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in options.items() if k != "lr")


def side_by_side(cls, options, split=False, clip=None, steps=STEPS):
    data = batches(steps)
    model_fast, model_reference = make_model(), make_model()
    fast_optimizer = cls(groups(model_fast, split), fused=True, **options)
    reference = cls(groups(model_reference, split), **options)
    train(model_fast, fast_optimizer, data, clip)
    train(model_reference, reference, data, clip)
    return model_fast, model_reference, fast_optimizer, reference


def layouts_of(optimizer) -> list[str]:
    """Per group: the compiled plan's class (GroupPlan or ChunkedPlan), or its engine."""
    plans = fast.cache_of(optimizer).plans
    return [type(plans[id(group)]).__name__ if fast.engines(optimizer)[index] == "compiled"
            else fast.engines(optimizer)[index] for index, group in enumerate(optimizer.param_groups)]


@pytest.fixture
def layout(request, monkeypatch):
    """Both compiled layouts: one kernel for the whole (small) group, or kernels per chunk."""
    if request.param == "ChunkedPlan":
        monkeypatch.setattr(fast, "GROUP_KERNEL_MAX_NUMEL", 0)
    return request.param


LAYOUT_CASES = [(case, layout) for case in CASES
                for layout in (["GroupPlan", "ChunkedPlan"] if case[2] == "compiled" else ["-"])]


@pytest.mark.parametrize("case,layout", LAYOUT_CASES, indirect=["layout"],
                         ids=[f"{case_id(c)}-{layout}" for c, layout in LAYOUT_CASES])
def test_fast_path_matches_reference(case, layout):
    cls, options, engine = case
    model_fast, model_reference, fast_optimizer, reference = side_by_side(cls, options)
    assert fast.engines(fast_optimizer) == [engine]
    if engine == "compiled":
        assert layouts_of(fast_optimizer) == [layout]
    assert_same(model_fast, model_reference, fast_optimizer, reference)


@pytest.mark.parametrize("cls,options", [
    (ro.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    (ro.Adam, dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True)),
    (ro.Adagrad, dict(lr=0.05)),
], ids=["SGD", "AdamW", "Adagrad"])
def test_compiled_engine_matches_where_torch_kernels_would_run(monkeypatch, cls, options):
    monkeypatch.setattr(fast, "USE_TORCH_KERNELS", False)
    model_fast, model_reference, fast_optimizer, reference = side_by_side(cls, options)
    assert fast.engines(fast_optimizer) == ["compiled"]
    assert_same(model_fast, model_reference, fast_optimizer, reference)


@pytest.mark.parametrize("cls,options,engines", [
    (ro.Adam, dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3),
     ["compiled", "torch"]),                 # the second group has no decay and no l1
    (ro.LAMB, dict(lr=1e-2, weight_decay=1e-2), ["compiled", "compiled"]),
], ids=["Adam", "LAMB"])
def test_param_groups_with_different_options(cls, options, engines):
    model_fast, model_reference, fast_optimizer, reference = side_by_side(cls, options, split=True)
    assert fast.engines(fast_optimizer) == engines
    assert_same(model_fast, model_reference, fast_optimizer, reference)


@pytest.mark.parametrize("cls,options,split,inside", [
    (ro.Adam, dict(lr=1e-2), False, False),
    (ro.Adam, dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3), False, True),
    (ro.RMSprop, dict(lr=1e-3, centered=True), False, True),
    (ro.RMSprop, dict(lr=1e-3, centered=True), True, False),
    (ro.LARS, dict(lr=0.1, weight_decay=1e-3), False, False),
], ids=["torch-kernel", "compiled", "compiled-RMSprop", "two-groups", "LARS"])
def test_clipping_folded_into_the_step_matches_clip_grad_norm(cls, options, split, inside):
    """``inside``: one group of a single-pass rule holds every gradient, so its kernel computes
    the norm and the factor itself (one call); else the norm first, the factor into the step."""
    model_fast, model_reference, fast_optimizer, reference = side_by_side(cls, options, split,
                                                                          clip=0.05)
    assert_same(model_fast, model_reference, fast_optimizer, reference)
    plans = fast.cache_of(fast_optimizer).plans.values()
    assert any(getattr(plan, "clip_kernel", None) is not None for plan in plans) == inside
    x, y = batches(1, seed=5)[0]
    totals = []
    for model, optimizer in ((model_fast, fast_optimizer), (model_reference, reference)):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        totals.append(fast.clipped_step(optimizer, 0.05))
        torch.testing.assert_close(totals[-1], expected)
    assert totals[0] > 0.05                     # the clipping was active


@pytest.mark.parametrize("layout", ["GroupPlan", "ChunkedPlan"], indirect=True)
@pytest.mark.parametrize("lengths", [(40_000, 16_387, 3), (20_001, 7, 1),
                                     (16_387, 20_000) * (fast.NORM_BUCKET // 2 + 1) + (5,),
                                     (40_000, 16_387) + (20_003,) * (fast.NORM_BUCKET + 1)
                                     + (16_387, 3)],
                         ids=["tail-of-3", "tail-of-1", "a-bucket", "equal-lengths"])
def test_global_norm_is_torchs_total_norm(layout, lengths):
    """The compiled norm reads gradients as segments; lengths that READ_STREAMS does not divide
    leave a tail (Inductor miscompiles its reduction inside a kernel for any length, so the tail
    goes elsewhere): both agree with torch's total norm, in two groups and both layouts."""
    generator = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for n in lengths]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator)
    optimizer = ro.Adam([{"params": params[:2]}, {"params": params[2:]}], fused=True, lr=1e-3,
                        l1=1e-5)                          # l1: compiled kernels, not torch's
    optimizer.step()
    assert fast.compiles(optimizer, optimizer.param_groups[0])
    expected = torch.nn.utils.get_total_norm([p.grad for p in params])
    total = fast.global_norm(optimizer)
    assert total.dtype == expected.dtype
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    assert layouts_of(optimizer)[0] == layout
    if layout == "ChunkedPlan" and len(lengths) > fast.NORM_BUCKET:   # NORM_BUCKET per call
        equal = lengths.count(20_003) > fast.NORM_BUCKET
        name = "joint_squares" if equal else "group_grad_squares"
        assert fast._KERNELS.get((name, fast.NORM_BUCKET, "float32", "cpu")) is not None


@pytest.mark.parametrize("cls,options", [
    (ro.Adam, dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3)),
    (ro.LARS, dict(lr=0.1, weight_decay=1e-3)),
], ids=["Adam-prox-L1", "LARS"])
@pytest.mark.parametrize("equal", [0, 1], ids=["mixed-lengths", "equal-lengths-first"])
def test_large_tensors_stepped_several_per_call_match_the_reference(cls, options, equal,
                                                                     monkeypatch):
    """A large group steps its large tensors STEP_BUCKET per kernel call: first those of one
    length (a kernel traced with equal lengths: one loop over all of them), then the rest with
    different lengths in one call (a kernel for any lengths), then the few left one per call;
    the same numbers as the reference path."""
    monkeypatch.setattr(fast, "GROUP_KERNEL_MAX_NUMEL", 0)
    n = fast.STEP_BUCKET
    shapes = [(128, 136)] * (n + 1) if equal else []
    shapes += [(128, 128 + 8 * (i % 3)) for i in range(n + 2 - equal)] + [(127, 129), (9,)]
    fast_optimizer = fast_and_reference_agree(cls, options, shapes)
    plan = fast.cache_of(fast_optimizer).plans[id(fast_optimizer.param_groups[0])]
    buckets = [unit for _, unit in plan.work if isinstance(unit, fast.Bucket)]
    assert len(buckets) == 1 + equal
    assert len(plan.work) == len(plan.chunks) - len(buckets) * (n - 1)
    lengths = [{chunk.numel for chunk in bucket.chunks} for bucket in buckets]
    assert [len(lengths[0]), len(lengths[-1])] == [1 if equal else 3, 3]
    equal_kernels = [k for key, k in fast._KERNELS.items() if key[2:3] == ("bucket_equal",)]
    used = [kernels[-1] for kernels, unit in plan.work if isinstance(unit, fast.Bucket)]
    assert [k in equal_kernels for k in used] == [True] * equal + [False]


@pytest.mark.parametrize("cls,options,passes,streams", [
    (ro.Adam, dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3), 1, 4),
    (ro.LARS, dict(lr=0.1, weight_decay=1e-3), 2, 3),
    (ro.LAMB, dict(lr=1e-2, weight_decay=1e-2), 2, 4),
], ids=["Adam-prox-L1", "LARS", "LAMB"])
def test_rules_of_two_passes_bucket_only_tensors_that_stay_in_cache(cls, options, passes, streams,
                                                                   monkeypatch):
    """LARS and LAMB put as many large tensors to a call (a power of 2 up to STEP_BUCKET) as fit
    in PASSES_IN_CACHE_BYTES with their gradients and state (the second pass then finds in cache
    what the first read); single-pass rules put STEP_BUCKET to a call anyway. The numbers are the
    reference path's either way."""
    monkeypatch.setattr(fast, "GROUP_KERNEL_MAX_NUMEL", 0)
    n = fast.STEP_BUCKET
    shapes = [(128, 136)] * n + [(160, 136)] * n       # 17,408 and 21,760 elements
    budget = n * 21_760 * 4 * streams - 1            # parameter, gradient, state: n of the larger
    monkeypatch.setattr(fast, "PASSES_IN_CACHE_BYTES", budget)      # do not fit, n / 2 do
    fast_optimizer = fast_and_reference_agree(cls, options, shapes)
    plan = fast.cache_of(fast_optimizer).plans[id(fast_optimizer.param_groups[0])]
    buckets = sorted((unit.chunks[0].numel, len(unit.chunks)) for _, unit in plan.work
                     if isinstance(unit, fast.Bucket))
    assert len(plan.rule.passes) == passes
    expected = [(17_408, n), (21_760, n)] if passes == 1 else \
        [(17_408, n), (21_760, n // 2), (21_760, n // 2)]
    assert buckets == expected and len(plan.work) == len(expected)
    monkeypatch.setattr(fast, "PASSES_IN_CACHE_BYTES", 17_408 * 4 * streams - 1)
    assert fast.bucket_size(plan.rule, 17_408, 4) == (n if passes == 1 else 1)


def fast_and_reference_agree(cls, options, shapes, steps: int = 3):
    """Step parameters of these shapes with random gradients on both paths; assert they agree,
    and return the fast path's optimizer."""
    generator = torch.Generator().manual_seed(5)
    runs = []
    for fused in (True, None):
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)))
                  for i, s in enumerate(shapes)]
        runs.append((params, cls(params, fused=fused, **options)))
    for _ in range(steps):
        grads = [torch.randn(s, generator=generator) for s in shapes]
        for params, optimizer in runs:
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimizer.step()
    (fast_params, fast_optimizer), (reference_params, _) = runs
    for a, b in zip(fast_params, reference_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return fast_optimizer


def test_lars_chunks_of_every_length_match_the_reference(monkeypatch):
    """LARS's norms read each chunk as segments; chunks of lengths READ_STREAMS does not divide
    take one-stream kernels (a wrong tail would give NaN or a wrong trust ratio)."""
    monkeypatch.setattr(fast, "GROUP_KERNEL_MAX_NUMEL", 0)
    shapes = [(127, 129), (128, 128), (1, 5), (3, 1), (1, 1)]    # 16,383 elements: a tail of 3
    fast_optimizer = fast_and_reference_agree(ro.LARS, dict(lr=0.1, weight_decay=1e-3), shapes)
    assert layouts_of(fast_optimizer) == ["ChunkedPlan"]


def test_clipped_step_with_a_torch_optimizer_clips_then_steps():
    model_a, model_b = make_model(), make_model()
    ours = torch.optim.Adam(model_a.parameters(), lr=1e-2, fused=True)
    theirs = torch.optim.Adam(model_b.parameters(), lr=1e-2, fused=True)
    for x, y in batches(5):
        for model, optimizer in ((model_a, ours), (model_b, theirs)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        fast.clipped_step(ours, 0.05)
        torch.nn.utils.clip_grad_norm_(model_b.parameters(), 0.05)
        theirs.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def state_bytes(optimizer) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("cls,options", [
    (ro.Adam, dict(lr=1e-2, amsgrad=True, l1=1e-3)),
    (ro.SGD, dict(lr=0.05, momentum=0.9, l1=1e-3)),
    (ro.LAMB, dict(lr=1e-2, weight_decay=1e-2)),
], ids=["Adam", "SGD", "LAMB"])
def test_state_dict_round_trip_between_paths(cls, options):
    data = batches(20)
    model, _ = make_model(), None
    optimizer = cls(model.parameters(), fused=True, **options)
    train(model, optimizer, data[:10])
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = state_bytes(optimizer)

    reference_model = make_model()
    reference_optimizer = cls(reference_model.parameters(), **options)
    train(reference_model, reference_optimizer, data[:10])
    reference_dict = reference_optimizer.state_dict()
    fast_dict = torch.load(state_bytes(optimizer), weights_only=True)
    assert fast_dict["param_groups"][0].keys() >= reference_dict["param_groups"][0].keys()
    for index, state in reference_dict["state"].items():
        assert {k: v.shape for k, v in fast_dict["state"][index].items()} == \
               {k: v.shape for k, v in state.items()}

    train(model, optimizer, data[10:])          # the run that continues uninterrupted
    for fused in (True, None):                  # resume from the saved state on either path
        resumed_model = make_model(seed=7)
        resumed_model.load_state_dict(saved_model)
        resumed = cls(resumed_model.parameters(), fused=fused, lr=123.0)
        resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
        train(resumed_model, resumed, data[10:])
        assert_same(resumed_model, model, resumed, optimizer)
        if fused:
            for a, b in zip(resumed_model.parameters(), model.parameters()):
                assert torch.equal(a, b)

    continued = cls(reference_model.parameters(), fused=True, lr=123.0)   # reference -> fast
    continued.load_state_dict(reference_optimizer.state_dict())
    train(reference_model, continued, data[10:])
    assert_same(reference_model, model, continued, optimizer)


def test_freezing_a_tensor_mid_training_rebuilds_the_plan():
    options = dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3)
    data = batches(20)
    models = make_model(), make_model()
    optimizers = ro.Adam(models[0].parameters(), fused=True, **options), \
        ro.Adam(models[1].parameters(), **options)
    for model, optimizer in zip(models, optimizers):
        train(model, optimizer, data[:10])
        model.out.bias.requires_grad_(False)
        model.out.bias.grad = None
        train(model, optimizer, data[10:])
    assert_same(*models, *optimizers)


def test_learning_rate_schedules_do_not_recompile(monkeypatch):
    monkeypatch.setattr(fast, "GROUP_KERNEL_MAX_NUMEL", 0)   # per-element kernels: any shapes
    torch._dynamo.utils.counters.clear()
    options = dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3)
    model = make_model()
    optimizer = ro.Adam(model.parameters(), fused=True, **options)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=40)
    data = batches(20)
    train(model, optimizer, data[:1])
    kernels = fast.compiled_kernels()
    for x, y in data[1:]:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    other = torch.nn.Linear(300, 70)             # another model, other sizes: same kernels
    other_optimizer = ro.Adam(other.parameters(), fused=True, **options)
    other(torch.randn(4, 300)).sum().backward()
    other_optimizer.step()
    assert fast.compiled_kernels() == kernels
    assert [k for k in kernels if k[0] == "adam_l1"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0   # no TorchDynamo at all


def test_group_kernel_compiles_once_for_its_shapes():
    options = dict(lr=1e-3, momentum=0.9, centered=True, l1=1e-4)
    models = make_model(), make_model(seed=3)     # same shapes, other values
    optimizers = [ro.RMSprop(model.parameters(), fused=True, **options) for model in models]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizers[0], max_lr=0.05, total_steps=40)
    data = batches(20)
    train(models[0], optimizers[0], data[:1])
    kernels = fast.compiled_kernels()
    group_kernels = [k for k in kernels if k[0] == "group_rmsprop_centered_momentum_l1"]
    assert len(group_kernels) == 1 and layouts_of(optimizers[0]) == ["GroupPlan"]
    for x, y in data[1:]:
        optimizers[0].zero_grad()
        torch.nn.functional.cross_entropy(models[0](x), y).backward()
        optimizers[0].step()
        scheduler.step()
    train(models[1], optimizers[1], data[:2])
    assert fast.compiled_kernels() == kernels


@pytest.mark.parametrize("layout", ["GroupPlan", "ChunkedPlan"], indirect=True)
@pytest.mark.parametrize("cls,options", [
    (ro.Adam, dict(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-4)),
    (ro.LAMB, dict(lr=1e-3, weight_decay=1e-2, l1=1e-4)),
    (ro.LARS, dict(lr=0.1, weight_decay=1e-4)),
], ids=["Adam", "LAMB", "LARS"])
def test_a_fast_step_allocates_no_temporaries(cls, options, layout):
    params = [torch.nn.Parameter(torch.randn(500, 400)), torch.nn.Parameter(torch.randn(400))]
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer = cls(params, fused=True, **options)
    optimizer.step()
    fast.clipped_step(optimizer, 1.0)                  # compiles the global norm's kernels
    assert layouts_of(optimizer) == [layout]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as profile:
        fast.clipped_step(optimizer, 1.0)
    allocated = [event.nbytes() for event in profile.profiler.kineto_results.events()
                 if event.name() == "[memory]" and event.nbytes() > 0]   # every allocation,
    assert sum(allocated) < 1024, allocated     # Inductor's buffers too; the parameter is 800 kB


def test_compile_failure_warns_once_and_gives_reference_numbers(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(fast, "compile_traced", broken)
    monkeypatch.setattr(fast, "_KERNELS", {})
    monkeypatch.setattr(fast, "_FAILED", {})
    monkeypatch.setattr(fast, "_WARNED", False)
    options = dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, l1=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model_fast, model_reference, fast_optimizer, reference = side_by_side(ro.Adam, options)
        side_by_side(ro.RMSprop, dict(lr=1e-3))
    ours = [w for w in caught if "regopt fast path unavailable" in str(w.message)]
    assert len(ours) == 1
    assert issubclass(ours[0].category, RuntimeWarning)
    assert "no C++ compiler" in str(ours[0].message)
    assert fast.engines(fast_optimizer) == ["reference"]
    for a, b in zip(model_fast.parameters(), model_reference.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [ro.SGD, ro.Adagrad, ro.RMSprop, ro.Adam, ro.AdamW, ro.LARS,
                                 ro.LAMB], ids=lambda c: c.__name__)
def test_fused_is_accepted_everywhere_and_validated(cls):
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert cls(params, fused=True).defaults["fused"] is True
    with pytest.raises(ValueError, match="Invalid fused: 'yes'"):
        cls(params, fused="yes")


def test_sparse_gradients_still_raise_the_reference_error():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = ro.Adam(embedding.parameters(), fused=True, l1=1e-3)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optimizer.step()


def test_changing_the_thread_count_rebuilds_the_plan_and_keeps_the_numbers():
    threads = torch.get_num_threads()
    options = dict(lr=1e-3, momentum=0.9, l1=1e-4)
    data = batches(12)
    models = make_model(), make_model()
    optimizers = ro.RMSprop(models[0].parameters(), fused=True, **options), \
        ro.RMSprop(models[1].parameters(), **options)
    try:
        for count, part in ((1, data[:6]), (2, data[6:])):
            torch.set_num_threads(count)
            for model, optimizer in zip(models, optimizers):
                train(model, optimizer, part)
            assert fast.cache_of(optimizers[0]).plans[id(optimizers[0].param_groups[0])].key[2] \
                == count
    finally:
        torch.set_num_threads(threads)
    assert layouts_of(optimizers[0]) == ["GroupPlan"]
    assert_same(*models, *optimizers)


def test_kernels_that_widen_to_float64_get_the_vector_width_chosen_for_them(monkeypatch):
    """The float64 sums of squares compile with widening_options() (256-bit vectors where the CPU's
    widest are 512-bit: torch 2.13 converts float to double lane by lane, slow at 16 lanes); an
    elementwise float32 update keeps Inductor's own choice, and so does a float64 model."""
    from torch._inductor import cpu_vec_isa
    widest = cpu_vec_isa.pick_vec_isa().bit_width()
    has_256 = any(isa.bit_width() == 256 for isa in cpu_vec_isa.valid_vec_isa_list())
    assert fast.widening_options() == ({"cpp.simdlen": 256} if widest == 512 and has_256 else {})

    seen = []
    monkeypatch.setattr(torch._inductor, "compile",
                        lambda graph, inputs, options: seen.append(options) or graph)
    x = torch.ones(1024)
    fast.compile_traced(fast.grad_squares, [x], "symbolic")
    fast.compile_traced(fast.regularized(fast.sgd, prox=True, coupled=True, decoupled=False),
                        [x, x, torch.ones(5)], "symbolic")
    fast.compile_traced(fast.grad_squares, [x.double()], "symbolic")
    widened, update, double = seen
    assert widened == {**fast.INDUCTOR_OPTIONS, **fast.widening_options()}
    assert update == fast.INDUCTOR_OPTIONS
    assert double == fast.INDUCTOR_OPTIONS
