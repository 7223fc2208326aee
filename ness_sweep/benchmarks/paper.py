"""The NESS paper's file-based task streams: Split CIFAR-100, 5-Datasets and Split MiniImageNet.

Files are read from ``data_root`` in the layout torchvision's own downloaders leave behind
(``torchvision.datasets.CIFAR100(data_root, download=True)`` and so on), plus a notMNIST image folder
and the MiniImageNet pickles of the GPM family of papers:

    cifar-100-python/{train,test}                      split_cifar100
    cifar-10-batches-py/{data_batch_1..5,test_batch}   five_datasets
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    train_32x32.mat, test_32x32.mat                    (SVHN)
    FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    notMNIST/{train,test}/{A..J}/*.png
    miniimagenet/{train,test}.pkl                      split_miniimagenet

Missing files are fetched first where torchvision can (``downloads``). The files are then read
directly rather than through torchvision's dataset classes, because they accept only files whose
checksum matches the official archives. A missing or unreadable file is a ``UserError`` naming it.
Pickles can run code when loaded: point ``data_root`` at files you trust.

Images are kept as uint8 N×C×H×W; each task carries the per-channel mean and std of its data set's
training images, so ``Task.inputs`` normalises batch by batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import UserError
from ..data import Task, TaskStream, split_train_valid
from .downloads import CIFAR10_FILES, CIFAR100_FILES, MINIIMAGENET_FILES, NOTMNIST_LETTERS, SVHN_FILES, require_files
from .files import expect, load_pickle, read_file

Split = Tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_test, y_test


def channel_stats(images: Tensor, chunk_values: int = 1 << 22) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 N×C×H×W images scaled to [0, 1], in float64 chunks of about
    ``chunk_values`` pixels (a float64 copy of all of MiniImageNet would take 8 GB).

    On the real training sets these are the usual normalisation constants (CIFAR-100: 0.507/0.487/0.441
    and 0.267/0.256/0.276); grey data sets are measured after padding, as the GPM code measured them.
    """
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    chunk = max(1, chunk_values // images[0].numel())
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt()
    return mean.float(), std.float()


def class_split_tasks(prefix: str, data: Split, class_groups: List[List[int]], seed: int,
                      valid_fraction: float) -> List[Task]:
    """One task per class group, labels renumbered 0..k-1 in group order, a seeded validation split each."""
    x_train, y_train, x_test, y_test = data
    mean, std = channel_stats(x_train)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    tasks = []
    for t, group in enumerate(class_groups):
        relabel = torch.full((num_classes,), -1, dtype=torch.long)
        relabel[torch.tensor(group)] = torch.arange(len(group))
        keep_train, keep_test = relabel[y_train] >= 0, relabel[y_test] >= 0
        xtr, ytr, xva, yva = split_train_valid(x_train[keep_train], relabel[y_train[keep_train]], valid_fraction,
                                               seed + t)
        name = f"{prefix} classes {', '.join(map(str, group))}"
        tasks.append(Task(name, len(group), xtr, ytr, xva, yva, x_test[keep_test], relabel[y_test[keep_test]],
                          mean, std))
    return tasks


def check_classes(source: object, labels: Tensor, num_classes: int) -> None:
    """Every class 0..num_classes-1 present and nothing else, so that each task gets all its classes."""
    found = torch.unique(labels).tolist()
    if found != list(range(num_classes)):
        raise UserError(f"{source}: expected labels 0..{num_classes - 1}, each at least once; "
                          f"found {len(found)} distinct labels from {min(found)} to {max(found)}")


# ---- CIFAR ---------------------------------------------------------------------------------------

def read_cifar_batch(path: Path, label_key: str) -> Tuple[Tensor, Tensor]:
    """A CIFAR python pickle: 'data' N×3072 uint8 (channel-major rows) and a label list."""

    def parse(p: Path) -> Tuple[Tensor, Tensor]:
        batch = load_pickle(p)
        images = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        expect(images.ndim == 2 and images.shape[1] == 3 * 32 * 32, f"'data' has shape {images.shape}, not N x 3072")
        expect(len(labels) == len(images), f"{len(labels)} labels for {len(images)} images")
        return torch.from_numpy(images.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)

    return read_file(path, "CIFAR python pickle", parse)


def read_cifar(data_root: Path, train_files: Sequence[str], test_file: str, label_key: str) -> Split:
    parts = [read_cifar_batch(data_root / f, label_key) for f in train_files]
    x_test, y_test = read_cifar_batch(data_root / test_file, label_key)
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]), x_test, y_test


def split_cifar100(data_root: Path, seed: int, valid_fraction: float, download: bool = False) -> TaskStream:
    """10 tasks of 10 classes: task t holds CIFAR-100 classes 10t..10t+9 (fine labels), renumbered 0..9."""
    require_files(data_root, "split_cifar100", ["cifar100"], download)
    data = read_cifar(data_root, CIFAR100_FILES[:1], CIFAR100_FILES[1], "fine_labels")
    check_classes(data_root / CIFAR100_FILES[0], data[1], 100)
    check_classes(data_root / CIFAR100_FILES[1], data[3], 100)
    groups = [list(range(10 * t, 10 * t + 10)) for t in range(10)]
    return TaskStream("split_cifar100", class_split_tasks("cifar100", data, groups, seed, valid_fraction),
                      (3, 32, 32), "alexnet")


# ---- 5-Datasets ----------------------------------------------------------------------------------

def grey_to_rgb32(images: Tensor, path: Path) -> Tensor:
    """N×H×W grey images zero-padded (centred) to 32×32 and repeated over 3 channels."""
    height, width = images.shape[1:]
    if height > 32 or width > 32:
        raise UserError(f"{path}: images are {height}x{width}; five_datasets needs grey images of at most 32x32")
    top, left = (32 - height) // 2, (32 - width) // 2
    padded = F.pad(images, (left, 32 - width - left, top, 32 - height - top))
    return padded.unsqueeze(1).repeat(1, 3, 1, 1)


def read_idx_pair(folder: Path, prefix: str) -> Tuple[Tensor, Tensor]:
    """An MNIST-format idx image file and its label file."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images = read_file(folder / f"{prefix}-images-idx3-ubyte", "idx image", lambda p: read_image_file(str(p)))
    labels = read_file(folder / f"{prefix}-labels-idx1-ubyte", "idx label", lambda p: read_label_file(str(p)))
    if len(images) != len(labels):
        raise UserError(f"{folder}/{prefix}-*-ubyte: {len(images)} images but {len(labels)} labels")
    return grey_to_rgb32(images, folder / f"{prefix}-images-idx3-ubyte"), labels


def read_mnist_like(data_root: Path, folder: str) -> Split:
    raw = data_root / folder / "raw"
    x_train, y_train = read_idx_pair(raw, "train")
    x_test, y_test = read_idx_pair(raw, "t10k")
    return x_train, y_train, x_test, y_test


def read_svhn_mat(path: Path) -> Tuple[Tensor, Tensor]:
    """An SVHN .mat file: 'X' 32×32×3×N uint8 and 'y' N×1 with label 10 for the digit 0."""
    from scipy.io import loadmat

    def parse(p: Path) -> Tuple[Tensor, Tensor]:
        mat = loadmat(str(p))
        images, labels = np.asarray(mat["X"], dtype=np.uint8), np.asarray(mat["y"], dtype=np.int64).reshape(-1)
        expect(images.ndim == 4 and images.shape[:3] == (32, 32, 3),
               f"'X' has shape {images.shape}, not 32 x 32 x 3 x N")
        expect(images.shape[3] == len(labels), f"{len(labels)} labels for {images.shape[3]} images")
        expect(bool(((labels >= 1) & (labels <= 10)).all()), "labels outside 1..10")
        return torch.from_numpy(images.transpose(3, 2, 0, 1).copy()), torch.from_numpy(labels % 10)

    return read_file(path, "SVHN .mat", parse)


def read_notmnist_split(folder: Path) -> Tuple[Tensor, Tensor]:
    """``folder/<A..J>/*.png``: label = the letter's position in A..J."""
    from PIL import Image

    def parse(p: Path) -> np.ndarray:
        with Image.open(p) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8)

    images, labels = [], []
    for label, letter in enumerate(NOTMNIST_LETTERS):
        paths = sorted((folder / letter).glob("*.png"))
        if not paths:
            raise UserError(f"{folder / letter}: no .png images (expected notMNIST/{{train,test}}/<A..J>/*.png)")
        images += [read_file(p, "PNG image", parse) for p in paths]
        labels += [label] * len(paths)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise UserError(f"{folder}: images of different sizes {sorted(shapes)}; all must have the same size")
    return grey_to_rgb32(torch.from_numpy(np.stack(images)), folder), torch.tensor(labels)


def read_notmnist(data_root: Path) -> Split:
    x_train, y_train = read_notmnist_split(data_root / "notMNIST" / "train")
    x_test, y_test = read_notmnist_split(data_root / "notMNIST" / "test")
    return x_train, y_train, x_test, y_test


def read_cifar10(data_root: Path) -> Split:
    return read_cifar(data_root, CIFAR10_FILES[:-1], CIFAR10_FILES[-1], "labels")


def read_svhn(data_root: Path) -> Split:
    x_train, y_train = read_svhn_mat(data_root / SVHN_FILES[0])
    x_test, y_test = read_svhn_mat(data_root / SVHN_FILES[1])
    return x_train, y_train, x_test, y_test


FIVE_DATASETS = (  # the paper's task order
    ("cifar10", read_cifar10),
    ("mnist", lambda root: read_mnist_like(root, "MNIST")),
    ("svhn", read_svhn),
    ("fashion_mnist", lambda root: read_mnist_like(root, "FashionMNIST")),
    ("notmnist", read_notmnist),
)


def five_datasets(data_root: Path, seed: int, valid_fraction: float, download: bool = False) -> TaskStream:
    """CIFAR-10, MNIST, SVHN, Fashion-MNIST, notMNIST: 5 tasks of 10 classes, all 32×32×3.

    Each data set is normalised by its own statistics, and every task's validation split uses the
    run's seed (the authors' code leaves this data set's split unseeded).
    """
    require_files(data_root, "five_datasets", [name for name, _ in FIVE_DATASETS], download)
    tasks = []
    for t, (name, read) in enumerate(FIVE_DATASETS):
        x_train, y_train, x_test, y_test = read(data_root)
        check_classes(f"{name} training set", y_train, 10)
        check_classes(f"{name} test set", y_test, 10)
        mean, std = channel_stats(x_train)
        xtr, ytr, xva, yva = split_train_valid(x_train, y_train, valid_fraction, seed + t)
        tasks.append(Task(name, 10, xtr, ytr, xva, yva, x_test, y_test, mean, std))
    return TaskStream("five_datasets", tasks, (3, 32, 32), "resnet18")


# ---- MiniImageNet --------------------------------------------------------------------------------

def read_miniimagenet_pickle(path: Path) -> Tuple[Tensor, Tensor]:
    """A GPM-family MiniImageNet pickle: {'images': uint8 N×84×84×3, 'labels': N class ids}."""

    def parse(p: Path) -> Tuple[Tensor, Tensor]:
        data = load_pickle(p)
        images, labels = np.asarray(data["images"]), np.asarray(data["labels"], dtype=np.int64).reshape(-1)
        expect(images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (84, 84, 3),
               f"'images' is {images.dtype} {images.shape}, not uint8 N x 84 x 84 x 3")
        expect(len(labels) == len(images), f"{len(labels)} labels for {len(images)} images")
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)

    images, labels = read_file(path, "MiniImageNet pickle", parse)
    check_classes(path, labels, 100)
    return images, labels


def split_miniimagenet(data_root: Path, seed: int, valid_fraction: float, download: bool = False) -> TaskStream:
    """20 tasks of 5 classes, 84×84: the 100 classes in an order drawn from the seed, 5 per task."""
    require_files(data_root, "split_miniimagenet", ["miniimagenet"], download)
    x_train, y_train = read_miniimagenet_pickle(data_root / MINIIMAGENET_FILES[0])
    x_test, y_test = read_miniimagenet_pickle(data_root / MINIIMAGENET_FILES[1])
    order = torch.randperm(100, generator=torch.Generator().manual_seed(seed)).tolist()
    groups = [order[5 * t:5 * t + 5] for t in range(20)]
    tasks = class_split_tasks("miniimagenet", (x_train, y_train, x_test, y_test), groups, seed, valid_fraction)
    return TaskStream("split_miniimagenet", tasks, (3, 84, 84), "resnet18", {"class_order": order})
