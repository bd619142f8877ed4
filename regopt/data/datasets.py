"""The data sets regopt trains on, loaded whole into memory as float tensors with fixed splits.

    digits         sklearn's 8x8 handwritten digits, 1,797 images, pixels / 16; stratified
                   60/20/20 train/val/test split.
    fashion-mnist  Xiao, Rasul & Vollgraf (2017), 28x28 clothing images in 10 classes, read from
                   the four IDX files; the official 60,000 training images are split 55,000 train /
                   5,000 validation by a seeded permutation; the official 10,000 test images are
                   the test split, in file order.
    mnist          LeCun et al. (1998), the same file names and split as fashion-mnist; data_dir is
                   required.
    synthetic      2,000 samples, 20 features, 4 classes of Gaussian blobs (fixed seed), min-max
                   scaled to [0, 1]; stratified 60/20/20. Small and learnable: for tests.
    rare-features  6,000 bag-of-features examples: 20 common binary features (each in 30% of the
                   examples) and 400 rare ones (one per example, so each is in 0.25% of them); the
                   label depends mostly on the rare feature (see load_rare_features). An
                   embedding-like task with sparse gradients (`regopt claims`, claim 6).

Every split's `x` is a float32 tensor [N, D] in [0, 1] and `y` an int64 tensor [N] of labels in
[0, num_classes). `split_seed` chooses the split only; the same seed gives the same split.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from regopt.data.idx import read_idx
from regopt.errors import DataError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# The four files of the MNIST family; each may also carry a .gz suffix.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_VALIDATION_FRACTION = 5_000 / 60_000  # 55,000 / 5,000 for the official 60,000 images
SYNTHETIC_SHAPE = (2_000, 20, 4)  # samples, features, classes
SYNTHETIC_SEED = 20240601  # fixes the synthetic data itself; split_seed only chooses the split
# rare-features: samples, common features, rare features, classes; how often a common feature is on
RARE_FEATURES_SHAPE = (6_000, 20, 400, 4)
RARE_FEATURES_COMMON_RATE = 0.3
RARE_FEATURES_SEED = 20240607


@dataclass
class Split:
    """One split of a data set: `x` float32 [N, D] in [0, 1], `y` int64 labels [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"a split needs x [N, D] and y [N], got x {tuple(self.x.shape)} and "
                f"y {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device | str) -> Split:
        """The same split with both tensors on `device`."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    """A data set with fixed train / validation / test splits."""

    name: str
    train: Split
    val: Split
    test: Split
    num_features: int
    num_classes: int

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with every split on `device`."""
        return Dataset(
            self.name, self.train.to(device), self.val.to(device), self.test.to(device),
            self.num_features, self.num_classes,
        )


def load_dataset(name: str, data_dir: str | Path | None = None, split_seed: int = 0) -> Dataset:
    """Load data set `name` (see DATASETS) with the split chosen by `split_seed`.

    `data_dir` is the folder of the IDX files for fashion-mnist (default
    /usr/share/datasets/fashion-mnist) and mnist (required); digits and synthetic ignore it.
    Raises DataError for an unknown name, a missing folder or file, or corrupt data.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}{_did_you_mean(key, DATASETS)}")
    return DATASETS[key](Path(data_dir) if data_dir is not None else None, split_seed)


def load_digits_dataset(data_dir: Path | None = None, split_seed: int = 0) -> Dataset:
    """sklearn's 8x8 digits (1,797 images, 64 features, pixels 0..16 scaled by 1/16)."""
    from sklearn.datasets import load_digits  # imported here: sklearn takes seconds to import

    x, y = load_digits(return_X_y=True)
    return _stratified_dataset("digits", (x / 16.0).astype(np.float32), y, 10, split_seed)


def load_synthetic_dataset(data_dir: Path | None = None, split_seed: int = 0) -> Dataset:
    """Gaussian blobs: class c has mean mu_c ~ N(0, 0.6^2 I), samples x = mu_c + N(0, I).

    Equal class counts; features min-max scaled to [0, 1] over all samples. The data is the same
    on every call (SYNTHETIC_SEED); `split_seed` only chooses the stratified 60/20/20 split.
    """
    samples, features, classes = SYNTHETIC_SHAPE
    rng = np.random.default_rng(SYNTHETIC_SEED)
    means = rng.normal(0.0, 0.6, size=(classes, features))
    y = rng.permutation(np.arange(samples) % classes)
    x = means[y] + rng.normal(0.0, 1.0, size=(samples, features))
    x = (x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0))
    return _stratified_dataset("synthetic", x.astype(np.float32), y, classes, split_seed)


def load_rare_features(data_dir: Path | None = None, split_seed: int = 0) -> Dataset:
    """Rare features (the setting of Duchi, Hazan & Singer, 2011, for Adagrad): binary features,
    most of them rare, each with its own class signal, as in an embedding of rare tokens.

    Example i has common features c_i in {0,1}^20 (each on with probability 0.3) and exactly one
    rare feature r_i, uniform over 400 (one-hot, so each rare feature is in ~15 examples, ~9 of
    them in training). Rare feature r has a class k_r (balanced over the classes); the common
    features have class weights A ~ N(0, 1)^[20, 4]. The label is
    y_i = argmax_c (0.5 * c_i @ A + 3 * onehot(k_r_i))_c, which is k_r_i for ~91% of the examples:
    a model must learn every rare feature's class from its few examples. Every example holds a
    rare feature, so test accuracy is the accuracy on examples with rare features. The data is the
    same on every call (RARE_FEATURES_SEED); `split_seed` only chooses the stratified 60/20/20 split.
    """
    samples, common, rare, classes = RARE_FEATURES_SHAPE
    rng = np.random.default_rng(RARE_FEATURES_SEED)
    common_on = rng.random((samples, common)) < RARE_FEATURES_COMMON_RATE
    rare_index = rng.integers(0, rare, samples)
    rare_class = rng.permutation(np.arange(rare) % classes)
    common_weights = rng.normal(0.0, 1.0, size=(common, classes))
    scores = 0.5 * common_on @ common_weights + 3.0 * np.eye(classes)[rare_class[rare_index]]
    x = np.concatenate([common_on, np.eye(rare, dtype=bool)[rare_index]], axis=1)
    return _stratified_dataset("rare-features", x.astype(np.float32), scores.argmax(axis=1),
                               classes, split_seed)


def load_fashion_mnist(data_dir: Path | None = None, split_seed: int = 0) -> Dataset:
    """Fashion-MNIST from the four IDX files in `data_dir` (default DEFAULT_FASHION_MNIST_DIR)."""
    return load_mnist_format("fashion-mnist", data_dir or DEFAULT_FASHION_MNIST_DIR, split_seed)


def load_mnist(data_dir: Path | None = None, split_seed: int = 0) -> Dataset:
    """MNIST from the four IDX files in `data_dir`, which is required."""
    if data_dir is None:
        raise DataError("data set 'mnist' needs data_dir: the folder with its four IDX files")
    return load_mnist_format("mnist", data_dir, split_seed)


def load_mnist_format(
    name: str, folder: Path, split_seed: int = 0, num_classes: int = 10
) -> Dataset:
    """Load the four MNIST-family IDX files from `folder` and split them.

    Images: uint8 [N, H, W] scaled by 1/255 and flattened; labels: uint8 [N] in [0, num_classes).
    The training files are split by a seeded permutation into train and validation
    (MNIST_VALIDATION_FRACTION of them, 5,000 of 60,000); the test files are the test split.
    """
    paths = {role: _find_idx_file(folder, stem) for role, stem in IDX_FILES.items()}
    train_images, train_labels = _read_images_and_labels(
        paths["train_images"], paths["train_labels"], num_classes
    )
    test_images, test_labels = _read_images_and_labels(
        paths["test_images"], paths["test_labels"], num_classes
    )
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{paths['test_images']}: images are {test_images.shape[1:]}, but the training "
            f"images are {train_images.shape[1:]}"
        )
    train_index, val_index = _validation_split(len(train_labels), split_seed)
    return Dataset(
        name=name,
        train=_image_split(train_images, train_labels, train_index),
        val=_image_split(train_images, train_labels, val_index),
        test=_image_split(test_images, test_labels, slice(None)),
        num_features=int(np.prod(train_images.shape[1:])),
        num_classes=num_classes,
    )


# name -> loader(data_dir, split_seed); iterate it for the names.
DATASETS: dict[str, Callable[[Path | None, int], Dataset]] = {
    "digits": load_digits_dataset,
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "synthetic": load_synthetic_dataset,
    "rare-features": load_rare_features,
}


def _find_idx_file(folder: Path, stem: str) -> Path:
    """The file `stem`.gz or `stem` in `folder` (the .gz one first)."""
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist or is not a folder")
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"data folder {folder} has no {stem}.gz (nor {stem})")


def _read_images_and_labels(
    images_path: Path, labels_path: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 images [N, H, W], found {images.dtype} "
            f"{list(images.shape)}"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels [N], found shape {list(labels.shape)}")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels, but {images_path} has {len(images)} images"
        )
    check_labels(labels, num_classes, str(labels_path))
    return images, labels


def check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    """Raise DataError naming `source` and the first label outside [0, num_classes)."""
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        index = int(np.argmax(outside))
        raise DataError(
            f"{source}: label {labels[index]} at index {index} is outside [0, {num_classes})"
        )


def _validation_split(count: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation indices from a seeded permutation of range(count)."""
    val_count = max(1, round(count * MNIST_VALIDATION_FRACTION))
    if count - val_count < 1:
        raise DataError(f"{count} training images are too few to split off a validation set")
    permutation = np.random.default_rng(split_seed).permutation(count)
    return np.sort(permutation[val_count:]), np.sort(permutation[:val_count])


def _image_split(images: np.ndarray, labels: np.ndarray, index) -> Split:
    # Gather in uint8 (4x less memory traffic), then convert and scale once.
    pixels = torch.from_numpy(images[index].reshape(-1, int(np.prod(images.shape[1:]))))
    x = pixels.to(torch.float32).div_(255.0)
    return Split(x, torch.from_numpy(labels[index].astype(np.int64)))


def _stratified_dataset(
    name: str, x: np.ndarray, y: np.ndarray, num_classes: int, split_seed: int
) -> Dataset:
    """A 60/20/20 train/val/test split, stratified by class, seeded by split_seed."""
    from sklearn.model_selection import train_test_split

    check_labels(y, num_classes, name)
    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=0.2, stratify=y, random_state=split_seed)
    train, val = train_test_split(rest, test_size=0.25, stratify=y[rest], random_state=split_seed)

    def split(part: np.ndarray) -> Split:
        part = np.sort(part)
        return Split(torch.from_numpy(x[part]), torch.from_numpy(y[part].astype(np.int64)))

    return Dataset(name, split(train), split(val), split(test), x.shape[1], num_classes)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known: {', '.join(sorted(choices))})"
