"""Image data sets for the CNN model family, as float arrays split three ways.

Three sources, chosen by :func:`load_images`'s ``spec``:

* ``digits`` -- scikit-learn's copy of the UCI handwritten digits (1,797 8x8
  images, 17 grey levels, 10 classes). It ships inside the scikit-learn wheel,
  so the default needs no download; it is split 20% test, then
  ``valid_fraction`` of the rest valid, by a permutation fixed by ``seed``.
* **MNIST** -- a directory with the four IDX files as published
  (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``, each maybe
  ``.gz``). An IDX file is a big-endian header (magic ``0x0000TTNN``: element
  type TT, NN dimensions, then one uint32 per dimension) followed by the raw
  elements, so its exact length is known from the header and checked.
* **CIFAR-10** -- a directory with the *binary* distribution
  (``data_batch_1.bin`` ... ``data_batch_5.bin``, ``test_batch.bin``): fixed
  3,073-byte records, one label byte then the 32x32 R, G and B planes.

Both file formats are parsed here with ``np.frombuffer``: fixed-size records
and headers whose sizes can be checked exactly, so a truncated or wrong file
is an :class:`ImageError` that names it, not a garbled tensor. The CIFAR-10
*python* distribution is refused: it is pickles, and unpickling a file runs
whatever code it names, so ccflow never unpickles user data.

MNIST and CIFAR-10 validate on the last ``valid_fraction`` of their training
files (deterministic, no shuffle); their test split is the published one.
Pixels are float32 in [0, 1], shaped [N, C, H, W]; labels are int64.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CLASSES = 10  # digits, MNIST and CIFAR-10 all have ten

MNIST_FILES = {  # role -> file name as published
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # unsigned bytes, 3 and 1 dimensions

CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then R, G, B planes of 32x32

ACCEPTED = ("give 'digits', a directory with the MNIST IDX files (train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally .gz), "
            "or a directory with the CIFAR-10 binary batches (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)")
CIFAR_BINARY_HINT = ("download the 'CIFAR-10 binary version (suitable for C programs)' (cifar-10-binary.tar.gz), "
                     "extract it and pass its cifar-10-batches-bin folder")


class ImageError(ValueError):
    """Missing or malformed image data; the one-line message names the file and the fix."""


@dataclass(frozen=True)
class ImageSet:
    name: str
    train_x: np.ndarray  # float32 [N, C, H, W] in [0, 1]
    train_y: np.ndarray  # int64 [N]
    valid_x: np.ndarray
    valid_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.train_x.shape[1:])


def load_images(spec: str = "digits", valid_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    """Load ``digits``, or an MNIST or CIFAR-10 (binary) directory, told apart by the files in it.

    ``seed`` only shuffles ``digits``, which has no published split.
    """
    if not 0 <= valid_fraction < 1:
        raise ImageError(f"valid_fraction {valid_fraction} is outside [0, 1); give the share of the "
                         "training images to hold out, e.g. 0.1")
    if spec == "digits":
        return _digits(valid_fraction, seed)
    path = Path(spec).expanduser()
    if path.is_file():
        raise ImageError(f"{path} is a file; {ACCEPTED} (extract .tar.gz archives first)")
    if not path.is_dir():
        raise ImageError(f"image data {spec!r} not found: {ACCEPTED}")
    name = path.resolve().name
    for d in (path, path / "cifar-10-batches-py"):
        if (d / "batches.meta").is_file() or (d / "data_batch_1").is_file():
            raise ImageError(f"{d} holds the CIFAR-10 python (pickle) version, which ccflow never unpickles; "
                             + CIFAR_BINARY_HINT)
    mnist = {role: _find_idx(path, f) for role, f in MNIST_FILES.items()}
    if any(mnist.values()):
        missing = [MNIST_FILES[r] for r, f in mnist.items() if f is None]
        if missing:
            raise ImageError(f"{path}: MNIST directory without {', '.join(missing)} (optionally .gz); "
                             "put all four IDX files in it")
        return _mnist(name, mnist, valid_fraction)
    cifar = path / "cifar-10-batches-bin" if (path / "cifar-10-batches-bin").is_dir() else path
    if any((cifar / f).is_file() for f in (*CIFAR_TRAIN, CIFAR_TEST)):
        missing = [f for f in (*CIFAR_TRAIN, CIFAR_TEST) if not (cifar / f).is_file()]
        if missing:
            raise ImageError(f"{cifar}: CIFAR-10 directory without {', '.join(missing)}; extract the whole "
                             "binary archive into it")
        return _cifar(name, cifar, valid_fraction)
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise ImageError(f"{path}: cannot list it ({e.strerror}); give a readable directory") from None
    there = (", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")) if names else "nothing"
    raise ImageError(f"{path} holds neither MNIST nor CIFAR-10 binary files (it has {there}); {ACCEPTED}")


def batches(x: np.ndarray, y: np.ndarray, batch_size: int,
            rng: np.random.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float32 images, int64 labels) tensors covering every sample once, the last batch maybe short.

    Shuffled by ``rng`` when given, in order otherwise. Each batch is a copy, so
    a training step may change it in place without touching the data set.
    """
    if len(x) != len(y):
        raise ImageError(f"{len(x)} images but {len(y)} labels; give one label per image")
    if batch_size < 1:
        raise ImageError(f"batch size {batch_size} is not positive; give at least 1")
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield (torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)),
               torch.from_numpy(np.ascontiguousarray(y[idx], dtype=np.int64)))


# --- digits --------------------------------------------------------------


def _digits(valid_fraction: float, seed: int) -> ImageSet:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImageError("the 'digits' images come with scikit-learn, which is not installed; "
                         "`pip install scikit-learn` (or run scripts/setup.sh)") from None
    d = load_digits()
    x = (d.images / 16).astype(np.float32)[:, None]  # 0..16 grey levels, exact in float32
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(0.2 * len(x)))
    n_valid = int(round(valid_fraction * (len(x) - n_test)))
    test, valid, train = np.split(perm, [n_test, n_test + n_valid])
    return ImageSet("digits", x[train], y[train], x[valid], y[valid], x[test], y[test], CLASSES)


# --- MNIST (IDX) -----------------------------------------------------------


def _find_idx(root: Path, name: str) -> Path | None:
    """The file for ``name`` in ``root``: as published, with ``.gz``, or with the 'train-images.idx3-ubyte' dot."""
    dotted = ".idx".join(name.rsplit("-idx", 1))
    for cand in (name, name + ".gz", dotted, dotted + ".gz"):
        if (root / cand).is_file():
            return root / cand
    return None


def _read(path: Path) -> bytes:
    """File bytes, gunzipped when they start with the gzip magic (browsers often unpack but keep .gz)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read it ({e.strerror}); give a readable file") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ImageError(f"{path}: broken gzip data ({e}); download the file again") from None
    return data


def _idx(path: Path, magic: int, what: str) -> np.ndarray:
    """The uint8 array in one IDX file, after checking its magic, element type and exact length."""
    data = _read(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    fix = "pass the MNIST files as downloaded (optionally .gz)"
    if len(data) < header:
        raise ImageError(f"{path}: {len(data)} bytes, an IDX {what} file needs a {header}-byte header; {fix}")
    (got,) = struct.unpack(">I", data[:4])
    if got >> 16 == 0 and got & 0xFF == ndim and got != magic:
        raise ImageError(f"{path}: IDX element type 0x{(got >> 8) & 0xFF:02X}, but MNIST {what} are unsigned "
                         f"bytes (0x08); {fix}")
    if got != magic:
        raise ImageError(f"{path}: magic number 0x{got:08X}, but an IDX {what} file starts with 0x{magic:08X}; {fix}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    need = header + math.prod(dims)
    if len(data) != need:
        shape = "x".join(map(str, dims))
        raise ImageError(f"{path}: {len(data)} bytes, but its header ({shape} {what}) needs exactly {need}; "
                         f"the file is truncated or padded, {fix}")
    if dims[0] == 0:
        raise ImageError(f"{path}: holds no {what}; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _labels(arr: np.ndarray, path: Path, kind: str) -> np.ndarray:
    bad = np.flatnonzero(arr >= CLASSES)
    if bad.size:
        raise ImageError(f"{path}: label {arr[bad[0]]} at {kind} {bad[0]}, but labels are 0..{CLASSES - 1}; "
                         "the file is corrupt, download it again")
    return arr.astype(np.int64)


def _pixels(arr: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]; dividing (not multiplying by 1/255) keeps x*255 exact."""
    return np.divide(arr, np.float32(255), dtype=np.float32)


def _split_valid(where: Path, x: np.ndarray, y: np.ndarray, valid_fraction: float):
    n_valid = int(round(valid_fraction * len(x)))
    if n_valid >= len(x):
        raise ImageError(f"{where}: valid_fraction {valid_fraction} of {len(x)} training images leaves none to "
                         "train on; give a smaller valid_fraction")
    cut = len(x) - n_valid
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _mnist(name: str, files: dict[str, Path], valid_fraction: float) -> ImageSet:
    out = {}
    for split in ("train", "test"):
        xf, yf = files[f"{split}_x"], files[f"{split}_y"]
        x, y = _idx(xf, IDX_IMAGES, "images"), _idx(yf, IDX_LABELS, "labels")
        if len(x) != len(y):
            raise ImageError(f"{yf}: {len(y)} labels for the {len(x)} images in {xf.name}; "
                             "use the label file that goes with the image file")
        out[split] = _pixels(x)[:, None], _labels(y, yf, "index")
    (tx, ty), (sx, sy) = out["train"], out["test"]
    if tx.shape[1:] != sx.shape[1:]:
        raise ImageError(f"{files['test_x']}: {sx.shape[2]}x{sx.shape[3]} images, but the training images are "
                         f"{tx.shape[2]}x{tx.shape[3]}; use test and training files from the same data set")
    train_x, train_y, valid_x, valid_y = _split_valid(files["train_x"], tx, ty, valid_fraction)
    return ImageSet(name, train_x, train_y, valid_x, valid_y, sx, sy, CLASSES)


# --- CIFAR-10 (binary) -------------------------------------------------------


def _cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = _read(path)
    if not data or len(data) % CIFAR_RECORD:
        raise ImageError(f"{path}: {len(data)} bytes is not a positive multiple of the {CIFAR_RECORD}-byte "
                         f"CIFAR-10 record (1 label byte, 3x32x32 pixels); {CIFAR_BINARY_HINT}")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return rec[:, 1:].reshape(-1, 3, 32, 32), _labels(rec[:, 0], path, "record")


def _cifar(name: str, root: Path, valid_fraction: float) -> ImageSet:
    parts = [_cifar_file(root / f) for f in CIFAR_TRAIN]
    tx = _pixels(np.concatenate([p[0] for p in parts]))
    ty = np.concatenate([p[1] for p in parts])
    sx, sy = _cifar_file(root / CIFAR_TEST)
    train_x, train_y, valid_x, valid_y = _split_valid(root / CIFAR_TRAIN[-1], tx, ty, valid_fraction)
    return ImageSet(name, train_x, train_y, valid_x, valid_y, _pixels(sx), sy, CLASSES)
