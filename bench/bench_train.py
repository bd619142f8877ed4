"""Epoch time of `regopt train` against the two loops people write, side by side in one run.

(a) the conventional PyTorch loop: a `Dataset` whose `__getitem__` returns one sample, a
    `DataLoader(batch_size, shuffle=True)` that collates them, torch.optim.Adam;
(b) a hand-written in-memory loop: `torch.randperm` per epoch, index the tensors, torch.optim.Adam;
(c) regopt's engine, epoch by epoch (the loop of `regopt train`, with its fast-path optimizer),
    evaluation on the validation split included in its epoch time (the baselines do not evaluate:
    the comparison is conservative).

All three train the same MLP 784-256-128-10 with Adam (lr 1e-3, weight decay 1e-4) on the same
Fashion-MNIST tensors. The three loops run one epoch each in turn (interleaved, so that a noisy
machine slows all of them alike), repeated, and medians are reported.

    python bench/bench_train.py --epochs 5 --batch-sizes 64 128 --markdown BENCHMARKS.md
    python bench/bench_train.py --quality --seeds 0 1 2       # the 20-epoch accuracy target
    python bench/bench_train.py --fast --seeds 0 1 2          # the fast preset: time to 0.88
    python bench/bench_train.py --memory                      # peak memory, one epoch each
    python bench/bench_train.py --compile                     # adds regopt with torch.compile
    python bench/bench_train.py --device cuda                 # data, models and steps on a GPU

With --isolated each loop instead runs in a fresh process of its own (one warm-up epoch, then
the timed ones), the processes taking turns over --rounds rounds: what a user running one of the
loops gets, without the other loops' tensors in the caches. Interleaving in one process is the
default because it is the steadier comparison on a busy machine.

Every loop computes with subnormal floats flushed to zero (torch.set_flush_denormal), as
`regopt train` does by default (RunConfig.flush_denormals): the same floating-point setting for
all of them. --keep-denormals times them all without it: on the x86 VM here, the classic recipe's
weights and Adam moments decay into the subnormal range within the first epochs at batch 64 and
every loop slows down by 2-5x (see regopt.engine.denormals_flushed).

With --compile a fourth loop runs regopt's engine with `regopt train --compile` (the model's
forward and backward through torch.compile); its first epoch, which compiles, is reported apart
and left out of the median.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from regopt.data import load_dataset
from regopt.engine import (CompiledForward, build_model, build_optimizer, evaluate, fit,
                           train_one_epoch)
from regopt.lab.config import RunConfig
from regopt.models import build_mlp


class OneSampleDataset(torch.utils.data.Dataset):
    """The conventional Dataset: one (image, label) pair per __getitem__."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


def classic_model_and_optimizer(data, seed: int):
    torch.manual_seed(seed)
    model = build_mlp(data.num_features, data.num_classes).to(data.train.x.device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)


def train_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def dataloader_epochs(data, batch_size: int, seed: int):
    """Generator: each next() runs one epoch of loop (a) and yields its seconds."""
    model, optimizer = classic_model_and_optimizer(data, seed)
    device = data.train.x.device                 # the conventional loop: samples on the CPU,
    loader = torch.utils.data.DataLoader(      # each batch moved to the device
        OneSampleDataset(data.train.x.cpu(), data.train.y.cpu()), batch_size=batch_size,
        shuffle=True)
    while True:
        started = time.perf_counter()
        for x, y in loader:
            train_step(model, optimizer, x.to(device, non_blocking=True),
                       y.to(device, non_blocking=True))
        synchronize(device)
        yield time.perf_counter() - started


def in_memory_epochs(data, batch_size: int, seed: int):
    """Generator: each next() runs one epoch of loop (b) and yields its seconds."""
    model, optimizer = classic_model_and_optimizer(data, seed)
    x_all, y_all = data.train.x, data.train.y
    while True:
        started = time.perf_counter()
        order = torch.randperm(len(y_all), device=y_all.device)
        for start in range(0, len(y_all), batch_size):
            index = order[start:start + batch_size]
            train_step(model, optimizer, x_all[index], y_all[index])
        synchronize(y_all.device)
        yield time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimes:
    """A progress sink for regopt.engine.fit that records each epoch's row."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def start(self, *args) -> None:
        pass

    def batch(self, *args) -> None:
        pass

    def epoch(self, row: dict) -> None:
        self.rows.append(row)


def regopt_epochs(data, batch_size: int, seed: int, compile: bool = False):
    """Generator: each next() runs one epoch of regopt's engine (what `regopt train` runs each
    epoch: its batches, its optimizer with the fast path, then evaluation on the validation split)
    and yields its seconds. Stepping the engine epoch by epoch lets the loops interleave."""
    config = RunConfig(dataset="fashion-mnist", batch_size=batch_size, seed=seed, compile=compile)
    device = data.train.x.device
    torch.manual_seed(seed)
    model = build_model(config, data).to(device)
    forward = CompiledForward(model) if compile else model
    optimizer = build_optimizer(config, model)
    batch_order = torch.Generator(device=device).manual_seed(seed)
    for epoch in itertools.count(1):
        started = time.perf_counter()
        train_one_epoch(model, optimizer, None, None, data.train, config, batch_order, None, epoch,
                        forward)
        evaluate(model, data.val)
        synchronize(device)
        yield time.perf_counter() - started


LOOPS = {"dataloader": dataloader_epochs, "in_memory": in_memory_epochs, "regopt": regopt_epochs}


def compare_epoch_times(batch_size: int, epochs: int, seed: int = 0, compile: bool = False,
                        device: str = "cpu") -> dict[str, float]:
    data = load_dataset("fashion-mnist").to(device)
    loops = {name: epochs_of(data, batch_size, seed) for name, epochs_of in LOOPS.items()}
    result = {}
    if compile:
        loops["compiled"] = regopt_epochs(data, batch_size, seed, compile=True)
        result["compiled_first"] = next(loops["compiled"])     # compiles: reported apart
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(epochs):
        for name, loop in loops.items():
            times[name].append(next(loop))
    return {**result, **{name: statistics.median(values) for name, values in times.items()}}


def print_epoch_times(loop: str, batch_size: int, epochs: int, flush: bool,
                      seed: int = 0) -> None:
    """Run in a fresh process by isolated_epoch_times: one warm-up epoch, then print the times."""
    torch.set_flush_denormal(flush)
    epochs_of = LOOPS[loop](load_dataset("fashion-mnist"), batch_size, seed)
    next(epochs_of)
    print(*[next(epochs_of) for _ in range(epochs)])


def isolated_epoch_times(batch_size: int, epochs: int, rounds: int,
                         flush: bool) -> dict[str, float]:
    """Median epoch seconds of each loop, each run in fresh processes that take turns."""
    times: dict[str, list[float]] = {name: [] for name in LOOPS}
    for _ in range(rounds):
        for name in LOOPS:
            script = (f"import bench_train as b; "
                      f"b.print_epoch_times({name!r}, {batch_size}, {epochs}, {flush})")
            result = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                    text=True, cwd=__file__.rsplit("/", 1)[0])
            times[name] += [float(value) for value in result.stdout.split()]
    return {name: statistics.median(values) for name, values in times.items()}


def quality(seeds: list[int], epochs: int) -> list[float]:
    accuracies = []
    for seed in seeds:
        summary = fit(RunConfig(dataset="fashion-mnist", epochs=epochs, batch_size=64, seed=seed))
        accuracies.append(summary["test_accuracy"])
        print(f"seed {seed}: test accuracy {summary['test_accuracy']:.4f} "
              f"({summary['train_seconds']:.1f} s of training)", flush=True)
    return accuracies


def fast_preset(seeds: list[int]) -> list[str]:
    """The fast preset's test accuracy and training seconds, against the classic recipe's seconds
    until its validation accuracy first reached 0.88 (the classic run logs no test accuracy per
    epoch)."""
    lines = []
    for seed in seeds:
        fast = fit(RunConfig.from_sources(overrides={"dataset": "fashion-mnist", "seed": seed},
                                          preset="fast"))
        lines.append(f"fast preset, seed {seed}: test accuracy {fast['test_accuracy']:.4f} after "
                     f"{fast['train_seconds']:.2f} s of training ({fast['epochs_run']} epochs)")
        print(lines[-1], flush=True)
    sink = EpochTimes()
    fit(RunConfig(dataset="fashion-mnist", epochs=20, seed=seeds[0]), progress=sink)
    elapsed = 0.0
    for row in sink.rows:
        elapsed += row["seconds"]
        if row["val_accuracy"] >= 0.88:
            lines.append(f"classic recipe, seed {seeds[0]}: validation accuracy {row['val_accuracy']:.4f}"
                         f" >= 0.88 first at epoch {row['epoch']}, after {elapsed:.1f} s")
            break
    else:
        lines.append(f"classic recipe, seed {seeds[0]}: validation accuracy never reached 0.88 in 20 epochs")
    print(lines[-1], flush=True)
    return lines


MEMORY_PROBES = {
    "classic loop (in-memory, torch.optim.Adam)":
        "import bench_train as b; from regopt.data import load_dataset; "
        "d = load_dataset('fashion-mnist'); next(b.in_memory_epochs(d, 64, 0))",
    "classic loop (DataLoader, torch.optim.Adam)":
        "import bench_train as b; from regopt.data import load_dataset; "
        "d = load_dataset('fashion-mnist'); next(b.dataloader_epochs(d, 64, 0))",
    "regopt train (engine, fast path, store and checkpoints)":
        "import tempfile; from regopt.engine import fit; from regopt.lab import RunConfig, RunStore; "
        "fit(RunConfig(dataset='fashion-mnist', epochs=1), RunStore(tempfile.mkdtemp()))",
}


def peak_memory() -> list[str]:
    """Peak resident memory (ru_maxrss) of a fresh process running one epoch of each loop."""
    lines = []
    script = ("{probe}; import resource; "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    for name, probe in MEMORY_PROBES.items():
        result = subprocess.run([sys.executable, "-c", script.format(probe=probe)], check=True,
                                capture_output=True, text=True, cwd=__file__.rsplit("/", 1)[0])
        lines.append(f"| {name} | {int(result.stdout.split()[-1]) / 1024:.0f} MiB |")
        print(lines[-1], flush=True)
    return ["| one epoch of Fashion-MNIST, batch 64, in a fresh process | peak RSS |", "|---|---|",
            *lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per method (medians over them)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--quality", action="store_true", help="run the 20-epoch accuracy check")
    parser.add_argument("--fast", action="store_true", help="the fast preset's time to 0.88")
    parser.add_argument("--memory", action="store_true", help="peak memory of one epoch each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--isolated", action="store_true",
                        help="each loop in fresh processes of its own, taking turns")
    parser.add_argument("--rounds", type=int, default=3, help="--isolated: processes per loop")
    parser.add_argument("--compile", action="store_true",
                        help="also time regopt's engine with the model compiled (torch.compile)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the epoch-time loops run (default cpu)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="time the loops with subnormal floats kept (default: flushed in all)")
    parser.add_argument("--markdown", help="append the result table to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.isolated and (args.compile or args.device != "cpu"):
        parser.error("--isolated times the three CPU loops only (no --compile, no --device)")

    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads", ""]
    if args.fast:
        lines += fast_preset(args.seeds)
    elif args.memory:
        lines += peak_memory()
    elif args.quality:
        accuracies = quality(args.seeds, epochs=20)
        mean, std = statistics.mean(accuracies), statistics.pstdev(accuracies)
        lines += [f"Classic recipe, 20 epochs, Fashion-MNIST, seeds {args.seeds}: test accuracy "
                  f"{mean:.4f} +- {std:.4f} (each: {', '.join(f'{a:.4f}' for a in accuracies)}); "
                  f"target >= 0.880"]
    else:
        compiled = " regopt --compile s/epoch (first epoch) | compiled / (b) |" * args.compile
        mode = (f"each loop in its own processes, {args.rounds} rounds of {args.epochs} epochs"
                if args.isolated else f"interleaved in one process, {args.epochs} epochs each")
        subnormals = "kept" if args.keep_denormals else "flushed to zero"
        torch.set_flush_denormal(not args.keep_denormals)
        lines += [f"device {args.device}, {mode}, subnormal floats {subnormals} in every loop", "",
                  "| batch | (a) DataLoader s/epoch | (b) in-memory s/epoch | regopt s/epoch "
                  "| (a) / regopt | regopt / (b) |" + compiled,
                  "|---|---|---|---|---|---|" + "---|---|" * args.compile]
        for batch_size in args.batch_sizes:
            t = isolated_epoch_times(batch_size, args.epochs, args.rounds,
                                     not args.keep_denormals) if args.isolated else \
                compare_epoch_times(batch_size, args.epochs, compile=args.compile,
                                    device=args.device)
            lines.append(f"| {batch_size} | {t['dataloader']:.3f} | {t['in_memory']:.3f} | "
                         f"{t['regopt']:.3f} | {t['dataloader'] / t['regopt']:.2f}x | "
                         f"{t['regopt'] / t['in_memory']:.3f} |")
            if args.compile:
                lines[-1] += (f" {t['compiled']:.3f} ({t['compiled_first']:.1f}) | "
                              f"{t['compiled'] / t['in_memory']:.3f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
