"""Data: the IDX reader, the data set registry with fixed splits, and mini-batches."""

from regopt.data.batches import (
    EVALUATION_BATCH_SIZE,
    evaluation_batches,
    iterate_batches,
    num_batches,
    resolve_batch_size,
)
from regopt.data.datasets import (
    DATASETS,
    DEFAULT_FASHION_MNIST_DIR,
    IDX_FILES,
    Dataset,
    Split,
    check_labels,
    load_dataset,
    load_mnist_format,
)
from regopt.data.idx import IDX_DTYPES, parse_idx, read_idx, write_idx

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "EVALUATION_BATCH_SIZE",
    "IDX_DTYPES",
    "IDX_FILES",
    "Dataset",
    "Split",
    "check_labels",
    "evaluation_batches",
    "iterate_batches",
    "load_dataset",
    "load_mnist_format",
    "num_batches",
    "parse_idx",
    "read_idx",
    "resolve_batch_size",
    "write_idx",
]
