"""The continual loop end to end on the embedded digits streams (CPU, seconds each)."""

import copy

import pytest
import torch

from ness_sweep import ness
from ness_sweep.config import load_run_config
from ness_sweep.data import stream_for
from ness_sweep.trainer import Trainer


def run(*overrides, stop_after=None):
    cfg = load_run_config(["device=cpu", *overrides])
    stream = stream_for(cfg, cfg.seed)
    return Trainer(cfg, stream, log=None).run().to_dict()


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
    for ranks, count in zip(ness_run["ranks"][1:], ness_run["trainable_params"][1:]):
        assert count == 256 * sum(ranks.values()) + 256 * 10
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
    assert result["ranks"][0] == {} and set(result["ranks"][1]) == {"1", "3"}


def test_rank_zero_freezes_the_body_exactly():
    R = run("ness.rank=0", "ness.threshold=null", "train.epochs=2")["acc_matrix"]
    assert [R[i][0] for i in range(5)] == [R[0][0]] * 5


def test_same_seed_same_matrix_and_other_seed_differs():
    first = run("train.epochs=3", "seed=3")["acc_matrix"]
    assert run("train.epochs=3", "seed=3")["acc_matrix"] == first
    assert run("train.epochs=3", "seed=4")["acc_matrix"] != first


@pytest.mark.parametrize("memory", ["replay", "stream"])
def test_restore_after_task_two_finishes_like_an_uninterrupted_run(memory):
    cfg = load_run_config(["device=cpu", "train.epochs=3", f"ness.memory={memory}", "seed=1"])
    stream = stream_for(cfg, cfg.seed)
    uninterrupted = Trainer(cfg, stream, log=None).run().acc_matrix

    saved = {}

    class Interrupt(Exception):
        pass

    def save_and_stop(result):
        if result.task == 2:
            saved["state"] = copy.deepcopy(first.state_dict())
            raise Interrupt

    first = Trainer(cfg, stream, log=None)
    with pytest.raises(Interrupt):
        first.run(on_task_end=save_and_stop)
    # Disturb every random generator: the restored state must bring them back.
    torch.manual_seed(999)
    resumed = Trainer(cfg, stream, log=None)
    resumed.load_state_dict(saved["state"])
    reports = []
    result = resumed.run(on_task_end=lambda r: reports.append(r.task))
    assert reports == [3, 4, 5]
    assert result.acc_matrix == uninterrupted


def test_huge_learning_rate_raises_floating_point_error():
    with pytest.raises(FloatingPointError, match="train.lr"):
        run("train.lr=1e12", "train.epochs=2", "train.momentum=0.99")


def test_task_results_reported_after_every_task():
    cfg = load_run_config(["device=cpu", "train.epochs=1", "benchmark=split_digits"])
    stream = stream_for(cfg, cfg.seed)
    reports = []
    Trainer(cfg, stream, log=None).run(on_task_end=reports.append)
    assert [r.task for r in reports] == [1, 2, 3, 4, 5]
    assert [len(r.row) for r in reports] == [1, 2, 3, 4, 5]
    assert all(r.final is None for r in reports[:-1]) and set(reports[-1].final) == {"acc", "bwt", "forgetting"}
    assert reports[-1].acc_seen == pytest.approx(reports[-1].final["acc"])
    assert all(r.trainable_params > 0 for r in reports)


def test_no_adapters_left_after_a_run():
    cfg = load_run_config(["device=cpu", "train.epochs=1"])
    stream = stream_for(cfg, cfg.seed)
    trainer = Trainer(cfg, stream, log=None)
    trainer.run()
    assert not any(isinstance(m, ness.NullSpaceAdapter) for m in trainer.model.modules())
