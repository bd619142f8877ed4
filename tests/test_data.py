"""Tests for regopt.data: the IDX reader, the data sets and their splits, mini-batches."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from regopt.data import (
    DATASETS,
    DEFAULT_FASHION_MNIST_DIR,
    IDX_FILES,
    Split,
    evaluation_batches,
    iterate_batches,
    load_dataset,
    num_batches,
    parse_idx,
    read_idx,
    resolve_batch_size,
    write_idx,
)
from regopt.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# IDX reader


def idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built by hand with struct: magic, sizes, then the payload as given."""
    header = struct.pack(">BBBB", 0, 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
    return header + payload


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_every_dtype_raw_and_gzip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    assert back.dtype.isnative and back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_idx_hand_built_big_endian_items_and_dims(tmp_path):
    payload = struct.pack(">6h", 258, -2, 0, 1, 32767, -32768)
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(0x0B, (2, 3), payload))
    np.testing.assert_array_equal(read_idx(path), [[258, -2, 0], [1, 32767, -32768]])


def test_idx_one_dimensional_labels_like_mnist(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(0x08, (4,), bytes([9, 0, 0, 3])))
    labels = read_idx(path)
    assert labels.shape == (4,) and labels.dtype == np.uint8
    assert labels.tolist() == [9, 0, 0, 3]


def test_gzip_detected_by_magic_bytes_not_by_name(tmp_path):
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (2, 2), bytes([1, 2, 3, 4]))))
    assert read_idx(path).tolist() == [[1, 2], [3, 4]]


def test_raw_idx_named_gz_is_still_read(tmp_path):
    path = tmp_path / "raw.gz"
    path.write_bytes(idx_bytes(0x08, (2,), bytes([7, 8])))
    assert read_idx(path).tolist() == [7, 8]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number 0x01000801"),
        (b"\x00\x00", "not an IDX file: 2 bytes, too short for a header"),
        (idx_bytes(0x0A, (1,), b"\x00"), "unknown IDX dtype code 0x0A"),
        (b"\x00\x00\x08\x00", "IDX header declares 0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "truncated header: expected 16 bytes"),
        (idx_bytes(0x08, (5,), b"\x01\x02\x03"), "truncated: expected 5 bytes of data, found 3"),
        (idx_bytes(0x0C, (2, 2), b"\x00" * 15), "truncated: expected 16 bytes of data, found 15"),
        (idx_bytes(0x08, (5,), b"\x01" * 7), "trailing bytes: expected 5 bytes of data, found 7"),
    ],
    ids=["bad-magic", "too-short", "dtype-code", "zero-dims", "short-header", "truncated",
         "truncated-int32", "trailing"],
)
def test_corrupt_idx_raises_data_error_naming_file_and_problem(tmp_path, data, message):
    for path, content in [(tmp_path / "f-raw", data), (tmp_path / "f.gz", gzip.compress(data))]:
        path.write_bytes(content)
        with pytest.raises(DataError) as error:
            read_idx(path)
        assert str(error.value).startswith(f"{path}: ")
        assert message in str(error.value)


def test_parse_idx_names_its_source():
    with pytest.raises(DataError, match=r"^mem: truncated: expected 2 bytes of data, found 1$"):
        parse_idx(idx_bytes(0x08, (2,), b"\x00"), source="mem")


def test_truncated_gzip_stream(tmp_path):
    compressed = gzip.compress(idx_bytes(0x08, (100,), bytes(range(100))))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: bad gzip stream: .*end-of-stream"):
        read_idx(path)


def test_gzip_with_wrong_crc(tmp_path):
    compressed = bytearray(gzip.compress(idx_bytes(0x08, (100,), bytes(range(100)))))
    compressed[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataError, match=r"crc\.gz: bad gzip stream: CRC check failed"):
        read_idx(path)


def test_gzip_magic_with_garbage_body(tmp_path):
    path = tmp_path / "garbage"
    path.write_bytes(b"\x1f\x8b" + b"not deflate data at all")
    with pytest.raises(DataError, match=r"garbage: bad gzip stream"):
        read_idx(path)


def test_gz_name_without_gzip_content_says_so(tmp_path):
    path = tmp_path / "text.gz"
    path.write_bytes(b"hello world")
    with pytest.raises(DataError, match=r"named \.gz but not gzip-compressed.*bad magic number"):
        read_idx(path)


def test_missing_idx_file(tmp_path):
    with pytest.raises(DataError, match=r"nope: file not found"):
        read_idx(tmp_path / "nope")


def test_write_idx_rejects_dtype_without_idx_code(tmp_path):
    with pytest.raises(DataError, match="cannot write dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# MNIST-format folders (small, written here) and the data set registry


def write_mnist_folder(folder: Path, train=24, test=6, size=4, gz=True, labels=None, seed=0):
    """Four small MNIST-format IDX files: images [N, size, size] uint8, labels cycle 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix, count in [("train", train), ("test", test)]:
        images = rng.integers(0, 256, size=(count, size, size), dtype=np.uint8)
        write_idx(folder / f"{IDX_FILES[prefix + '_images']}{suffix}", images)
        cycled = (np.arange(count) % 10).astype(np.uint8)
        write_idx(folder / f"{IDX_FILES[prefix + '_labels']}{suffix}", labels[prefix] if labels else cycled)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_folder_shapes_scaling_and_split(tmp_path, gz):
    folder = write_mnist_folder(tmp_path / "m", gz=gz)
    data = load_dataset("mnist", data_dir=folder, split_seed=3)
    assert (len(data.train), len(data.val), len(data.test)) == (22, 2, 6)
    assert data.num_features == 16 and data.num_classes == 10 and data.name == "mnist"
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1] == 16
    raw_train = read_idx(folder / f"{IDX_FILES['train_images']}{'.gz' if gz else ''}")
    raw_test = read_idx(folder / f"{IDX_FILES['test_images']}{'.gz' if gz else ''}")
    # test split: the test file in order, pixels / 255
    expected_test = torch.from_numpy(raw_test.reshape(6, 16)).float() / 255
    torch.testing.assert_close(data.test.x, expected_test)
    # train + val: a partition of the training file (same multiset of rows)
    rows = torch.cat([data.train.x, data.val.x]).mul(255).round().to(torch.uint8)
    expected = torch.from_numpy(raw_train.reshape(24, 16))
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, expected.tolist()))


def test_mnist_split_is_seeded(tmp_path):
    folder = write_mnist_folder(tmp_path / "m", train=120, test=2)
    first = load_dataset("mnist", folder, split_seed=0)
    again = load_dataset("mnist", folder, split_seed=0)
    other = load_dataset("mnist", folder, split_seed=1)
    assert len(first.val) == 10  # 120 * 5,000 / 60,000
    assert torch.equal(first.val.x, again.val.x) and torch.equal(first.train.y, again.train.y)
    assert not torch.equal(first.val.x, other.val.x)


def test_mnist_needs_data_dir():
    with pytest.raises(DataError, match="'mnist' needs data_dir"):
        load_dataset("mnist")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data folder .*absent does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "absent")


def test_missing_file_is_named(tmp_path):
    folder = write_mnist_folder(tmp_path / "m")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    message = r"has no t10k-labels-idx1-ubyte\.gz \(nor t10k-labels-idx1-ubyte\)"
    with pytest.raises(DataError, match=message):
        load_dataset("fashion-mnist", data_dir=folder)


def test_label_out_of_range(tmp_path):
    train_labels = (np.arange(24) % 10).astype(np.uint8)
    train_labels[7] = 10
    folder = write_mnist_folder(
        tmp_path / "m", labels={"train": train_labels, "test": np.zeros(6, np.uint8)}
    )
    message = r"train-labels-idx1-ubyte\.gz: label 10 at index 7 is outside \[0, 10\)$"
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", data_dir=folder)


def test_image_and_label_count_mismatch(tmp_path):
    folder = write_mnist_folder(
        tmp_path / "m", labels={"train": np.zeros(24, np.uint8), "test": np.zeros(5, np.uint8)}
    )
    message = r"t10k-labels-idx1-ubyte\.gz: 5 labels, but .*t10k-images-idx3-ubyte\.gz has 6 images$"
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", data_dir=folder)


def test_images_must_be_uint8_three_dimensional(tmp_path):
    folder = write_mnist_folder(tmp_path / "m")
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((24, 16), np.uint8))
    message = r"expected uint8 images \[N, H, W\], found uint8 \[24, 16\]$"
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", data_dir=folder)


def test_unknown_data_set_suggests_a_name():
    message = r"unknown data set 'fashion_mnst'; did you mean 'fashion-mnist'\?"
    with pytest.raises(DataError, match=message):
        load_dataset("fashion_mnst")
    assert set(DATASETS) == {"digits", "fashion-mnist", "mnist", "synthetic", "rare-features"}


def test_split_and_dataset_move_to_a_device():
    data = load_dataset("synthetic")
    moved = data.to("cpu")
    assert moved.train.x.device.type == "cpu" and moved.num_classes == data.num_classes
    assert torch.equal(moved.val.y, data.val.y) and len(moved.test) == len(data.test)


def test_split_rejects_mismatched_tensors():
    with pytest.raises(DataError, match="a split needs x"):
        Split(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split_seed=0)


def test_digits_shapes_scale_and_stratified_split(digits):
    sizes = (len(digits.train), len(digits.val), len(digits.test))
    assert sizes == (1077, 360, 360) and sum(sizes) == 1797
    assert digits.num_features == 64 and digits.num_classes == 10
    all_x = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    assert all_x.dtype == torch.float32 and all_x.min() == 0 and all_x.max() == 1
    # pixels were integers 0..16 before / 16
    assert torch.equal(all_x * 16, (all_x * 16).round())
    for split in (digits.train, digits.val, digits.test):
        fractions = torch.bincount(split.y, minlength=10).float() / len(split)
        assert fractions.min() > 0.08 and fractions.max() < 0.12  # stratified: ~10% each


def test_digits_splits_are_disjoint_and_seeded(digits):
    # load_digits has no duplicate images, so pixel rows identify samples
    rows = lambda split: {tuple(r) for r in split.x.mul(16).round().int().tolist()}  # noqa: E731
    train, val, test = rows(digits.train), rows(digits.val), rows(digits.test)
    assert len(train | val | test) == 1797
    assert not (train & val) and not (train & test) and not (val & test)
    again = load_dataset("digits", split_seed=0)
    other = load_dataset("digits", split_seed=1)
    assert torch.equal(again.val.x, digits.val.x) and torch.equal(again.test.y, digits.test.y)
    assert rows(other.test) != test


def test_synthetic_is_deterministic_small_and_learnable():
    data = load_dataset("synthetic")
    again = load_dataset("synthetic")
    assert (len(data.train), len(data.val), len(data.test)) == (1200, 400, 400)
    assert data.num_features == 20 and data.num_classes == 4
    assert torch.equal(data.train.x, again.train.x) and torch.equal(data.test.y, again.test.y)
    assert data.train.x.min() >= 0 and data.train.x.max() <= 1
    assert torch.bincount(data.train.y).tolist() == [300] * 4
    # learnable: nearest class mean (from train) beats chance (25%) by far on the test split
    means = torch.stack([data.train.x[data.train.y == c].mean(0) for c in range(4)])
    predicted = torch.cdist(data.test.x, means).argmin(1)
    assert (predicted == data.test.y).float().mean() > 0.8


def test_synthetic_split_seed_changes_split_not_data():
    first, second = load_dataset("synthetic", split_seed=0), load_dataset("synthetic", split_seed=1)
    everything = lambda d: torch.cat([d.train.x, d.val.x, d.test.x]).sum(0)  # noqa: E731
    torch.testing.assert_close(everything(first), everything(second))
    assert not torch.equal(first.test.x, second.test.x)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (the real files)

needs_fashion_mnist = pytest.mark.skipif(
    not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason=f"{DEFAULT_FASHION_MNIST_DIR} is absent"
)
# Sums of the raw uint8 pixels, read once from the official files.
TRAIN_IMAGE_0_PIXEL_SUM = 76247
TEST_IMAGE_0_PIXEL_SUM = 33456
TRAIN_PIXEL_SUM = 3431114169


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", split_seed=0)


@needs_fashion_mnist
def test_fashion_mnist_shapes_and_labels(fashion):
    assert (len(fashion.train), len(fashion.val), len(fashion.test)) == (55_000, 5_000, 10_000)
    assert fashion.num_features == 784 and fashion.num_classes == 10
    for split in (fashion.train, fashion.val, fashion.test):
        assert split.x.shape[1] == 784 and split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64
        assert set(split.y.unique().tolist()) == set(range(10))
    assert torch.bincount(fashion.test.y).tolist() == [1000] * 10
    assert torch.bincount(torch.cat([fashion.train.y, fashion.val.y])).tolist() == [6000] * 10
    assert fashion.test.x.min() == 0 and fashion.test.x.max() == 1


@needs_fashion_mnist
def test_fashion_mnist_pixel_checksums(fashion):
    as_pixels = lambda x: int(x.mul(255).round_().sum(dtype=torch.float64).item())  # noqa: E731
    assert as_pixels(fashion.test.x[0]) == TEST_IMAGE_0_PIXEL_SUM
    assert fashion.test.y[0].item() == 9  # ankle boot
    assert as_pixels(fashion.train.x) + as_pixels(fashion.val.x) == TRAIN_PIXEL_SUM
    train_images = read_idx(DEFAULT_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    assert int(train_images[0].sum(dtype=np.int64)) == TRAIN_IMAGE_0_PIXEL_SUM


@needs_fashion_mnist
@pytest.mark.parametrize(
    "stem, count, pixel_sum",
    [("train-images-idx3-ubyte", 60_000, TRAIN_IMAGE_0_PIXEL_SUM),
     ("t10k-images-idx3-ubyte", 10_000, TEST_IMAGE_0_PIXEL_SUM)],
)
def test_fashion_mnist_first_image_parsed_by_hand(stem, count, pixel_sum):
    """Independent of read_idx: gzip + struct on the first 16 + 784 bytes."""
    with gzip.open(DEFAULT_FASHION_MNIST_DIR / f"{stem}.gz", "rb") as file:
        head = file.read(16 + 784)
    assert struct.unpack(">IIII", head[:16]) == (0x00000803, count, 28, 28)
    assert sum(head[16:]) == pixel_sum


@needs_fashion_mnist
def test_fashion_mnist_accepts_uncompressed_files(tmp_path):
    for stem in IDX_FILES.values():
        if "labels" in stem or "t10k" in stem:
            compressed = (DEFAULT_FASHION_MNIST_DIR / f"{stem}.gz").read_bytes()
            (tmp_path / stem).write_bytes(gzip.decompress(compressed))
        else:  # the big training images stay gzipped: a mixed folder works too
            (tmp_path / f"{stem}.gz").symlink_to(DEFAULT_FASHION_MNIST_DIR / f"{stem}.gz")
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert len(data.test) == 10_000
    assert data.test.x[0].double().mul(255).round().sum().item() == TEST_IMAGE_0_PIXEL_SUM


# ---------------------------------------------------------------------------------------------
# Batches


def counting_split(n: int) -> Split:
    """x[i] = [i, -i], y[i] = i: a batch tells which samples it holds."""
    index = torch.arange(n)
    return Split(torch.stack([index, -index], 1).float(), index)


@pytest.mark.parametrize("n, batch_size", [(10, 3), (10, 5), (10, 1), (7, 100), (64, 16)])
def test_every_index_exactly_once_per_epoch(n, batch_size):
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        batches = list(iterate_batches(counting_split(n), batch_size, generator))
        seen = torch.cat([y for _, y in batches])
        assert sorted(seen.tolist()) == list(range(n))
        expected_sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        assert [len(y) for _, y in batches] == expected_sizes
        assert len(batches) == num_batches(n, batch_size)
        for x, y in batches:  # rows stay paired with their labels
            assert torch.equal(x[:, 0].long(), y) and torch.equal(x[:, 1].long(), -y)


def test_order_is_randperm_of_the_given_generator():
    split = counting_split(50)
    order = torch.cat([y for _, y in iterate_batches(split, 8, torch.Generator().manual_seed(7))])
    assert torch.equal(order, torch.randperm(50, generator=torch.Generator().manual_seed(7)))
    again = torch.cat([y for _, y in iterate_batches(split, 8, torch.Generator().manual_seed(7))])
    other = torch.cat([y for _, y in iterate_batches(split, 8, torch.Generator().manual_seed(8))])
    assert torch.equal(order, again) and not torch.equal(order, other)


def test_epochs_differ_and_resume_from_saved_generator_state():
    split = counting_split(30)
    generator = torch.Generator().manual_seed(1)
    epoch_1 = torch.cat([y for _, y in iterate_batches(split, 4, generator)])
    state = generator.get_state()
    epoch_2 = torch.cat([y for _, y in iterate_batches(split, 4, generator)])
    assert not torch.equal(epoch_1, epoch_2)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(torch.cat([y for _, y in iterate_batches(split, 4, resumed)]), epoch_2)


def test_permutation_is_drawn_at_call_time():
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    batches = iterate_batches(counting_split(20), 5, generator)
    assert not torch.equal(generator.get_state(), before)  # drawn already, before any batch
    del batches


def test_full_batch_and_no_shuffle():
    split = counting_split(13)
    batches = list(iterate_batches(split, "full", torch.Generator().manual_seed(0)))
    assert len(batches) == 1 and sorted(batches[0][1].tolist()) == list(range(13))
    in_order = list(iterate_batches(split, 5, shuffle=False))
    assert torch.cat([y for _, y in in_order]).tolist() == list(range(13))
    assert num_batches(13, "full") == 1 and num_batches(0, "full") == 0
    assert resolve_batch_size("full", 13) == 13


def test_evaluation_batches_in_order():
    split = counting_split(20_000)
    batches = list(evaluation_batches(split))
    assert [len(y) for _, y in batches] == [8192, 8192, 3616]
    assert torch.equal(torch.cat([y for _, y in batches]), split.y)
    assert len(list(evaluation_batches(split, "full"))) == 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, "64", "all", None, True])
def test_bad_batch_size(bad):
    with pytest.raises(ConfigError, match=r"batch_size must be an integer >= 1 or 'full', got"):
        iterate_batches(counting_split(4), bad)
    with pytest.raises(ConfigError):
        num_batches(4, bad)
