"""Image data: the built-in digits, MNIST IDX and CIFAR-10 binary parsing, batching, and the errors for bad files."""

import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ccflow.images import ImageError, ImageSet, batches, load_images

MNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
SPLIT_FIELDS = ("train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y")


def idx_images(pixels: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x803, *pixels.shape) + pixels.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(d: Path, n_train=12, n_test=5, gz=False, seed=1):
    """Random 28x28 MNIST-shaped IDX files; returns {prefix: (pixels, labels)} as written."""
    rng = np.random.default_rng(seed)
    arrays = {p: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
              for p, n in (("train", n_train), ("t10k", n_test))}
    blobs = [idx_images(arrays["train"][0]), idx_labels(arrays["train"][1]),
             idx_images(arrays["t10k"][0]), idx_labels(arrays["t10k"][1])]
    d.mkdir(parents=True, exist_ok=True)
    for name, blob in zip(MNIST, blobs):
        (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return arrays


def write_cifar(d: Path, per_file=3, seed=2):
    """Random CIFAR-10 binary batches; returns {file name: its records as uint8 [n, 3073]}."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    records = {}
    for name in CIFAR:
        rec = rng.integers(0, 256, (per_file, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, per_file)
        (d / name).write_bytes(rec.tobytes())
        records[name] = rec
    return records


# --- digits ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_images("digits")


def test_digits_shapes_types_and_range(digits):
    assert digits.name == "digits" and digits.classes == 10 and digits.shape == (1, 8, 8)
    for x, y in ((digits.train_x, digits.train_y), (digits.valid_x, digits.valid_y), (digits.test_x, digits.test_y)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.ndim == 4 and x.shape[1:] == (1, 8, 8) and len(x) == len(y) > 0
        assert x.min() >= 0 and x.max() <= 1
        assert set(np.unique(x * 16)) <= set(range(17))  # 17 grey levels, scaled exactly
    assert digits.train_x.max() == 1.0


def test_digits_splits_partition_all_1797_images(digits):
    sizes = len(digits.train_x), len(digits.valid_x), len(digits.test_x)
    assert sum(sizes) == 1797
    assert sizes[2] == round(0.2 * 1797) and sizes[1] == round(0.1 * (1797 - sizes[2]))
    # No image in two splits: the digits set holds a few exact duplicates, so rather than test the splits
    # for disjoint rows, check that together they hold each distinct image exactly as often as the whole set.
    from sklearn.datasets import load_digits

    def counts(x):
        rows, n = np.unique(x.reshape(len(x), -1), axis=0, return_counts=True)
        return {r.tobytes(): int(c) for r, c in zip(rows, n)}

    union: dict = {}
    for x in (digits.train_x, digits.valid_x, digits.test_x):
        for k, c in counts(x).items():
            union[k] = union.get(k, 0) + c
    assert union == counts((load_digits().images / 16).astype(np.float32))
    # and the labels travel with their images
    assert np.bincount(np.concatenate([digits.train_y, digits.valid_y, digits.test_y])).tolist() == \
        np.bincount(load_digits().target).tolist()


def test_digits_every_class_in_train_and_split_is_deterministic(digits):
    assert set(np.unique(digits.train_y)) == set(range(10))
    again = load_images("digits")
    for f in SPLIT_FIELDS:
        assert np.array_equal(getattr(again, f), getattr(digits, f))
    assert not np.array_equal(load_images("digits", seed=1).test_y, digits.test_y)
    assert len(load_images("digits", valid_fraction=0.25).valid_x) == round(0.25 * 1438)


# --- MNIST -----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trips_pixels_and_labels(tmp_path, gz):
    arrays = write_mnist(tmp_path / "mnist", gz=gz)
    s = load_images(str(tmp_path / "mnist"), valid_fraction=0.25)
    (tx, ty), (sx, sy) = arrays["train"], arrays["t10k"]
    assert s.name == "mnist" and s.shape == (1, 28, 28) and s.classes == 10
    assert (len(s.train_x), len(s.valid_x), len(s.test_x)) == (9, 3, 5)
    assert s.train_x.dtype == np.float32 and s.train_y.dtype == np.int64
    assert s.train_x.min() >= 0 and s.train_x.max() <= 1
    # valid is the last quarter of the training file, in file order
    assert np.array_equal(s.train_x[:, 0] * 255, tx[:9]) and np.array_equal(s.valid_x[:, 0] * 255, tx[9:])
    assert np.array_equal(s.train_y, ty[:9]) and np.array_equal(s.valid_y, ty[9:])
    assert np.array_equal(s.test_x[:, 0] * 255, sx) and np.array_equal(s.test_y, sy)


def test_mnist_accepts_the_dotted_file_names(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").rename(tmp_path / "train-images.idx3-ubyte")
    assert len(load_images(str(tmp_path)).train_x) == 11  # 12 less round(0.1 * 12) for valid


def test_mnist_gunzips_by_content_not_by_name(tmp_path):
    arrays = write_mnist(tmp_path)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(gzip.compress(f.read_bytes()))  # compressed, but named as if not
    assert np.array_equal(load_images(str(tmp_path)).test_x[:, 0] * 255, arrays["t10k"][0])


# --- CIFAR-10 ----------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", [False, True])
def test_cifar_binary_round_trips_channels_and_rows(tmp_path, subfolder):
    root = tmp_path / "cifar"
    records = write_cifar(root / "cifar-10-batches-bin" if subfolder else root)
    s = load_images(str(root), valid_fraction=0.2)
    assert s.shape == (3, 32, 32) and s.classes == 10
    assert (len(s.train_x), len(s.valid_x), len(s.test_x)) == (12, 3, 3)
    train = np.concatenate([records[f] for f in CIFAR[:5]])
    first = train[0]
    assert s.train_y[0] == first[0]
    assert np.array_equal(s.train_x[0, 0] * 255, first[1:1025].reshape(32, 32))  # R plane, row-major
    assert np.array_equal(s.train_x[0, 2, 1] * 255, first[1 + 2048 + 32:1 + 2048 + 64])  # B plane, row 1
    assert np.array_equal(np.concatenate([s.train_x, s.valid_x]) * 255, train[:, 1:].reshape(-1, 3, 32, 32))
    assert np.array_equal(np.concatenate([s.train_y, s.valid_y]), train[:, 0])
    assert np.array_equal(s.valid_y, records["data_batch_5.bin"][:, 0])  # valid = the last training records
    assert np.array_equal(s.test_x * 255, records["test_batch.bin"][:, 1:].reshape(-1, 3, 32, 32))
    assert s.test_x.dtype == np.float32 and s.test_y.dtype == np.int64


# --- bad input -----------------------------------------------------------------------


def test_missing_directory_and_unknown_spec(tmp_path):
    with pytest.raises(ImageError, match=re.escape(f"{tmp_path / 'nope'}' not found: give 'digits'")):
        load_images(str(tmp_path / "nope"))
    with pytest.raises(ImageError, match="'mnist-please' not found.*MNIST IDX.*CIFAR-10 binary"):
        load_images("mnist-please")
    with pytest.raises(ImageError, match="valid_fraction 1.0 is outside"):
        load_images("digits", valid_fraction=1.0)


def test_directory_with_neither_format_lists_what_is_there(tmp_path):
    for n in ("a.txt", "b.png"):
        (tmp_path / n).write_text("x")
    with pytest.raises(ImageError, match=r"neither MNIST nor CIFAR-10 binary files \(it has a\.txt, b\.png\)"):
        load_images(str(tmp_path))


def test_incomplete_sets_name_the_missing_files(tmp_path):
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ImageError, match="without t10k-labels-idx1-ubyte"):
        load_images(str(tmp_path / "m"))
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_4.bin").unlink()
    with pytest.raises(ImageError, match=r"without data_batch_4\.bin"):
        load_images(str(tmp_path / "c"))


@pytest.mark.parametrize("name,corrupt,message", [
    ("train-images-idx3-ubyte", lambda b: b[:10], "10 bytes, an IDX images file needs a 16-byte header"),
    ("train-images-idx3-ubyte", lambda b: b[:-1], "9423 bytes, but its header .12x28x28 images. needs exactly 9424"),
    ("t10k-labels-idx1-ubyte", lambda b: b + b"\x00", "needs exactly 13"),
    ("train-images-idx3-ubyte", lambda b: struct.pack(">I", 0x801) + b[4:], "magic number 0x00000801"),
    ("train-labels-idx1-ubyte", lambda b: b"\x12\x34" + b[2:], "magic number 0x12340801"),
    ("train-images-idx3-ubyte", lambda b: struct.pack(">I", 0x0D03) + b[4:], "element type 0x0D"),
    ("train-labels-idx1-ubyte", lambda b: b[:11] + b"\x0b" + b[12:], "label 11 at index 3"),
    ("train-labels-idx1-ubyte", lambda b: struct.pack(">II", 0x801, 11) + b[8:-1], "11 labels for the 12 images"),
    ("t10k-images-idx3-ubyte", lambda b: b"\x1f\x8b" + b[2:], "broken gzip data"),
])
def test_bad_idx_files_are_one_line_errors_naming_the_file(tmp_path, name, corrupt, message):
    write_mnist(tmp_path)
    f = tmp_path / name
    f.write_bytes(corrupt(f.read_bytes()))
    with pytest.raises(ImageError, match=message) as e:
        load_images(str(tmp_path))
    assert str(e.value).startswith(f"{f}: ") and "\n" not in str(e.value)


def test_cifar_file_of_the_wrong_size(tmp_path):
    write_cifar(tmp_path)
    f = tmp_path / "data_batch_3.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ImageError, match=r"data_batch_3\.bin: 9214 bytes is not a positive multiple of the 3073"):
        load_images(str(tmp_path))
    f.write_bytes(b"")
    with pytest.raises(ImageError, match="0 bytes is not a positive multiple"):
        load_images(str(tmp_path))


def test_cifar_label_out_of_range(tmp_path):
    records = write_cifar(tmp_path)
    rec = records["test_batch.bin"].copy()
    rec[2, 0] = 10
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes())
    with pytest.raises(ImageError, match=r"test_batch\.bin: label 10 at record 2"):
        load_images(str(tmp_path))


class _Trap:
    """Unpickling this creates ``path``: proof that the loader unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_cifar_pickle_distribution_is_refused_unopened(tmp_path):
    marker = tmp_path / "unpickled"
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (d / name).write_bytes(pickle.dumps(_Trap(marker)))
    assert pickle.loads((d / "batches.meta").read_bytes()) and marker.exists()  # the trap works
    marker.unlink()
    for spec in (d, tmp_path):  # the folder itself, or the one it was extracted into
        with pytest.raises(ImageError, match=r"python \(pickle\) version.*'CIFAR-10 binary version \(suitable for C"):
            load_images(str(spec))
    assert not marker.exists()


def test_a_file_is_not_a_data_directory(tmp_path):
    f = tmp_path / "cifar-10-binary.tar.gz"
    f.write_bytes(b"x")
    with pytest.raises(ImageError, match="is a file; .*extract"):
        load_images(str(f))


# --- batches -------------------------------------------------------------------------


def test_batches_cover_every_sample_once_with_a_short_last_batch():
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 1, 1, 2)
    y = np.arange(10, dtype=np.int64)
    ordered = list(batches(x, y, 4))
    assert [len(by) for _, by in ordered] == [4, 4, 2]
    assert all(bx.dtype == torch.float32 and by.dtype == torch.int64 for bx, by in ordered)
    assert torch.cat([by for _, by in ordered]).tolist() == list(range(10))
    shuffled = list(batches(x, y, 4, rng=np.random.default_rng(0)))
    assert [len(by) for _, by in shuffled] == [4, 4, 2]
    labels = torch.cat([by for _, by in shuffled])
    assert sorted(labels.tolist()) == list(range(10)) and labels.tolist() != list(range(10))
    for bx, by in shuffled:  # images stay with their labels
        assert torch.equal(bx[:, 0, 0, 0], by.float() * 2)
    again = torch.cat([by for _, by in batches(x, y, 4, rng=np.random.default_rng(0))])
    assert torch.equal(again, labels)


def test_batches_are_copies_and_need_a_positive_size():
    x, y = np.zeros((3, 1, 2, 2), np.float32), np.zeros(3, np.int64)
    for bx, _ in batches(x, y, 2):
        bx += 1
    assert not x.any()
    with pytest.raises(ImageError, match="batch size 0"):
        next(batches(x, y, 0))
