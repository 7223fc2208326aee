"""``download=true``: missing files fetched through torchvision's own dataset classes.

Nothing leaves this machine: the archives are tiny fakes in the real formats, served over HTTP on
127.0.0.1, and torchvision's download addresses and checksums are pointed at them for each test.
"""

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import pytest
import torch
import torchvision.datasets
from fake_data import write_fake_cifar100, write_fake_five_datasets

from ness_sweep.benchmarks import load_stream
from ness_sweep.config import UserError


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Archives:
    """A folder served over HTTP on loopback that records every path asked for."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.requests = []
        archives = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                archives.requests.append(self.path)

            def handle(self):  # torchvision drops its first connection (a redirect probe) unread
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"


@pytest.fixture
def archives(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    served = Archives(folder)
    yield served
    served.server.shutdown()
    served.server.server_close()


def serve_cifar100(archives: Archives, monkeypatch, source: Path, archive_md5: str = None) -> None:
    """``cifar-100-python.tar.gz`` of the fake files, with CIFAR100's address and checksums set to it."""
    archive = archives.folder / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    folder = source / "cifar-100-python"
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "url", archives.url(archive.name))
    monkeypatch.setattr(cls, "tgz_md5", archive_md5 or md5(archive))
    monkeypatch.setattr(cls, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(cls, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "meta")})


def same_stream(a, b) -> bool:
    return len(a.tasks) == len(b.tasks) and all(
        torch.equal(x.x_train, y.x_train) and torch.equal(x.y_test, y.y_test) for x, y in zip(a.tasks, b.tasks))


def test_missing_cifar100_is_downloaded_once_and_read(tmp_path, archives, monkeypatch, capsys):
    source = write_fake_cifar100(tmp_path / "source", per_class=2, test_per_class=1)
    serve_cifar100(archives, monkeypatch, source)
    root = tmp_path / "new" / "data_root"  # does not exist yet

    stream = load_stream("split_cifar100", str(root), 0, 0.25, download=True)

    assert set(archives.requests) == {"/cifar-100-python.tar.gz"}  # torchvision asks twice: redirects, then data
    assert same_stream(stream, load_stream("split_cifar100", str(source), 0, 0.25))
    # only the expected files are kept: no archive, no staging folder
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "cifar-100-python", "cifar-100-python/test", "cifar-100-python/train"]
    assert "downloading" in capsys.readouterr().out
    asked = len(archives.requests)
    load_stream("split_cifar100", str(root), 1, 0.25, download=True)
    assert len(archives.requests) == asked  # present now: not fetched again


def test_five_datasets_downloads_only_what_is_missing(tmp_path, archives, monkeypatch):
    """MNIST (gzip idx files from a mirror list) and SVHN (one .mat per split) through their own classes;
    the data sets already in place are not fetched."""
    source = write_fake_five_datasets(tmp_path / "source", per_class=2, test_per_class=1)
    root = write_fake_five_datasets(tmp_path / "root", per_class=2, test_per_class=1)
    shutil.rmtree(root / "MNIST")
    (root / "train_32x32.mat").unlink()
    (root / "test_32x32.mat").unlink()
    mnist_resources = []
    for raw in sorted((source / "MNIST" / "raw").iterdir()):
        packed = archives.folder / f"{raw.name}.gz"
        packed.write_bytes(gzip.compress(raw.read_bytes()))
        mnist_resources.append((packed.name, md5(packed)))
    svhn_splits = {}
    for split in ("train", "test"):
        mat = source / f"{split}_32x32.mat"
        shutil.copy(mat, archives.folder / mat.name)
        svhn_splits[split] = [archives.url(mat.name), mat.name, md5(mat)]
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [archives.url()])
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", mnist_resources)
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", svhn_splits)

    stream = load_stream("five_datasets", str(root), 0, 0.25, download=True)

    assert set(archives.requests) == ({f"/{name}" for name, _ in mnist_resources}
                                      | {"/train_32x32.mat", "/test_32x32.mat"})
    assert same_stream(stream, load_stream("five_datasets", str(source), 0, 0.25))
    assert not list(root.glob(".download-*")) and not list((root / "MNIST" / "raw").glob("*.gz"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "url", f"http://127.0.0.1:{closed_port()}/cifar-100-python.tar.gz")
    root = tmp_path / "new" / "data_root"
    with pytest.raises(UserError) as error:
        load_stream("split_cifar100", str(root), 0, 0.25, download=True)
    message = str(error.value)
    assert "\n" not in message
    assert "cifar-100-python/train" in message and "download failed" in message and "refused" in message.lower()
    assert not (tmp_path / "new").exists()


def test_checksum_mismatch_keeps_nothing_of_the_download(tmp_path, archives, monkeypatch):
    source = write_fake_cifar100(tmp_path / "source", per_class=2, test_per_class=1)
    serve_cifar100(archives, monkeypatch, source, archive_md5="0" * 32)
    root = tmp_path / "data_root"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as error:
        load_stream("split_cifar100", str(root), 0, 0.25, download=True)
    assert "download failed" in str(error.value) and archives.requests
    assert [p.name for p in root.iterdir()] == ["notes.txt"]


def test_download_false_never_asks_the_server(tmp_path, archives, monkeypatch):
    source = write_fake_cifar100(tmp_path / "source", per_class=2, test_per_class=1)
    serve_cifar100(archives, monkeypatch, source)
    with pytest.raises(UserError) as error:
        load_stream("split_cifar100", str(tmp_path / "data_root"), 0, 0.25, download=False)
    assert "download=true" in str(error.value)
    assert archives.requests == []
