"""Fashion-MNIST from local IDX files (spec §8: DemoSupNet's data set). No downloads.

The IDX format: a big-endian header of a magic number (``0x00000803`` = 2051 for ``ubyte`` images with three
dimensions, ``0x00000801`` = 2049 for ``ubyte`` labels with one dimension) and one 32-bit size per dimension,
then the raw bytes. Files may be gzip-compressed (``.gz``) or plain.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import torch
from torch.utils.data import Dataset

from otov3.errors import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
MEAN = 0.2860
STD = 0.3530
CLASSES = (
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

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_PREFIX = {"train": "train", "test": "t10k"}
_REMEDY = "install the Debian package 'dataset-fashion-mnist' or pass --data DIR with the IDX files"


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file '{stem}[.gz]' not found in {root}; {_REMEDY}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise DataError(f"cannot read {path}: {err}; the file is damaged, {_REMEDY}") from err


def _read_idx(path: Path, *, magic: int, ndim: int) -> tuple[tuple[int, ...], bytearray]:
    """Return the dimensions and the payload of a ``ubyte`` IDX file, checking header and length."""
    data = _read_bytes(path)
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte IDX header; {_REMEDY}")
    (found,) = struct.unpack_from(">i", data, 0)
    if found != magic:
        raise DataError(
            f"{path} has IDX magic number {found} (0x{found & 0xFFFFFFFF:08x}), expected {magic} "
            f"(0x{magic:08x}); it is not a Fashion-MNIST {'image' if ndim == 3 else 'label'} file, {_REMEDY}"
        )
    dims = struct.unpack_from(f">{ndim}i", data, 4)
    size = math.prod(dims)
    if len(data) - header != size:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes but its header {tuple(dims)} announces {size}; "
            f"the file is truncated or damaged, {_REMEDY}"
        )
    return tuple(dims), bytearray(memoryview(data)[header:])  # writable, as torch.frombuffer wants


def load_fashion_mnist(root: str | Path | None = None, *, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST from IDX files.

    Args:
        root: directory with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; defaults to
            ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
        split: ``"train"`` (60,000 samples) or ``"test"`` (10,000).

    Returns:
        ``(images, labels)``: float32 images of shape ``(N, 1, 28, 28)`` scaled to [0, 1] and int64 labels in
        0..9.

    Raises:
        DataError: a file is missing, unreadable, truncated, has a wrong magic number, or the image and label
            counts disagree; the message names the file and how to get the data.
        ValueError: `split` is neither "train" nor "test".
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST directory {root} does not exist; {_REMEDY}")
    prefix = _PREFIX[split]
    images_path = _find(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte")
    (n, rows, cols), pixels = _read_idx(images_path, magic=_IMAGES_MAGIC, ndim=3)
    (n_labels,), raw_labels = _read_idx(labels_path, magic=_LABELS_MAGIC, ndim=1)
    if n != n_labels:
        raise DataError(
            f"{images_path} holds {n} images but {labels_path} holds {n_labels} labels; the files come from "
            f"different releases or are damaged, {_REMEDY}"
        )
    images = torch.frombuffer(pixels, dtype=torch.uint8).reshape(n, 1, rows, cols).to(torch.float32) / 255.0
    labels = torch.frombuffer(raw_labels, dtype=torch.uint8).to(torch.int64)
    return images, labels


class FashionMNIST(Dataset):
    """Fashion-MNIST as a map-style dataset of ``(image, label)`` pairs, held in memory.

    Args:
        root: directory with the IDX files (see `load_fashion_mnist`).
        split: ``"train"`` or ``"test"``.
        normalize: subtract `MEAN` (0.2860) and divide by `STD` (0.3530), the training-set statistics.
    """

    def __init__(self, root: str | Path | None = None, *, split: str = "train", normalize: bool = False) -> None:
        images, labels = load_fashion_mnist(root, split=split)
        self.images = (images - MEAN) / STD if normalize else images
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]
