"""Optimizer step time: regopt's reference and fast paths against torch.optim, side by side.

For each rule (SGD, momentum, Nesterov, Adagrad, RMSprop, Adam, AMSGrad, AdamW, LARS, LAMB) and
each set of parameter shapes, it builds one copy of the parameters, gradients and optimizer per
variant:

- regopt reference: the readable foreach path (the default);
- regopt fast: ``fused=True`` (regopt.optim.fast), and where the fast path hands the step to one of
  torch's fused kernels, also the compiled loop alone ("compiled only"), to show why it does;
- torch: torch.optim's fastest CPU variant of the same rule: ``fused=True`` where torch has it
  (SGD, Adagrad, Adam, AdamW), else the faster of the for-loop and ``foreach`` (RMSprop); torch has
  no LARS or LAMB.

Variants step in turn, one timed step each per round, so that a noisy machine slows them alike;
tables give medians. Each timed step follows an untimed step of the same variant (warm caches,
as when stepping in a loop), or with ``--cold`` a flush of the caches (as in training, where
forward and backward passes run between steps). Every race also times the machine's in-place
bandwidth (``x.add_(1)`` on a tensor larger than the caches: 8 bytes moved per element), among
the variants' steps so that a machine whose speed drifts moves the bound with the variants, or,
for steps that move less than 32 MB, in rounds of its own right after theirs (a 128 MB sweep
slows the next few small steps, see ``probe_after_for``); per rule, the bound is
the minimum bytes a step must move per parameter (Adam reads p, g, m, v and writes p, m, v: 28
bytes in float32) at that bandwidth. Gradients stay in place between steps, as after a backward
pass; the fast path still copies the gradients of its packed small tensors every step, so that is
timed.

Also: the regularized step (Adam + decoupled decay + prox L1 + global-norm clipping) against the
same composition in torch (clip_grad_norm_, fused AdamW, then a soft-threshold pass
``softshrink(p, out=p)``, the cheapest torch offers), and optimizer state bytes per parameter
against the minimum of each rule.

    python bench/bench_optim.py --quick                         # a smoke run, smaller sizes
    python bench/bench_optim.py --repeats 15 --markdown BENCHMARKS.md
    python bench/bench_optim.py --sizes mlp 1x25M --rules adam lamb
"""

from __future__ import annotations

import argparse
import gc
import contextlib
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import regopt.optim as ro
from regopt.optim import fast

MLP_SHAPES = [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,)]
FULL_SIZES = ["mlp", "100x250k", "1x25M"]
QUICK_SIZES = ["mlp", "10x250k", "1x2.5M"]


@dataclass(frozen=True)
class Rule:
    """One update rule: regopt's class and options, torch's counterpart, and the minimum traffic."""

    regopt: type
    options: dict[str, Any]
    torch_cls: type | None
    torch_options: dict[str, Any]
    bytes_per_param: int        # minimum bytes moved per parameter per step (float32)
    state_per_param: int        # minimum optimizer state bytes per parameter (float32)
    traffic: str                # what the minimum counts


RULES = {
    "sgd": Rule(ro.SGD, dict(lr=1e-3), torch.optim.SGD, dict(lr=1e-3), 12, 0,
                "read p, g; write p"),
    "momentum": Rule(ro.SGD, dict(lr=1e-3, momentum=0.9), torch.optim.SGD,
                     dict(lr=1e-3, momentum=0.9), 20, 4, "read p, g, b; write p, b"),
    "nesterov": Rule(ro.SGD, dict(lr=1e-3, momentum=0.9, nesterov=True), torch.optim.SGD,
                     dict(lr=1e-3, momentum=0.9, nesterov=True), 20, 4, "read p, g, b; write p, b"),
    "adagrad": Rule(ro.Adagrad, dict(lr=1e-2), torch.optim.Adagrad, dict(lr=1e-2), 20, 4,
                    "read p, g, s; write p, s"),
    "rmsprop": Rule(ro.RMSprop, dict(lr=1e-3), torch.optim.RMSprop, dict(lr=1e-3), 20, 4,
                    "read p, g, v; write p, v"),
    "adam": Rule(ro.Adam, dict(lr=1e-3), torch.optim.Adam, dict(lr=1e-3), 28, 8,
                 "read p, g, m, v; write p, m, v"),
    "amsgrad": Rule(ro.Adam, dict(lr=1e-3, amsgrad=True), torch.optim.Adam,
                    dict(lr=1e-3, amsgrad=True), 36, 12, "Adam + read, write v_max"),
    "adamw": Rule(ro.AdamW, dict(lr=1e-3), torch.optim.AdamW, dict(lr=1e-3), 28, 8,
                  "read p, g, m, v; write p, m, v"),
    "lars": Rule(ro.LARS, dict(lr=0.1, weight_decay=1e-4), None, {}, 28, 4,
                 "norms: read p, g; update: read p, g, v, write p, v"),
    "lamb": Rule(ro.LAMB, dict(lr=1e-3, weight_decay=1e-2), None, {}, 40, 8,
                 "read p, g, m, v, write m, v (norms); read p, m, v, write p"),
}
TORCH_FUSED = {torch.optim.SGD, torch.optim.Adagrad, torch.optim.Adam, torch.optim.AdamW}


# -- parameter sets --------------------------------------------------------------------------------

def parse_count(text: str) -> int:
    """'250k' -> 250000, '2.5M' -> 2500000."""
    match = re.fullmatch(r"([0-9.]+)([kKmM]?)", text)
    if not match:
        raise SystemExit(f"bad size {text!r}: use mlp or COUNTxNUMEL, e.g. 100x250k")
    scale = {"": 1, "k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6}[match.group(2)]
    return int(float(match.group(1)) * scale)


def shapes_of(size: str) -> list[tuple[int, ...]]:
    """'mlp' -> the classic MLP's shapes; 'NxM' -> N matrices of M elements (500 columns)."""
    if size == "mlp":
        return MLP_SHAPES
    count, _, numel = size.partition("x")
    n, m = parse_count(count), parse_count(numel)
    shape = (m // 500, 500) if m % 500 == 0 and m >= 1000 else (m,)
    return [shape] * n


def make_params(shapes, device: torch.device, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=generator).mul_(0.05).to(device))
        p.grad = torch.randn(shape, generator=generator).mul_(1e-3).to(device)
        params.append(p)
    return params


# -- timing ----------------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    step: Callable[[], Any]
    optimizer: Any = None
    prepare: Callable[[], Any] | None = None      # untimed, before each step
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def release(variants: list[Variant]) -> None:
    """Drop a measured variant's optimizer, parameters and closures, keeping its times: at 25M
    parameters each holds several hundred MB, and all of them together do not fit in memory."""
    for variant in variants:
        variant.optimizer = variant.step = variant.prepare = None
    gc.collect()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CACHE = {"cold": False, "flush": None}
"""cold: flush the caches before each timed step (a training loop's forward and backward passes
evict the optimizer's tensors between steps); warm (default): one untimed step of the same variant
right before each timed one, so that no variant pays for the one stepped before it."""


def before_timed_step(variant: Variant) -> None:
    if CACHE["cold"]:
        CACHE["flush"].add_(1.0)
    else:
        if variant.prepare is not None:
            variant.prepare()
        variant.step()
    if variant.prepare is not None:
        variant.prepare()


PROBE_MEGABYTES = 128
"""The bandwidth probe's tensor: x.add_(1) over 4x the L3 cache here, so it runs at memory speed."""


def race(variants: list[Variant], repeats: int, device: torch.device, warmup: int = 3,
         probe: bool = True, probe_after: bool = False) -> float:
    """Step every variant once per round, ``repeats`` rounds after ``warmup``; record each time.

    Interleaving makes a noisy machine (other processes, frequency changes) slow all variants
    alike, which back-to-back blocks of steps do not. A bandwidth probe, x.add_(1) on a tensor
    larger than the caches, runs in every round too: returns its in-place bandwidth (bytes per
    second), measured side by side with the variants, for their bounds (probe=False: no probe,
    returns 0). ``probe_after``: the probe's rounds run after the variants' instead (see
    :func:`probe_after_for`)."""
    probe_tensor = torch.zeros(PROBE_MEGABYTES * 2**20 // 4 if probe else 1, device=device)
    probe_variant = Variant("bandwidth probe", lambda: probe_tensor.add_(1.0))
    blocks = [variants]
    if probe:
        blocks = [variants, [probe_variant]] if probe_after else [[*variants, probe_variant]]
    for block in blocks:
        for variant in block:
            for _ in range(warmup):
                if variant.prepare is not None:
                    variant.prepare()
                variant.step()
        for _ in range(repeats):
            for variant in block:
                before_timed_step(variant)
                synchronize(device)
                started = time.perf_counter()
                variant.step()
                synchronize(device)
                variant.times.append(time.perf_counter() - started)
    return 2 * probe_tensor.nbytes / probe_variant.median if probe else 0.0


def probe_after_for(bytes_moved: float) -> bool:
    """Whether the probe runs after the variants rather than among them: for steps that move
    less than a quarter of the probe's bytes, whose data stays in the caches between steps.

    A 128 MB sweep between two steps of the MLP's size slowed the next steps for about eight
    steps, torch's and regopt's alike (here: 247 us after one warm step, 142 us after eight,
    117 us in a loop, for regopt's RMSprop), which a training loop, whose forward and backward
    passes touch a few MB between steps, does not do. Large steps sweep more than the caches
    themselves, and for them the probe stays interleaved, where it follows this VM's drift."""
    return bytes_moved < PROBE_MEGABYTES * 2**20 / 4


@contextlib.contextmanager
def compiled_only():
    """Build the fast path's plans with torch's kernels off (plans are chosen on the first step)."""
    saved = fast.USE_TORCH_KERNELS
    fast.USE_TORCH_KERNELS = False
    try:
        yield
    finally:
        fast.USE_TORCH_KERNELS = saved


def regopt_variants(rule: Rule, shapes, device) -> list[Variant]:
    variants = []
    reference = rule.regopt(make_params(shapes, device), **rule.options)
    variants.append(Variant("regopt reference", reference.step, reference))
    fast_optimizer = rule.regopt(make_params(shapes, device), fused=True, **rule.options)
    fast_optimizer.step()                                   # choose the plan, compile
    variants.append(Variant("regopt fast", fast_optimizer.step, fast_optimizer))
    if "torch" in fast.engines(fast_optimizer):
        compiled = rule.regopt(make_params(shapes, device), fused=True, **rule.options)
        with compiled_only():
            compiled.step()
        variants.append(Variant("regopt compiled", compiled.step, compiled))
    return variants


def torch_variants(rule: Rule, shapes, device, repeats: int) -> list[Variant]:
    """torch's fused variant where it has one; else its faster of for-loop and foreach."""
    if rule.torch_cls is None:
        return []
    if rule.torch_cls in TORCH_FUSED:
        optimizer = rule.torch_cls(make_params(shapes, device), fused=True, **rule.torch_options)
        return [Variant("torch fused", optimizer.step, optimizer)]
    candidates = []
    for name, foreach in (("torch for-loop", False), ("torch foreach", True)):
        optimizer = rule.torch_cls(make_params(shapes, device), foreach=foreach,
                                   **rule.torch_options)
        candidates.append(Variant(name, optimizer.step, optimizer))
    race(candidates, max(3, repeats // 3), device)
    best = min(candidates, key=lambda v: v.median)
    best.times.clear()
    return [best]


def state_bytes(optimizer) -> int:
    seen, total = set(), 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                key = (value.data_ptr(), value.nbytes)
                if key not in seen:
                    seen.add(key)
                    total += value.nbytes
    return total


# -- the measurements ------------------------------------------------------------------------------

def fixed_step_costs(device: torch.device, repeats: int) -> tuple[float, float]:
    """Seconds of a step that moves almost no memory: torch.optim.Adam(fused=True) on one
    1-element tensor, and regopt's compiled RMSprop on two. What a step costs at any size (the
    optimizer API, its hooks, the kernel launch): the floor under small models' steps."""
    def tiny(count: int) -> list[torch.nn.Parameter]:
        return make_params([(1,)] * count, device)
    theirs = torch.optim.Adam(tiny(1), fused=True)
    ours = ro.RMSprop(tiny(2), fused=True)
    variants = [Variant("torch fused Adam", theirs.step, theirs),
                Variant("regopt compiled RMSprop", ours.step, ours)]
    race(variants, max(repeats, 101), device, probe=False)   # a probe would evict their caches
    return variants[0].median, variants[1].median


@dataclass
class StepResult:
    rule: str
    size: str
    numel: int
    variants: list[Variant]
    engine: str
    bandwidth: float          # in-place bytes per second, measured in the same race


def bench_rule(name: str, size: str, device, repeats: int) -> StepResult:
    rule, shapes = RULES[name], shapes_of(size)
    variants = regopt_variants(rule, shapes, device) + torch_variants(rule, shapes, device, repeats)
    numel = sum(math.prod(shape) for shape in shapes)
    bandwidth = race(variants, repeats, device,
                     probe_after=probe_after_for(numel * rule.bytes_per_param))
    engine = "/".join(sorted(set(fast.engines(variants[1].optimizer))))
    return StepResult(name, size, numel, variants, engine, bandwidth)


def soft_threshold_(params, threshold: float) -> None:
    for p in params:
        torch._C._nn.softshrink(p, threshold, out=p)


REGOPT_REGULARIZED_BYTES, TORCH_REGULARIZED_BYTES = 32, 48
"""Bytes per parameter of the regularized step. regopt: the norm reads g (4), the update reads
theta, g, m, v and writes theta, m, v (28). torch's composition: clip_grad_norm_ reads g for the
norm and rewrites it scaled (4 + 8), fused AdamW moves 28, softshrink reads and writes theta (8)."""


def bench_regularized(size: str, device, repeats: int) -> tuple[int, list[Variant], float]:
    """Adam + decoupled decay + prox L1 + global-norm clipping: regopt, and torch's composition."""
    shapes = shapes_of(size)
    lr, decay, l1 = 1e-3, 1e-2, 1e-4
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in
                                                      make_params(shapes, device)]))
    max_norm = 0.5 * float(grad_norm)          # clipping active on every step
    options = dict(lr=lr, weight_decay=decay, decoupled_weight_decay=True, l1=l1)

    def fresh_gradients(params):
        """Clipping scales .grad in place: restore it before each step, as a backward pass would."""
        pristine = [p.grad.clone() for p in params]
        return lambda: torch._foreach_copy_([p.grad for p in params], pristine)

    variants = []
    for name, fused in (("regopt reference", None), ("regopt fast", True)):
        params = make_params(shapes, device)
        optimizer = ro.Adam(params, fused=fused, **options)
        variants.append(Variant(name, lambda o=optimizer: fast.clipped_step(o, max_norm),
                                optimizer, fresh_gradients(params)))
    params = make_params(shapes, device)
    adamw = torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=True)

    def torch_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        adamw.step()
        with torch.no_grad():
            soft_threshold_(params, lr * l1)
    variants.append(Variant("torch clip + fused AdamW + softshrink", torch_step, adamw,
                            fresh_gradients(params)))
    numel = sum(math.prod(shape) for shape in shapes)
    bandwidth = race(variants, repeats, device,
                     probe_after=probe_after_for(REGOPT_REGULARIZED_BYTES * numel))
    return numel, variants, bandwidth


def one_stream_squares(g):
    """sum g^2 in float64 by a compiled loop that reads g as one stream (for the reductions race)."""
    return (fast.squares(g),)


def bench_reductions(size: str, device, repeats: int) -> tuple[int, list[Variant], float]:
    """The global norm's pass, one read of every gradient: torch's, and regopt's compiled kernels
    reading each tensor as one stream and as fast.READ_STREAMS streams (regopt.optim.fast.segments)."""
    grads = [p.grad for p in make_params(shapes_of(size), device)]
    flat = [g.view(-1) for g in grads]
    kernels = {name: fast.kernel(function, ("tensor",), grads[0].dtype, device, 0)
               for name, function in (("one", one_stream_squares), ("several", fast.grad_squares))}
    bodies = [g[:g.numel() - g.numel() % fast.READ_STREAMS] for g in flat]
    variants = [
        Variant("torch _foreach_norm (clip_grad_norm_)", lambda: torch._foreach_norm(grads)),
        Variant("torch dot (BLAS)", lambda: [g.dot(g) for g in flat]),
        Variant("regopt compiled, one stream", lambda: [kernels["one"](g) for g in flat]),
        Variant(f"regopt compiled, {fast.READ_STREAMS} streams",
                lambda: [kernels["several"](g) for g in bodies]),
    ]
    numel = sum(g.numel() for g in grads)
    bandwidth = race(variants, repeats, device, probe_after=probe_after_for(4 * numel))
    return numel, variants, bandwidth


# -- output ----------------------------------------------------------------------------------------

def fmt_time(seconds: float) -> str:
    if seconds >= 1e-1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def step_table(results: list[StepResult], fixed: float) -> list[str]:
    """One row per (size, rule); ``fixed``: the fixed cost of a step (fixed_step_costs, torch's)."""
    lines = ["| params | rule | regopt reference | regopt fast (engine) | compiled only | "
             "torch best (variant) | fast / torch | bound | fast / bound | "
             "fast / (bound + fixed) | fast GB/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        by_name = {v.name: v for v in r.variants}
        reference, fast_v = by_name["regopt reference"], by_name["regopt fast"]
        compiled = by_name.get("regopt compiled")
        torch_v = next((v for v in r.variants if v.name.startswith("torch")), None)
        traffic = RULES[r.rule].bytes_per_param * r.numel
        bound = traffic / r.bandwidth
        cells = [
            r.size, r.rule, fmt_time(reference.median),
            f"{fmt_time(fast_v.median)} ({r.engine})",
            fmt_time(compiled.median) if compiled else "-",
            f"{fmt_time(torch_v.median)} ({torch_v.name.removeprefix('torch ')})" if torch_v
            else "none",
            f"{fast_v.median / torch_v.median:.2f}x" if torch_v else "-",
            fmt_time(bound), f"{fast_v.median / bound:.2f}x",
            f"{fast_v.median / (bound + fixed):.2f}x",
            f"{traffic / fast_v.median / 1e9:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def regularized_table(rows: list[tuple[str, int, list[Variant], float]]) -> list[str]:
    """The regularized race, with torch's composition against its own bound (48 B/param) and
    ``bound / torch``: fast / torch if regopt ran at its bound, the least any step that reads the
    gradients once for the norm and once for the update could reach against this race's torch."""
    lines = ["| params | regopt reference | regopt fast | torch composition | fast / torch | "
             "bound (32 B/param) | fast / bound | torch / its bound (48 B/param) | "
             "bound / torch |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size, numel, variants, bandwidth in rows:
        reference, fast_v, torch_v = variants
        bound = REGOPT_REGULARIZED_BYTES * numel / bandwidth
        torch_bound = TORCH_REGULARIZED_BYTES * numel / bandwidth
        lines.append(f"| {size} | {fmt_time(reference.median)} | {fmt_time(fast_v.median)} | "
                     f"{fmt_time(torch_v.median)} | {fast_v.median / torch_v.median:.2f}x | "
                     f"{fmt_time(bound)} | {fast_v.median / bound:.2f}x | "
                     f"{torch_v.median / torch_bound:.2f}x | {bound / torch_v.median:.2f}x |")
    return lines


def reductions_table(rows: list[tuple[str, int, list[Variant], float]]) -> list[str]:
    lines = ["| params | variant | time | bytes/param at the probe's bandwidth | / bound (4 B) |",
             "|---|---|---:|---:|---:|"]
    for size, numel, variants, bandwidth in rows:
        for variant in variants:
            moved = variant.median * bandwidth / numel
            lines.append(f"| {size} | {variant.name} | {fmt_time(variant.median)} | "
                         f"{moved:.1f} | {moved / 4:.2f}x |")
    return lines


def state_table(results: list[StepResult]) -> list[str]:
    lines = ["| rule | minimum | regopt reference | regopt fast (+ packing workspace) | torch |",
             "|---|---:|---:|---:|---:|"]
    seen = set()
    for r in results:
        if r.rule in seen or r.size != results[0].size:
            continue
        seen.add(r.rule)
        by_name = {v.name: v for v in r.variants}
        per = lambda v: state_bytes(v.optimizer) / r.numel   # noqa: E731
        fast_v = by_name["regopt fast"]
        workspace = fast.workspace_bytes(fast_v.optimizer) / r.numel
        torch_v = next((v for v in r.variants if v.name.startswith("torch")), None)
        lines.append(f"| {r.rule} | {RULES[r.rule].state_per_param} | "
                     f"{per(by_name['regopt reference']):.1f} | {per(fast_v):.1f} "
                     f"(+{workspace:.2f}) | {f'{per(torch_v):.1f}' if torch_v else 'none'} |")
    return lines


def write_markdown(path: str, section: list[str], marker: str = "bench_optim") -> None:
    """Replace this benchmark's section of the file (between its markers), or append it."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = "\n".join([start, *section, end]) + "\n"
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = ""
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text + ("\n" if text and not text.endswith("\n\n") else "") + block
    with open(path, "w") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", help=f"default {' '.join(FULL_SIZES)} "
                        f"(--quick: {' '.join(QUICK_SIZES)}); 'mlp' or COUNTxNUMEL")
    parser.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES))
    parser.add_argument("--repeats", type=int, help="timed steps per variant (default 15; "
                        "--quick: 7)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: small sizes, few repeats")
    parser.add_argument("--cold", action="store_true", help="flush the caches before each timed "
                        "step, as forward and backward passes do in training (default: warm)")
    parser.add_argument("--markdown", help="write the tables into this file (its own section)")
    parser.add_argument("--reductions-only", action="store_true",
                        help="only the race of the global norm's read pass (its own section)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    CACHE["cold"] = args.cold
    CACHE["flush"] = torch.zeros(64 * 2**20 // 4, device=device)    # 64 MB, twice the L3 here
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    repeats = args.repeats or (7 if args.quick else 15)

    reductions = [(size, *bench_reductions(size, device, repeats)) for size in sizes[-1:]]
    reductions_section = [
        "### Reading every gradient once: the global norm's pass", "",
        f"`python bench/bench_optim.py --reductions-only --markdown BENCHMARKS.md` ({args.device}, "
        f"{torch.get_num_threads()} threads, medians of {repeats}). The bound reads 4 bytes per "
        "parameter at the in-place bandwidth of the same race (x.add_(1) on "
        f"{PROBE_MEGABYTES} MB, which reads 4 and writes 4 per element).", "",
        *reductions_table(reductions), ""]
    print("\n".join(reductions_section), flush=True)
    if args.markdown:
        write_markdown(args.markdown, reductions_section, "bench_optim_reductions")
    if args.reductions_only:
        return 0

    fixed = fixed_step_costs(device, repeats)
    print(f"fixed step cost: torch fused Adam {fmt_time(fixed[0])}, regopt compiled RMSprop "
          f"{fmt_time(fixed[1])}", flush=True)
    results = []
    for size in sizes:
        for name in args.rules:
            results.append(bench_rule(name, size, device, repeats))
            print("\n".join(step_table(results[-1:], fixed[0])[2:]), flush=True)
            if size != sizes[0]:        # the state table reads only the first size's optimizers
                release(results[-1].variants)
    regularized = []
    for size in sizes:
        numel, variants, bandwidth = bench_regularized(size, device, repeats)
        regularized.append((size, numel, variants, bandwidth))
        print("\n".join(regularized_table(regularized[-1:])[2:]), flush=True)
        release(variants)
    bandwidths = sorted(r.bandwidth for r in results) + sorted(row[3] for row in regularized)

    section = [
        "## Optimizer step (bench/bench_optim.py)", "",
        f"{torch.__version__}, {args.device}, {torch.get_num_threads()} threads, medians of "
        f"{repeats} interleaved {'cold' if args.cold else 'warm'} steps"
        f"{' (--quick)' if args.quick else ''}. In-place bandwidth (x.add_(1) on "
        f"{PROBE_MEGABYTES} MB, timed in every race: among the variants' steps, or for steps "
        "that move less than 32 MB in rounds of its own right after theirs): median "
        f"{statistics.median(bandwidths) / 1e9:.1f} GB/s, {min(bandwidths) / 1e9:.1f}-"
        f"{max(bandwidths) / 1e9:.1f} over the races. Bound: the rule's minimum bytes per "
        "parameter at the bandwidth of its own race (sgd 12, momentum/nesterov/adagrad/rmsprop "
        "20, adam/adamw 28, amsgrad 36, lars 28, lamb 40).", "",
        f"Fixed cost of a step that moves almost no memory (the optimizer API, its hooks and the "
        f"kernel launch): torch.optim.Adam(fused=True) on one 1-element tensor "
        f"{fmt_time(fixed[0])}, regopt's compiled RMSprop on two {fmt_time(fixed[1])}. "
        "`fast / (bound + fixed)` adds torch's fixed cost to the bound: the least a step through "
        "torch.optim's API can take, which matters at the MLP's size.", "",
        *step_table(results, fixed[0]), "",
        "### Regularized step: Adam + decoupled decay + prox L1 + global-norm clipping", "",
        "regopt: `fast.clipped_step(Adam(..., decoupled_weight_decay=True, l1=...))`; torch: "
        "`clip_grad_norm_` + `AdamW(fused=True)` + `softshrink(p, out=p)`.", "",
        *regularized_table(regularized), "",
        "### Optimizer state, bytes per parameter", "",
        *state_table(results), "",
    ]
    print("\n".join(section))
    if args.markdown:
        write_markdown(args.markdown, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
