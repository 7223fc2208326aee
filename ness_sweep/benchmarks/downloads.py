"""What each file-based data set needs under data_root, and fetching what is missing.

With ``download=true`` (the default), data sets that torchvision can fetch (CIFAR-10/100, MNIST,
Fashion-MNIST, SVHN) are downloaded through its dataset classes when their files are missing; notMNIST
and MiniImageNet have no official download and must be put in place by hand. A missing file, or a
failed download, is a ``UserError`` naming it.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..config import UserError, first_line

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
    "mnist": Source(tuple(f"MNIST/raw/{n}" for n in MNIST_NAMES),
                    "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                    "torchvision.datasets.MNIST(data_root, download=True) writes them",
                    torchvision_fetch("MNIST", {"train": True})),
    "svhn": Source(SVHN_FILES, ", ".join(SVHN_FILES),
                   "torchvision.datasets.SVHN(data_root, split='train'/'test', download=True) writes them",
                   torchvision_fetch("SVHN", {"split": "train"}, {"split": "test"})),
    "fashion_mnist": Source(tuple(f"FashionMNIST/raw/{n}" for n in MNIST_NAMES),
                            "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                            "torchvision.datasets.FashionMNIST(data_root, download=True) writes them",
                            torchvision_fetch("FashionMNIST", {"train": True})),
    "notmnist": Source(tuple(f"notMNIST/{split}/{letter}"
                             for split in ("train", "test") for letter in NOTMNIST_LETTERS),
                       "notMNIST/{train,test}/{A..J}/",
                       "one folder of greyscale PNGs (at most 32x32, e.g. notMNIST_small's 28x28) per letter A..J, "
                       "in train/ and test/"),
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
                failures[name] = first_line(error, with_type=True)
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
