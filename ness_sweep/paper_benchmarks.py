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

With ``download=true`` (the default), data sets that torchvision can fetch (CIFAR-10/100, MNIST,
Fashion-MNIST, SVHN) are downloaded through its dataset classes when their files are missing; notMNIST
and MiniImageNet have no official download and must be put in place by hand. The files are then read
directly rather than through those classes, because they accept only files whose checksum matches the
official archives. A missing or unreadable file, or a failed download, is a ``UserError`` naming it.
Pickles can run code when loaded: point ``data_root`` at files you trust.

Images are kept as uint8 N×C×H×W; each task carries the per-channel mean and std of its data set's
training images, so ``Task.inputs`` normalises batch by batch.
"""

from __future__ import annotations

import pickle
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import UserError
from .data import Task, TaskStream, register, split_train_valid

Split = Tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_test, y_test

CIFAR100_FILES = ("cifar-100-python/train", "cifar-100-python/test")
CIFAR10_FILES = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)) + ("cifar-10-batches-py/test_batch",)
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
NOTMNIST_LETTERS = "ABCDEFGHIJ"
MINIIMAGENET_FILES = ("miniimagenet/train.pkl", "miniimagenet/test.pkl")


def torchvision_fetch(dataset: str, *splits: Dict[str, object]) -> Callable[[Path], None]:
    """Download through ``torchvision.datasets.<dataset>(root, download=True, **split)`` for each split
    (one call fetches CIFAR's whole archive; SVHN needs one per file): torchvision checks the checksums."""

    def fetch(root: Path) -> None:
        import torchvision.datasets

        for split in splits:
            getattr(torchvision.datasets, dataset)(str(root), download=True, **split)

    return fetch


@dataclass(frozen=True)
class Source:
    """What one data set needs under data_root, a short name for all of it, where to get it, and a
    downloader where one exists."""

    files: Tuple[str, ...]
    summary: str  # shown instead of the list when every file is missing
    hint: str
    fetch: Optional[Callable[[Path], None]] = None


SOURCES = {
    "cifar100": Source(CIFAR100_FILES, ", ".join(CIFAR100_FILES),
                       "extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into data_root",
                       torchvision_fetch("CIFAR100", {"train": True})),
    "cifar10": Source(CIFAR10_FILES, "cifar-10-batches-py/{data_batch_1..5,test_batch}",
                      "extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into data_root",
                      torchvision_fetch("CIFAR10", {"train": True})),
    "mnist": Source(tuple(f"MNIST/raw/{n}" for n in MNIST_NAMES), "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                    "torchvision.datasets.MNIST(data_root, download=True) writes them",
                    torchvision_fetch("MNIST", {"train": True})),
    "svhn": Source(SVHN_FILES, ", ".join(SVHN_FILES),
                   "torchvision.datasets.SVHN(data_root, split='train'/'test', download=True) writes them",
                   torchvision_fetch("SVHN", {"split": "train"}, {"split": "test"})),
    "fashion_mnist": Source(tuple(f"FashionMNIST/raw/{n}" for n in MNIST_NAMES), "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                            "torchvision.datasets.FashionMNIST(data_root, download=True) writes them",
                            torchvision_fetch("FashionMNIST", {"train": True})),
    "notmnist": Source(tuple(f"notMNIST/{split}/{letter}" for split in ("train", "test") for letter in NOTMNIST_LETTERS),
                       "notMNIST/{train,test}/{A..J}/",
                       "one folder of greyscale PNGs (at most 32x32, e.g. notMNIST_small's 28x28) per letter A..J, in train/ and test/"),
    "miniimagenet": Source(MINIIMAGENET_FILES, ", ".join(MINIIMAGENET_FILES),
                           "pickled dicts with 'images' (uint8 N x 84 x 84 x 3) and 'labels' (100 classes) as the "
                           "GPM-family code reads them"),
}

DOWNLOAD_TIMEOUT_S = 60  # per socket operation: an unreachable host fails instead of hanging


def absent_files(data_root: Path, source: Source) -> List[str]:
    return [f for f in source.files if not (data_root / f).exists()]


def download_missing(data_root: Path, sources: Sequence[str]) -> Dict[str, str]:
    """Fetch every source with absent files and a downloader; return why each failed download failed.

    Each download goes to a fresh folder inside data_root and only the expected files are moved into
    place once torchvision has checked them, so a failed download leaves nothing behind (not even
    data_root and its parents, if they did not exist).
    """
    wanted = [name for name in sources if SOURCES[name].fetch and absent_files(data_root, SOURCES[name])]
    if not wanted:
        return {}
    created = first_missing_ancestor(data_root)
    failures = {}
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for name in wanted:
            source = SOURCES[name]
            print(f"{name}: files missing under {data_root}; downloading through torchvision", flush=True)
            data_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".download-{name}-", dir=data_root))
            try:
                source.fetch(staging)
                for relative in absent_files(data_root, source):
                    (data_root / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(staging / relative), str(data_root / relative))
            except Exception as error:  # no network, HTTP errors, checksum mismatch, full disk
                failures[name] = one_line(error)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        socket.setdefaulttimeout(previous_timeout)
        if created and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created)
    return failures


def first_missing_ancestor(path: Path) -> Optional[Path]:
    """The outermost folder that creating ``path`` would create; None if ``path`` exists."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def require_files(data_root: Path, benchmark: str, sources: Sequence[str], download: bool) -> None:
    """Download what is missing (when allowed), then fail before reading anything if any expected file
    or folder is still absent: one line naming them all, how to get them, and why a download failed."""
    failures = download_missing(data_root, sources) if download else {}
    missing, hints = [], []
    for name in sources:
        source = SOURCES[name]
        absent = absent_files(data_root, source)
        if absent:
            missing += [source.summary] if len(absent) == len(source.files) else absent
            why = f"download failed: {failures[name]}; " if name in failures else ""
            offer = " (or download=true fetches them)" if source.fetch and not download else ""
            hints.append(f"{name}: {why}{source.hint}{offer}")
    if missing:
        raise UserError(f"benchmark={benchmark}: missing under data_root={data_root}: {', '.join(missing)} "
                          f"({'; '.join(hints)})")


def one_line(error: Exception) -> str:
    """The first line of an error's message, or its type when the message is empty."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def read_file(path: Path, what: str, reader: Callable[[Path], object]):
    """``reader(path)``, with any failure (truncated, wrong format, wrong contents) as one UserError line."""
    try:
        return reader(path)
    except Exception as error:  # corrupt files fail in many ways: pickle, EOF, shape, key and value errors
        raise UserError(f"{path}: not a readable {what} file ({one_line(error)})") from None


def load_pickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # latin1: the CIFAR pickles were written by Python 2


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


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
        xtr, ytr, xva, yva = split_train_valid(x_train[keep_train], relabel[y_train[keep_train]], valid_fraction, seed + t)
        name = f"{prefix} classes {', '.join(map(str, group))}"
        tasks.append(Task(name, len(group), xtr, ytr, xva, yva, x_test[keep_test], relabel[y_test[keep_test]], mean, std))
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


@register("split_cifar100")
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
        expect(images.ndim == 4 and images.shape[:3] == (32, 32, 3), f"'X' has shape {images.shape}, not 32 x 32 x 3 x N")
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


@register("five_datasets")
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


@register("split_miniimagenet")
def split_miniimagenet(data_root: Path, seed: int, valid_fraction: float, download: bool = False) -> TaskStream:
    """20 tasks of 5 classes, 84×84: the 100 classes in an order drawn from the seed, 5 per task."""
    require_files(data_root, "split_miniimagenet", ["miniimagenet"], download)
    x_train, y_train = read_miniimagenet_pickle(data_root / MINIIMAGENET_FILES[0])
    x_test, y_test = read_miniimagenet_pickle(data_root / MINIIMAGENET_FILES[1])
    order = torch.randperm(100, generator=torch.Generator().manual_seed(seed)).tolist()
    groups = [order[5 * t:5 * t + 5] for t in range(20)]
    tasks = class_split_tasks("miniimagenet", (x_train, y_train, x_test, y_test), groups, seed, valid_fraction)
    return TaskStream("split_miniimagenet", tasks, (3, 84, 84), "resnet18", {"class_order": order})
