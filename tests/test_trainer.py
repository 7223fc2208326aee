"""The continual loop end to end on the embedded digits streams (CPU, seconds each)."""

import copy
import random

import numpy as np
import pytest
import torch

from ness_sweep import ness
from ness_sweep.benchmarks import stream_for
from ness_sweep.data import Task, TaskStream
from ness_sweep.methods import load_run_config, make_trainer
from ness_sweep.metrics import seen_accuracy


def trainer_for(*overrides):
    cfg = load_run_config(["device=cpu", *overrides])
    return make_trainer(cfg, stream_for(cfg, cfg.seed), log=None)


def run(*overrides):
    return trainer_for(*overrides).run().to_dict()


@pytest.fixture(scope="module")
def default_runs():
    return {method: run(f"method={method}") for method in ("ness", "finetune")}


def test_ness_keeps_old_tasks_where_finetuning_forgets(default_runs):
    ness_run, finetune = default_runs["ness"], default_runs["finetune"]
    assert ness_run["bwt"] >= -2
    assert finetune["bwt"] <= -10
    assert ness_run["acc"] >= finetune["acc"] + 10
    # Task 1 trains the 64-256-256 body and its head; later tasks only A (256 × r per layer) and a head.
    assert ness_run["trainable_params"][0] == 64 * 256 + 256 * 256 + 256 * 10
    for diagnostics, count in zip(ness_run["diagnostics"][1:], ness_run["trainable_params"][1:]):
        assert count == 256 * sum(diagnostics.values()) + 256 * 10  # NESS's diagnostics: rank/<layer>
    assert finetune["trainable_params"][1] == finetune["trainable_params"][0]  # body + one head each task


def test_stream_memory_also_keeps_old_tasks():
    result = run("ness.memory=stream")
    assert result["bwt"] >= -2


def test_accuracy_matrix_shape_and_metrics_consistency(default_runs):
    result = default_runs["ness"]
    R = result["acc_matrix"]
    assert len(R) == 5 and all(len(row) == 5 for row in R)
    assert all(R[i][j] is None for i in range(5) for j in range(i + 1, 5))
    assert result["acc"] == pytest.approx(sum(R[4]) / 5)
    assert result["diagnostics"][0] == {} and set(result["diagnostics"][1]) == {"rank/fc1", "rank/fc2"}


def test_rank_zero_freezes_the_body_exactly():
    R = run("ness.rank=0", "ness.threshold=null", "train.epochs=2")["acc_matrix"]
    assert [R[i][0] for i in range(5)] == [R[0][0]] * 5


def test_same_seed_same_matrix_and_other_seed_differs():
    first = run("train.epochs=3", "seed=3")["acc_matrix"]
    assert run("train.epochs=3", "seed=3")["acc_matrix"] == first
    assert run("train.epochs=3", "seed=4")["acc_matrix"] != first


@pytest.mark.parametrize("memory", ["replay", "stream"])
def test_restore_after_task_two_finishes_like_an_uninterrupted_run(memory):
    settings = ["train.epochs=3", f"ness.memory={memory}", "seed=1"]
    uninterrupted = trainer_for(*settings).run().acc_matrix
    first = trainer_for(*settings)
    first.run(until=2)
    saved = copy.deepcopy(first.state_dict())
    # Disturb every random generator: the restored state must bring them back.
    random.seed(999)
    np.random.seed(999)
    torch.manual_seed(999)
    resumed = trainer_for(*settings)
    resumed.load_state_dict(saved)
    finished = []
    for task in (3, 4, 5):
        resumed.run(until=task)
        finished.append(resumed.next_task)
    assert finished == [3, 4, 5]
    assert resumed.result().acc_matrix == uninterrupted


def test_huge_learning_rate_raises_floating_point_error():
    with pytest.raises(FloatingPointError, match="train.lr"):
        run("train.lr=1e12", "train.epochs=2", "train.momentum=0.99")


def test_results_are_there_after_every_task():
    """run(until=k) stops at each task boundary (where the sweep reports) with that task's row, diagnostics and
    count."""
    trainer = trainer_for("train.epochs=1", "benchmark=split_digits")
    for task in range(1, 6):
        trainer.run(until=task)
        assert trainer.next_task == task
        assert [len(row) for row in trainer.rows] == list(range(1, task + 1))
        assert len(trainer.diagnostics) == len(trainer.trainable_params) == task
    assert all(count > 0 for count in trainer.trainable_params)
    final = trainer.result().to_dict()
    assert set(final) >= {"acc", "bwt", "forgetting"}
    assert seen_accuracy(trainer.rows[-1]) == pytest.approx(final["acc"])


def test_no_adapters_left_after_a_run():
    trainer = trainer_for("train.epochs=1")
    trainer.run()
    assert not any(isinstance(m, ness.NullSpaceAdapter) for m in trainer.model.modules())


def test_every_seen_task_is_evaluated_on_its_validation_split_too():
    """The validation rows, counted by hand on each task's validation split (the MLP has no batch statistics,
    so one batch of the whole split gives what the trainer's batches give)."""
    trainer = trainer_for("train.epochs=1", "benchmark=split_digits")
    trainer.run(until=2)
    assert [len(row) for row in trainer.valid_rows] == [1, 2]
    trainer.model.eval()
    for j, task in enumerate(trainer.stream.tasks[:2]):
        with torch.no_grad():
            predicted = trainer.model(task.inputs(task.x_valid), j).argmax(1)
        assert trainer.valid_rows[-1][j] == 100.0 * (predicted == task.y_valid).sum().item() / len(task.y_valid)
    assert trainer.valid_rows != trainer.rows
    final = trainer.run().to_dict()
    assert final["valid_acc"] == pytest.approx(seen_accuracy(trainer.valid_rows[-1]))
    assert final["valid_acc_matrix"][0][1] is None and len(final["valid_acc_matrix"]) == 5


def image_stream(samples: int = 40) -> TaskStream:
    """One two-class task of random 3×32×32 images: enough for the AlexNet to build and train."""
    generator = torch.Generator().manual_seed(0)

    def split():
        return torch.rand(samples, 3, 32, 32, generator=generator), torch.randint(0, 2, (samples,), generator=generator)

    return TaskStream("images", [Task("t1", 2, *split(), *split(), *split())], (3, 32, 32), "alexnet")


@pytest.mark.parametrize("model", ["alexnet", "mlp"])
def test_accuracy_depends_on_the_evaluation_batch_size_only_with_batch_statistics(model):
    """The AlexNet's batch norm normalises each evaluation batch by its own statistics: its accuracy changes with
    train.eval_batch_size. The MLP's does not."""
    cfg = load_run_config(["device=cpu", "train.epochs=1", "method=finetune", f"model={model}"])
    stream = image_stream() if model == "alexnet" else stream_for(cfg, 0)
    trainer = make_trainer(cfg, stream, log=None)
    trainer.run(until=1)
    task = trainer.stream.tasks[0]
    accuracies = []
    for size in (2, 8, len(task.y_test)):
        trainer.cfg.train.eval_batch_size = size
        accuracies.append(trainer.accuracy(task, 0))
    assert (len(set(accuracies)) > 1) == (model == "alexnet"), accuracies
