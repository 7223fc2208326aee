"""The trainer on a GPU, checked on the CPU: it does not make the device wait for the host batch by batch,
every tensor a run creates follows ``device``, and a checkpoint loads and resumes on a machine without CUDA.

What these tests can prove without CUDA: host reads and device moves are counted at the torch call
(``.item()``, ``int()``, ``.to(device)``, ...), so a per-batch one fails here as it would stall a GPU; and the
'meta' device stands in for CUDA: a tensor created on a fixed device (the CPU) would either refuse to mix
with the meta ones or show up with the wrong device below. What they cannot prove: that CUDA kernels run, or
how fast; ``perf/gpu_check.py`` measures that on a CUDA machine.
"""

import io
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ness_sweep import ness, statistics
from ness_sweep.benchmarks import stream_for
from ness_sweep.data import Task, TaskStream
from ness_sweep.methods import load_run_config, make_trainer
from ness_sweep.trainer import Trainer

# Calls that make the host wait for the device: the value must be on the host before they return.
HOST_READS = {"item", "__bool__", "__int__", "__float__", "__index__", "__format__", "tolist", "numpy", "cpu"}


def names_a_device(args, kwargs) -> bool:
    """Whether a ``Tensor.to`` call moves to a device (rather than only changing dtype)."""
    targets = list(args[1:]) + [kwargs.get("device")]
    return any(isinstance(a, (torch.device, str, torch.Tensor)) for a in targets)


class HostSyncs(TorchFunctionMode):
    """Counts, while active, reads of tensor values by the host and explicit moves between devices.

    On the CPU nothing stalls, but the same calls on CUDA would each wait for the GPU (a read) or copy
    from the host (a move), so counting them here shows what a GPU run would do.
    """

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.counts["reads"] += 1
        elif name in ("to", "cuda") and (name == "cuda" or names_a_device(args, kwargs)):
            self.counts["moves"] += 1
        return func(*args, **kwargs)


def digits_trainer(*overrides) -> Trainer:
    cfg = load_run_config(["device=cpu", *overrides])
    return make_trainer(cfg, stream_for(cfg, cfg.seed), log=None)


def batch_size_for(trainer: Trainer, batches: int) -> int:
    n = len(trainer.stream.tasks[0].y_train)
    return -(-n // batches)


def syncs_training_task_one(batches: int, epochs: int) -> Counter:
    """Reads and moves of the whole train loop of the first task (train and validate each epoch)."""
    trainer = digits_trainer(f"train.epochs={epochs}", "train.lr_patience=100")
    trainer.cfg.train.batch_size = batch_size_for(trainer, batches)
    params = trainer.train_only(trainer.method.trainable_parameters(0))
    with HostSyncs() as syncs:
        trainer.train_loop(0, params)
    return syncs.counts


def test_training_syncs_per_epoch_do_not_grow_with_the_number_of_batches():
    few, many = syncs_training_task_one(batches=2, epochs=3), syncs_training_task_one(batches=20, epochs=3)
    assert few == many
    # Per epoch: the training loss and the validation loss read once each; the shuffled order moved once.
    assert few == Counter(reads=2 * 3, moves=3)


@pytest.mark.parametrize("evaluate", ["accuracy", "loss"])
def test_an_evaluation_reads_the_device_once_whatever_its_batches(evaluate):
    counts = []
    for batch_size in (1000, 7):  # one batch, then about twenty
        trainer = digits_trainer(f"train.eval_batch_size={batch_size}")
        task = trainer.stream.tasks[0]
        with HostSyncs() as syncs:
            getattr(trainer, evaluate)(task, 0)
        counts.append(syncs.counts)
    assert counts[0] == counts[1] == Counter(reads=1)


def test_the_statistics_pass_neither_reads_nor_moves_per_batch():
    counts = []
    for batch_size in (1000, 7):
        trainer = digits_trainer(f"train.eval_batch_size={batch_size}")
        with HostSyncs() as syncs:
            trainer.method.grams(trainer.stream.tasks[:2])
        counts.append(syncs.counts)
    assert counts[0] == counts[1] == Counter()


def test_the_counter_sees_what_a_per_batch_read_would_cost():
    """The instrument itself: a loop reading each batch's loss is caught, one that sums on the device is not."""
    losses = [torch.tensor(float(i)) for i in range(5)]
    with HostSyncs() as per_batch:
        sum(loss.item() for loss in losses)
        [int(loss) for loss in losses]
    with HostSyncs() as once:
        torch.stack(losses).sum().item()
    assert per_batch.counts["reads"] == 10 and once.counts["reads"] == 1


# ---- device following: 'meta' stands in for CUDA ---------------------------------------------

INPUT_SHAPES = {"alexnet": (3, 32, 32), "resnet18": (3, 32, 32), "cnn1d": (1, 40)}


def synthetic_stream(shape) -> TaskStream:
    """Two tiny uint8 tasks with per-channel normalisation (the paper benchmarks' layout)."""
    g = torch.Generator().manual_seed(0)

    def inputs(n):
        return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)

    def labels(n):
        return torch.randint(0, 4, (n,), generator=g)

    mean, std = torch.full((shape[0],), 0.5), torch.full((shape[0],), 0.25)
    tasks = [Task(f"t{t}", 4, inputs(8), labels(8), inputs(4), labels(4), inputs(4), labels(4), mean, std)
             for t in range(2)]
    return TaskStream("synthetic", tasks, shape, "mlp")


def meta_trainer(model: str, memory: str) -> Trainer:
    cfg = load_run_config(["device=cpu", f"model={model}", f"ness.memory={memory}", "train.batch_size=4"])
    stream = synthetic_stream(INPUT_SHAPES[model]) if model in INPUT_SHAPES else stream_for(cfg, cfg.seed)
    return make_trainer(cfg, stream, device=torch.device("meta"), log=None)


def on_meta(tensors) -> bool:
    tensors = list(tensors)
    return bool(tensors) and all(t.device.type == "meta" for t in tensors)


@pytest.mark.parametrize("model", ["mlp", "alexnet", "resnet18", "cnn1d"])
def test_every_tensor_of_a_task_follows_the_device(model):
    """A NESS task on 'meta': statistics (replay and stream), bases, adapters and their gradients, the
    epoch's loss sum and the evaluation sums all stay there. Selection reads singular values, which
    meta tensors do not have, so the rank is fixed here (3 directions per layer)."""
    trainer = meta_trainer(model, "stream")
    optimizer = trainer.make_optimizer(trainer.train_only(trainer.method.trainable_parameters(0)))
    task = trainer.stream.tasks[0]
    total, seen = trainer.epoch_loss_sum(task, 0, optimizer)
    assert seen > 0 and on_meta([total, trainer.valid_loss_sum(task, 0), trainer.correct_count(task, 0)])
    trainer.method.after_task(0)
    grams = trainer.method.grams(trainer.stream.tasks[:1])
    assert on_meta(trainer.method.stream_grams.values()) and on_meta(grams.values())
    assert all(g.dtype == torch.float64 for g in grams.values())
    bases = {name: statistics.spectrum(g)[1][:, :3] for name, g in grams.items()}
    assert on_meta(bases.values())
    adapters = ness.attach_adapters(trainer.model, bases)
    params = trainer.train_only(trainer.method.trainable_parameters(1))
    total, _ = trainer.epoch_loss_sum(trainer.stream.tasks[1], 1, trainer.make_optimizer(params))
    assert on_meta([total])
    assert on_meta(t for a in adapters.values() for t in (a.A, a.A.grad, a.basis, a.basis_weight))
    ness.merge_adapters(trainer.model)
    assert on_meta(trainer.model.state_dict().values())


# ---- checkpoints: loadable without CUDA ------------------------------------------------------
# That a CUDA trainer's checkpoint holds CPU tensors only cannot fail on a machine whose tensors are all on
# the CPU; perf/gpu_check.py checks it on a CUDA machine.

def test_a_checkpoint_from_a_cuda_machine_loads_and_resumes_on_the_cpu():
    """A saved CUDA generator state (a CPU byte tensor) rides along; a CPU trainer ignores it and finishes
    exactly like an uninterrupted CPU run. Loaded as the sweep loads it: ``torch.load`` of a saved file."""
    uninterrupted = digits_trainer("train.epochs=1", "ness.memory=stream").run().acc_matrix
    first = digits_trainer("train.epochs=1", "ness.memory=stream")
    first.run(until=2)
    state = first.state_dict()
    state["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)  # stands in for torch.cuda.get_rng_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.manual_seed(999)
    resumed = digits_trainer("train.epochs=1", "ness.memory=stream")
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.run().acc_matrix == uninterrupted
