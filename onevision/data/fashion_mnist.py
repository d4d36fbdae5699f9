"""Fashion-MNIST reader: the product photos of the demo shop.

Fashion-MNIST (Xiao et al., 2017) holds 70,000 grayscale 28x28 photos of
Zalando articles in 10 classes. On Debian/Ubuntu it installs offline with the
package ``dataset-fashion-mnist`` into ``/usr/share/datasets/fashion-mnist/``
as four gzip'd idx files. This module reads them with numpy + gzip only (no
torchvision, no downloads).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
N_CLASSES = len(CLASS_NAMES)

# (images, labels) per split; train first, then t10k: the 70,000 articles in a fixed order.
SPLIT_FILES: tuple[tuple[str, str], ...] = (
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)

# idx type code -> numpy dtype (big-endian where it matters)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class FashionMNISTMissing(FileNotFoundError):
    """The Fashion-MNIST idx files are not where the config says."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read one (optionally gzip'd) idx file into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, header promises {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def check_files(folder: str | Path) -> list[Path]:
    """Paths of the four idx files; a clear error naming the folder and package if any is missing."""
    folder = Path(folder)
    paths = [folder / name for pair in SPLIT_FILES for name in pair]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FashionMNISTMissing(
            f"Fashion-MNIST files missing in {folder}: {', '.join(missing)}. "
            "Install the Debian package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) "
            "or point data.fashion_mnist_dir at a folder holding the four idx .gz files."
        )
    return paths


@functools.lru_cache(maxsize=2)
def load_fashion_mnist(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 articles: ``(images uint8 (N, 28, 28), labels int64 (N,))``, train then test.

    Cached per folder; the arrays are read-only so callers cannot corrupt the cache.
    """
    check_files(folder)
    folder = Path(folder)
    images, labels = [], []
    for image_file, label_file in SPLIT_FILES:
        x = read_idx(folder / image_file)
        y = read_idx(folder / label_file)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{folder}: {image_file} {x.shape} and {label_file} {y.shape} do not pair up")
        images.append(x.astype(np.uint8, copy=False))
        labels.append(y.astype(np.int64))
    out_x, out_y = np.concatenate(images), np.concatenate(labels)
    if out_y.min() < 0 or out_y.max() >= N_CLASSES:
        raise ValueError(f"{folder}: labels outside 0..{N_CLASSES - 1}")
    out_x.flags.writeable = False
    out_y.flags.writeable = False
    return out_x, out_y
