"""The method registry (one smoke test per method, FACIL style, all through ``make_trainer``), the global
RNG state captured in one place, and the per-epoch progress hook."""

import math
import random

import numpy as np
import pytest
import torch
from test_device import HostSyncs

from ness_sweep import ness
from ness_sweep.benchmarks import stream_for
from ness_sweep.config import UserError
from ness_sweep.methods import METHODS, check_method, load_run_config, make_trainer
from ness_sweep.trainer import global_rng_state, set_global_rng_state

SMOKE = ["benchmark=split_digits", "train.epochs=1"]


def config(*overrides):
    return load_run_config(["device=cpu", *overrides])


def trainer_for(*overrides, **kwargs):
    cfg = config(*overrides)
    return make_trainer(cfg, stream_for(cfg, cfg.seed), **{"log": None, **kwargs})


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def unchanged(before: dict, module: torch.nn.Module) -> bool:
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- one smoke test per method -----------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_two_tasks_through_make_trainer(method):
    trainer = trainer_for(f"method={method}", *SMOKE)
    assert type(trainer.method) is METHODS[method]
    trainer.run(until=1)
    body, head0 = snapshot(trainer.model.body), snapshot(trainer.model.heads[0])
    R = trainer.run(until=2).acc_matrix
    assert len(R) == 2 and R[1][2:] == [None] * 3 and all(0 <= a <= 100 for a in R[0][:1] + R[1][:2])
    assert not any(isinstance(m, ness.NullSpaceAdapter) for m in trainer.model.modules())  # merged
    heads = count(trainer.model.heads[1])
    layers = dict(trainer.model.body.named_modules())
    if method == "ness":  # only A (d_out × r per layer) and the head
        ranks = {key.partition("/")[2]: r for key, r in trainer.diagnostics[1].items()}
        assert set(trainer.diagnostics[1]) == {"rank/fc1", "rank/fc2"}
        adapters = sum(layers[name].weight.shape[0] * int(r) for name, r in ranks.items())
        assert trainer.trainable_params[1] == adapters + heads
    else:  # the whole body trains (GPM/SGP project its gradients, EWC/LwF add a loss), and moves
        assert not unchanged(body, trainer.model.body)
        if method == "lwf":  # LwF trains every seen head on the distillation loss
            heads += count(trainer.model.heads[0])
        assert trainer.trainable_params[1] == count(trainer.model.body) + heads
    assert unchanged(head0, trainer.model.heads[0]) == (method != "lwf")  # others leave an old head as it was


def test_an_unknown_method_is_one_line_naming_the_valid_ones():
    with pytest.raises(UserError) as error:
        config("method=nope", *SMOKE)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and message.startswith("method=nope: ")
    assert all(name in message for name in METHODS)
    with pytest.raises(UserError, match="method=nope"):
        check_method("nope")
    check_method("ness")


# ---- the global RNG state ----------------------------------------------------------------------

def draws() -> list:
    return [random.random(), float(np.random.rand()), torch.rand(3).tolist()]


def test_global_rng_state_round_trip_restores_python_numpy_and_torch():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = global_rng_state("cpu")
    first = draws()
    assert [a != b for a, b in zip(draws(), first)] == [True] * 3  # each generator moved on
    set_global_rng_state(state, "cpu")
    assert draws() == first
    assert state["cuda"] is None


def test_a_saved_cuda_state_is_ignored_on_the_cpu():
    state = {**global_rng_state("cpu"), "cuda": torch.zeros(16, dtype=torch.uint8)}
    first = draws()
    set_global_rng_state(state, torch.device("cpu"))
    assert draws() == first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_global_rng_state_round_trip_restores_the_cuda_generator():
    device = torch.device("cuda:0")
    state = global_rng_state(device)
    first = torch.rand(4, device=device)
    assert not torch.equal(torch.rand(4, device=device), first)
    set_global_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), first)


# ---- the per-epoch progress hook ---------------------------------------------------------------

@pytest.mark.parametrize("method", ["finetune", "ness"])  # the hook is the loop's: no method sees it
def test_on_epoch_after_every_epoch_changes_nothing(method):
    # lr_patience above the epochs: no lr step, so every task runs all its epochs
    settings = [f"method={method}", "benchmark=split_digits", "train.epochs=3", "train.lr_patience=100"]
    progress, logged = [], []
    hooked = trainer_for(*settings, log=logged.append, on_epoch=progress.append)
    with_hook = hooked.run().acc_matrix
    assert with_hook == trainer_for(*settings).run().acc_matrix
    assert [(p.task, p.epoch) for p in progress] == [(k, e) for k in range(1, 6) for e in range(1, 4)]
    assert all(p.num_tasks == 5 and p.epochs == 3 and p.lr == hooked.cfg.train.lr for p in progress)
    assert all(math.isfinite(p.train_loss) and math.isfinite(p.valid_loss) and p.train_loss > 0 for p in progress)
    seconds = [p.seconds for p in progress]
    assert 0 < seconds[0] and seconds == sorted(seconds) and seconds[-1] <= hooked.seconds
    assert [p.line() for p in progress] == [line for line in logged if " epoch " in line]  # the same lines as the log


def test_on_epoch_adds_no_device_reads():
    counts = []
    for hook in (None, lambda progress: None):
        trainer = trainer_for("benchmark=split_digits", "train.epochs=3", "train.lr_patience=100", on_epoch=hook)
        params = trainer.train_only(trainer.method.trainable_parameters(0))
        with HostSyncs() as syncs:
            trainer.train_loop(0, params)
        counts.append(syncs.counts)
    assert counts[0] == counts[1] and counts[0]["reads"] == 2 * 3
