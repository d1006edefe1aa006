"""Fashion-MNIST IDX loading: the real files, and malformed ones written to a temporary directory."""

from __future__ import annotations

import gzip
import struct
from functools import cache
from pathlib import Path

import pytest
import torch

from otov3.data import FashionMNIST, load_fashion_mnist
from otov3.data.fashion_mnist import DEFAULT_ROOT, MEAN, STD
from otov3.errors import DataError

needs_real_data = pytest.mark.skipif(
    not DEFAULT_ROOT.is_dir(),
    reason=f"{DEFAULT_ROOT} is absent (Debian package 'dataset-fashion-mnist' not installed)",
)


@cache
def _real(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return load_fashion_mnist(split=split)


# ---------------------------------------------------------------------------------------------- real files


@needs_real_data
@pytest.mark.parametrize(("split", "n"), [("train", 60_000), ("test", 10_000)])
def test_real_split_has_the_standard_size_shape_and_balanced_labels(split: str, n: int) -> None:
    images, labels = _real(split)
    assert images.shape == (n, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.shape == (n,)
    assert labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [n // 10] * 10  # ten classes 0..9, equally many
    assert images.min().item() == 0.0
    assert images.max().item() == 1.0


@needs_real_data
def test_real_training_images_have_the_documented_mean_and_std() -> None:
    images, _ = _real("train")
    assert images.mean().item() == pytest.approx(MEAN, abs=1e-4)
    assert images.std().item() == pytest.approx(STD, abs=1e-4)


@needs_real_data
def test_dataset_wrapper_indexes_pairs_and_normalizes() -> None:
    plain = FashionMNIST(split="test")
    normalized = FashionMNIST(split="test", normalize=True)
    assert len(plain) == 10_000
    image, label = plain[7]
    assert image.shape == (1, 28, 28)
    assert 0 <= label.item() <= 9
    torch.testing.assert_close(normalized[7][0], (image - MEAN) / STD)
    assert normalized[7][1] == label


# ---------------------------------------------------------------------------------------------- synthetic files


def _write(path: Path, payload: bytes, *, gz: bool) -> None:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _idx(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(f">i{len(dims)}i", magic, *dims) + data


def _make_split(
    root: Path,
    *,
    n_images: int = 3,
    n_labels: int = 3,
    image_magic: int = 2051,
    label_magic: int = 2049,
    cut_images: int = 0,
    gz: bool = True,
) -> tuple[bytes, bytes]:
    pixels = bytes((7 * i) % 256 for i in range(n_images * 28 * 28))
    labels = bytes(i % 10 for i in range(n_labels))
    image_file = _idx(image_magic, (n_images, 28, 28), pixels)
    _write(root / "train-images-idx3-ubyte", image_file[: len(image_file) - cut_images], gz=gz)
    _write(root / "train-labels-idx1-ubyte", _idx(label_magic, (n_labels,), labels), gz=gz)
    return pixels, labels


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_gzip_and_plain_files_load_to_the_written_values(tmp_path: Path, gz: bool) -> None:
    pixels, labels = _make_split(tmp_path, gz=gz)
    images, targets = load_fashion_mnist(tmp_path, split="train")
    expected = torch.tensor(list(pixels), dtype=torch.float32).reshape(3, 1, 28, 28) / 255
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert targets.tolist() == list(labels)


def test_wrong_magic_number_names_the_file(tmp_path: Path) -> None:
    _make_split(tmp_path, image_magic=2049)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz has IDX magic number 2049 .*expected 2051"):
        load_fashion_mnist(tmp_path)


def test_labels_file_with_an_image_magic_number_is_rejected(tmp_path: Path) -> None:
    _make_split(tmp_path, label_magic=2051)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz .*not a Fashion-MNIST label file"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_truncated_payload_is_reported(tmp_path: Path, gz: bool) -> None:
    _make_split(tmp_path, cut_images=100, gz=gz)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.* holds 2252 data bytes .* announces 2352"):
        load_fashion_mnist(tmp_path)


def test_file_shorter_than_its_header_is_reported(tmp_path: Path) -> None:
    _make_split(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is truncated: 3 bytes"):
        load_fashion_mnist(tmp_path)


def test_cut_gzip_stream_is_reported_as_damaged(tmp_path: Path) -> None:
    _make_split(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cannot read .*train-images-idx3-ubyte\.gz"):
        load_fashion_mnist(tmp_path)


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    _make_split(tmp_path, n_images=3, n_labels=2)
    with pytest.raises(DataError, match=r"holds 3 images but .*train-labels-idx1-ubyte\.gz holds 2 labels"):
        load_fashion_mnist(tmp_path)


def test_missing_file_says_how_to_get_the_data(tmp_path: Path) -> None:
    _make_split(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"'train-labels-idx1-ubyte\[\.gz\]' not found .*dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_missing_test_split_is_reported_even_when_train_exists(tmp_path: Path) -> None:
    _make_split(tmp_path)
    with pytest.raises(DataError, match=r"'t10k-images-idx3-ubyte\[\.gz\]' not found .*--data DIR"):
        load_fashion_mnist(tmp_path, split="test")


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"directory .*nowhere does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_unknown_split_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_fashion_mnist(tmp_path, split="val")
