"""Tiny data sets in the real on-disk formats, for reading through the real loaders without a network.

Every image carries markers in its first channel's top row: pixel 0 is its class, pixels 1 and 2 its
sample id (low and high byte, unique within its file set and split), so that tests can check labels,
relabelling and the validation split image by image. ``marker_position`` says where the markers end
up in the loaded 32×32 or 84×84 tensors. The other pixels are random. Samples are shuffled, as in
the real files, so that no loader can rely on class order.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Tuple

import numpy as np

GREY_SIZE = 28  # MNIST, Fashion-MNIST and notMNIST images; the loader pads them to 32


def _labelled(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _images(labels: np.ndarray, shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """uint8 images of ``shape`` (channel axis last or absent) with class and id markers at [0, 0..2]."""
    images = rng.integers(0, 256, size=(len(labels),) + shape, dtype=np.uint8)
    ids = np.arange(len(labels))
    top_row = images[:, 0, :3, 0] if len(shape) == 3 else images[:, 0, :3]
    top_row[:, 0], top_row[:, 1], top_row[:, 2] = labels, ids % 256, ids // 256
    return images


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N×3072 rows, channel-major as in the CIFAR pickles."""
    return _images(labels, (32, 32, 3), rng).transpose(0, 3, 1, 2).reshape(len(labels), -1)


def write_fake_cifar100(root: Path, per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as in the official archive."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    for name, count in (("train", per_class), ("test", test_per_class)):
        labels = _labelled(100, count, rng)
        _pickle(folder / name, {"data": _cifar_rows(labels, rng), "fine_labels": labels.tolist(),
                                "coarse_labels": (labels // 5).tolist(), "batch_label": f"{name} batch"})
    _pickle(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)],
                              "coarse_label_names": [f"super{i}" for i in range(20)]})
    return Path(root)


def write_fake_cifar10(root: Path, per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; ids run across batches."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    labels = _labelled(10, per_class, rng)
    rows = _cifar_rows(labels, rng)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        _pickle(folder / f"data_batch_{i}", {"data": rows[part], "labels": labels[part].tolist()})
    test_labels = _labelled(10, test_per_class, rng)
    _pickle(folder / "test_batch", {"data": _cifar_rows(test_labels, rng), "labels": test_labels.tolist()})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return Path(root)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file: magic (0, 0, type 0x08 = uint8, number of dimensions), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, folder: str = "MNIST", per_class: int = 2, test_per_class: int = 1,
                     seed: int = 0) -> Path:
    """``root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, uncompressed, as torchvision
    leaves them (``folder`` = MNIST or FashionMNIST)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    for prefix, count in (("train", per_class), ("t10k", test_per_class)):
        labels = _labelled(10, count, rng)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", _images(labels, (GREY_SIZE, GREY_SIZE), rng))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)


def write_fake_svhn(root: Path, per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """``root/{train,test}_32x32.mat``: 'X' 32×32×3×N, 'y' N×1 with 10 standing for the digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    for name, count in (("train", per_class), ("test", test_per_class)):
        digits = _labelled(10, count, rng)
        images = _images(digits, (32, 32, 3), rng).transpose(1, 2, 3, 0)
        stored = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        Path(root).mkdir(parents=True, exist_ok=True)
        savemat(str(Path(root) / f"{name}_32x32.mat"), {"X": images, "y": stored})
    return Path(root)


def write_fake_notmnist(root: Path, per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """``root/notMNIST/{train,test}/<A..J>/*.png``, 28×28 greyscale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        labels = _labelled(10, count, rng)
        for sample, (label, image) in enumerate(zip(labels, _images(labels, (GREY_SIZE, GREY_SIZE), rng))):
            folder = Path(root) / "notMNIST" / split / "ABCDEFGHIJ"[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{sample:05d}.png")
    return Path(root)


def write_fake_five_datasets(root: Path, per_class: int = 2, test_per_class: int = 1) -> Path:
    write_fake_cifar10(root, per_class, test_per_class, seed=1)
    write_fake_mnist(root, "MNIST", per_class, test_per_class, seed=2)
    write_fake_svhn(root, per_class, test_per_class, seed=3)
    write_fake_mnist(root, "FashionMNIST", per_class, test_per_class, seed=4)
    write_fake_notmnist(root, per_class, test_per_class, seed=5)
    return Path(root)


def write_fake_miniimagenet(root: Path, per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """``root/miniimagenet/{train,test}.pkl``: {'images': uint8 N×84×84×3, 'labels': 100 classes}."""
    rng = np.random.default_rng(seed)
    for name, count in (("train", per_class), ("test", test_per_class)):
        labels = _labelled(100, count, rng)
        _pickle(Path(root) / "miniimagenet" / f"{name}.pkl", {"images": _images(labels, (84, 84, 3), rng),
                                                             "labels": labels.tolist()})
    return Path(root)


def marker_position(grey: bool) -> Tuple[int, int]:
    """(row, column) of the class marker in a loaded image: grey images gain 2 pixels of padding."""
    offset = (32 - GREY_SIZE) // 2 if grey else 0
    return offset, offset


def read_markers(x, grey: bool = False):
    """(class, sample id) tensors from loaded uint8 N×3×H×W images."""
    row, col = marker_position(grey)
    top = x[:, 0, row, col:col + 3].long()
    return top[:, 0], top[:, 1] + 256 * top[:, 2]
