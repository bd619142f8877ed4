"""Mini-batches over an in-memory split.

Full-batch, stochastic and mini-batch gradient descent differ only in `batch_size`:
"full" (the whole split, one step per epoch), 1, or anything between.

Shuffling draws one permutation per epoch, `torch.randperm(N, generator=generator)`, and gathers
the split once in that order (x[perm]); the batches are then contiguous slices of the gathered
copy. The permutation comes only from `generator`, so a trainer that saves and restores the
generator's state resumes with exactly the same batches.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Iterator

import torch

from regopt.data.datasets import Split
from regopt.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]
EVALUATION_BATCH_SIZE = 8192


def resolve_batch_size(batch_size: int | str, n: int) -> int:
    """The batch size as an int for a split of `n` samples: "full" -> n (at least 1).

    Raises ConfigError unless `batch_size` is an integer >= 1 or "full".
    """
    if batch_size == "full":
        return max(n, 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1 or 'full', got {batch_size!r}")
    return int(batch_size)


def num_batches(n: int, batch_size: int | str) -> int:
    """How many batches an epoch over `n` samples has; the last partial batch counts."""
    return math.ceil(n / resolve_batch_size(batch_size, n))


def iterate_batches(
    split: Split,
    batch_size: int | str,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> Iterator[Batch]:
    """Yield (x, y) batches covering every sample of `split` exactly once.

    With shuffle=True the order is `torch.randperm(len(split), generator=generator)`, drawn
    when this function is called (not lazily at the first batch), so the generator's state
    right after the call already includes this epoch's draw. generator=None uses torch's global
    generator. The last batch may be smaller than `batch_size`.
    """
    size = resolve_batch_size(batch_size, len(split))
    if not shuffle:
        return _slices(split.x, split.y, size)
    device = generator.device if generator is not None else torch.device("cpu")
    permutation = torch.randperm(len(split), generator=generator, device=device)
    return _gathered(split.x, split.y, permutation.to(split.x.device), size)


def evaluation_batches(
    split: Split, batch_size: int | str = EVALUATION_BATCH_SIZE
) -> Iterator[Batch]:
    """Yield (x, y) batches of `split` in order, without shuffling (for evaluation)."""
    return _slices(split.x, split.y, resolve_batch_size(batch_size, len(split)))


def _gathered(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, size: int) -> Iterator[Batch]:
    """Batches of the rows `order` names, gathered one batch at a time: a copy of the whole
    split per epoch would add its size to the peak memory (172 MB for Fashion-MNIST) for no
    gain in speed (measured: the same epoch time)."""
    for start in range(0, len(order), size):
        index = order[start : start + size]
        yield x[index], y[index]


def _slices(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[Batch]:
    for start in range(0, len(y), size):
        yield x[start : start + size], y[start : start + size]
