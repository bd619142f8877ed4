"""A/B of the cache budget of two-pass rules (regopt.optim.fast.PASSES_IN_CACHE_BYTES).

LARS and LAMB read each tensor twice (norms, then the update); a kernel call takes as many large
tensors as fit in the budget with their gradients and state (fast.bucket_size). This times one
optimizer per budget, interleaved step by step in one process (medians of warm steps), so that the
VM's drift slows all of them alike:

    python bench/bench_buckets.py --rule lamb --size 100x250k          # 16 MB against 8 per call
    python bench/bench_buckets.py --rule lars --size 150x40k --budgets-mb 0 16 inf
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optim import make_params, shapes_of  # noqa: E402

import regopt.optim as ro  # noqa: E402
from regopt.optim import fast  # noqa: E402

RULES = {"lamb": (ro.LAMB, dict(lr=1e-3, weight_decay=1e-2)),
         "lars": (ro.LARS, dict(lr=0.1, weight_decay=1e-4))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", choices=list(RULES), default="lamb")
    parser.add_argument("--size", default="100x250k", help="COUNTxNUMEL, e.g. 100x250k")
    parser.add_argument("--budgets-mb", nargs="+", default=["16", "inf"],
                        help="budgets in MB; inf: STEP_BUCKET to a call, 0: one to a call")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    cls, options = RULES[args.rule]
    optimizers = {}
    for budget in args.budgets_mb:
        fast.PASSES_IN_CACHE_BYTES = float(budget) * 2**20      # read when the plan is built
        optimizer = cls(make_params(shapes_of(args.size), torch.device("cpu")), fused=True,
                        **options)
        optimizer.step()
        optimizers[budget] = optimizer
    times: dict[str, list[float]] = {budget: [] for budget in optimizers}
    for _ in range(args.repeats):
        for budget, optimizer in optimizers.items():
            optimizer.step()                                  # warm, as bench_optim does
            started = time.perf_counter()
            optimizer.step()
            times[budget].append(time.perf_counter() - started)
    for budget, values in times.items():
        print(f"{args.rule} {args.size} budget {budget} MB: "
              f"{1e3 * statistics.median(values):.2f} ms per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
