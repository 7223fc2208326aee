"""The paper's file-based streams read from tiny files in the real formats (written by fake_data)."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import read_markers, write_fake_cifar100, write_fake_five_datasets, write_fake_miniimagenet

from ness_sweep.benchmarks import load_stream
from ness_sweep.config import UserError
from ness_sweep.methods import load_run_config

REPO = Path(__file__).resolve().parents[1]
PER_CLASS, TEST_PER_CLASS, VALID_FRACTION = 4, 2, 0.25


def channel_stats_by_numpy(x: torch.Tensor):
    pixels = x.numpy().astype(np.float64) / 255.0
    return pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))


def check_split(task, expected_classes, grey=False, shape=(3, 32, 32)):
    """Shapes, labels, markers (label ↔ original class) and a disjoint, complete validation split."""
    n_train_total = PER_CLASS * len(expected_classes)
    assert task.num_classes == len(expected_classes)
    assert len(task.y_valid) == round(VALID_FRACTION * n_train_total)
    assert len(task.y_train) + len(task.y_valid) == n_train_total
    assert len(task.y_test) == TEST_PER_CLASS * len(expected_classes)
    ids = {}
    for part in ("train", "valid", "test"):
        x, y = getattr(task, f"x_{part}"), getattr(task, f"y_{part}")
        assert x.dtype == torch.uint8 and x.shape[1:] == shape
        assert y.dtype == torch.long and int(y.min()) >= 0 and int(y.max()) < task.num_classes
        original, sample_ids = read_markers(x, grey)
        assert original.tolist() == [expected_classes[label] for label in y.tolist()]
        ids[part] = set(sample_ids.tolist())
    assert sorted(set(task.y_train.tolist()) | set(task.y_valid.tolist())) == list(range(task.num_classes))
    assert not ids["train"] & ids["valid"]
    assert len(ids["train"] | ids["valid"]) == n_train_total
    return ids["valid"]


# ---- split_cifar100 --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    return write_fake_cifar100(tmp_path_factory.mktemp("cifar100"), PER_CLASS, TEST_PER_CLASS)


def test_split_cifar100_tasks_labels_and_split(cifar100_root):
    stream = load_stream("split_cifar100", str(cifar100_root), 3, VALID_FRACTION)
    assert stream.default_model == "alexnet" and stream.input_shape == (3, 32, 32)
    assert len(stream.tasks) == 10
    for t, task in enumerate(stream.tasks):
        check_split(task, list(range(10 * t, 10 * t + 10)))
    # the usual normalisation: statistics of the whole training file, the same for every task
    x_all = torch.cat([torch.cat([task.x_train, task.x_valid]) for task in stream.tasks])
    mean, std = channel_stats_by_numpy(x_all)
    for task in stream.tasks:
        assert task.mean.numpy() == pytest.approx(mean, abs=1e-6)
        assert task.std.numpy() == pytest.approx(std, abs=1e-6)


def test_validation_split_follows_the_seed(cifar100_root):
    def valid_ids(seed):
        stream = load_stream("split_cifar100", str(cifar100_root), seed, VALID_FRACTION)
        return [sorted(read_markers(task.x_valid)[1].tolist()) for task in stream.tasks]

    assert valid_ids(5) == valid_ids(5)
    assert valid_ids(5) != valid_ids(6)


def test_valid_fraction_is_the_one_passed(cifar100_root):
    stream = load_stream("split_cifar100", str(cifar100_root), 0, 0.5)
    assert all(len(task.y_valid) == 20 for task in stream.tasks)


def test_missing_class_is_reported(tmp_path):
    root = write_fake_cifar100(tmp_path, 1, 1)
    path = root / "cifar-100-python" / "train"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch["fine_labels"] = [min(label, 98) for label in batch["fine_labels"]]
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(UserError, match=r"cifar-100-python/train: expected labels 0\.\.99"):
        load_stream("split_cifar100", str(root), 0, 0.1)


# ---- five_datasets ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def five_root(tmp_path_factory):
    return write_fake_five_datasets(tmp_path_factory.mktemp("five"), PER_CLASS, TEST_PER_CLASS)


def test_five_datasets_order_shapes_padding_and_split(five_root):
    stream = load_stream("five_datasets", str(five_root), 1, VALID_FRACTION)
    assert stream.default_model == "resnet18" and stream.input_shape == (3, 32, 32)
    assert [task.name for task in stream.tasks] == ["cifar10", "mnist", "svhn", "fashion_mnist", "notmnist"]
    for task in stream.tasks:
        grey = task.name in ("mnist", "fashion_mnist", "notmnist")
        check_split(task, list(range(10)), grey=grey)  # SVHN's stored label 10 must come back as 0
        x = torch.cat([task.x_train, task.x_valid])
        if grey:
            assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
            border = torch.ones(32, 32, dtype=torch.bool)
            border[2:30, 2:30] = False
            assert int(x[:, :, border].max()) == 0
        mean, std = channel_stats_by_numpy(x)  # per data set, padding included
        assert task.mean.numpy() == pytest.approx(mean, abs=1e-6)
        assert task.std.numpy() == pytest.approx(std, abs=1e-6)


def test_five_datasets_split_is_seeded(five_root):
    def valid_ids(seed):
        stream = load_stream("five_datasets", str(five_root), seed, VALID_FRACTION)
        return [sorted(read_markers(t.x_valid, t.name in ("mnist", "fashion_mnist", "notmnist"))[1].tolist())
                for t in stream.tasks]

    assert valid_ids(2) == valid_ids(2)
    assert valid_ids(2) != valid_ids(3)


# ---- split_miniimagenet ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    return write_fake_miniimagenet(tmp_path_factory.mktemp("mini"), PER_CLASS, TEST_PER_CLASS)


def test_miniimagenet_tasks_follow_the_seeded_class_order(mini_root):
    stream = load_stream("split_miniimagenet", str(mini_root), 4, VALID_FRACTION)
    assert stream.default_model == "resnet18" and stream.input_shape == (3, 84, 84)
    assert len(stream.tasks) == 20
    order = stream.meta["class_order"]
    assert sorted(order) == list(range(100)) and order != list(range(100))
    for t, task in enumerate(stream.tasks):
        check_split(task, order[5 * t:5 * t + 5], shape=(3, 84, 84))
    assert load_stream("split_miniimagenet", str(mini_root), 4, VALID_FRACTION).meta["class_order"] == order
    assert load_stream("split_miniimagenet", str(mini_root), 5, VALID_FRACTION).meta["class_order"] != order


# ---- missing and corrupt files ---------------------------------------------------------------------

# (not named ``benchmark``: pytest-benchmark reserves that argument name)
WRITERS = {"split_cifar100": write_fake_cifar100, "five_datasets": write_fake_five_datasets,
           "split_miniimagenet": write_fake_miniimagenet}


@pytest.mark.parametrize("benchmark_name, relative", [
    ("split_cifar100", "cifar-100-python/test"),
    ("five_datasets", "cifar-10-batches-py/data_batch_3"),
    ("five_datasets", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
    ("five_datasets", "train_32x32.mat"),
    ("five_datasets", "notMNIST/test/J"),
    ("split_miniimagenet", "miniimagenet/train.pkl"),
])
def test_missing_file_is_one_line_naming_it(tmp_path, benchmark_name, relative):
    root = WRITERS[benchmark_name](tmp_path, 1, 1)
    target = root / relative
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError) as error:
        load_stream(benchmark_name, str(root), 0, 0.1)
    message = str(error.value)
    assert relative in message and "\n" not in message
    assert str(root) in message


@pytest.mark.parametrize("benchmark_name, relative", [
    ("split_cifar100", "cifar-100-python/train"),
    ("five_datasets", "cifar-10-batches-py/test_batch"),
    ("five_datasets", "MNIST/raw/train-images-idx3-ubyte"),
    ("five_datasets", "test_32x32.mat"),
    ("five_datasets", "notMNIST/train/C/00000.png"),
    ("split_miniimagenet", "miniimagenet/test.pkl"),
])
def test_corrupt_file_is_one_line_naming_it(tmp_path, benchmark_name, relative):
    root = WRITERS[benchmark_name](tmp_path, 1, 1)
    target = root / relative
    if not target.exists():  # the PNG names depend on the shuffled labels: take C's first image
        target = sorted(target.parent.glob("*.png"))[0]
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # truncated
    with pytest.raises(UserError) as error:
        load_stream(benchmark_name, str(root), 0, 0.1)
    message = str(error.value)
    assert str(target) in message and "\n" not in message


# ---- presets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, expected", [
    ("paper_cifar100", dict(benchmark="split_cifar100", epochs=200, lr=0.005, weight_decay=1e-4, threshold=1e-3,
                            lr_patience=6, lr_factor=2.0, lr_min=1e-5)),
    ("paper_five_datasets", dict(benchmark="five_datasets", epochs=200, lr=0.05, weight_decay=5e-5, threshold=1e-3,
                                 lr_patience=5, lr_factor=3.0, lr_min=1e-3)),
    ("paper_miniimagenet", dict(benchmark="split_miniimagenet", epochs=100, lr=0.01, weight_decay=1e-5,
                                threshold=5e-4, lr_patience=5, lr_factor=3.0, lr_min=1e-3)),
])
def test_paper_presets_hold_the_paper_settings(preset, expected):
    cfg = load_run_config([f"preset={preset}"])
    t = cfg.train
    assert cfg.benchmark == expected["benchmark"]
    assert (t.epochs, t.batch_size, t.optimizer, t.valid_fraction) == (expected["epochs"], 64, "sgd", 0.05)
    assert t.momentum == 0.9
    assert t.lr == expected["lr"] and t.weight_decay == expected["weight_decay"]
    assert (t.lr_patience, t.lr_factor, t.lr_min) == (expected["lr_patience"], expected["lr_factor"],
                                                      expected["lr_min"])
    assert cfg.ness.threshold == expected["threshold"]
    assert load_run_config([f"preset={preset}", "train.epochs=3"]).train.epochs == 3  # overrides still win


# ---- the CLI ---------------------------------------------------------------------------------------

def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ness_sweep.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_missing_data_exits_2_with_one_line(tmp_path):
    result = run_cli("benchmark=split_cifar100", f"data_root={tmp_path}", "download=false")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar-100-python/train" in lines[0] and "download=true" in lines[0]
    assert not any(tmp_path.iterdir())


def test_cli_runs_split_cifar100_on_tiny_files(tmp_path):
    root = write_fake_cifar100(tmp_path / "data", per_class=2, test_per_class=1)
    output = tmp_path / "r.json"
    # Fine-tuning: the loader through the command line is the point; NESS on the AlexNet has tests of its own
    # (tests/test_models.py), and its nine eigendecompositions of the AlexNet's Gram matrices would take 40 s.
    result = run_cli("benchmark=split_cifar100", f"data_root={root}", "method=finetune", "train.epochs=1",
                     "device=cpu", f"output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    matrix = json.loads(output.read_text())["acc_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    for i, row in enumerate(matrix):
        assert all(0 <= a <= 100 for a in row[:i + 1]) and all(a is None for a in row[i + 1:])
