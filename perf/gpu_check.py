"""Does ness_sweep work on this CUDA machine, and how fast is it? One command, one table:

    python perf/gpu_check.py                        # on a CUDA machine; exit status 1 if any check fails
    python perf/gpu_check.py --device cpu --quick   # every check on the CPU, small: the script's own dry run

Checks, each a function of the device under test (the reference is always the CPU):
  train       default ``python -m ness_sweep.train`` on the device and on the CPU, same seed: ACC within 1 point
  null_space  NESS's bound on the device (Linear, Conv2d; both adapter paths): ‖ΔW x‖ <= ‖A‖·σ_max on old inputs
  checkpoint  a device trainer's state_dict holds CPU tensors only; loaded on the CPU it computes the same
  sweep       ``python -m ness_sweep.run space=smoke trial.gpu=0.25``: four trial processes at once (from /proc),
              all TERMINATED in results.parquet, each one's peak GPU memory as nvidia-smi reports it
  epoch       NESS and fine-tuning epoch time (train + validation) on the CIFAR-shaped AlexNet and ResNet-18
  statistics  AlexNet's Gram matrices (replay) and eigendecomposition on the device and on the CPU from the
              same weights: time, peak memory, agreement
Without CUDA (and ``--device cuda``, the default) it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ness_sweep import ness, statistics
from ness_sweep.benchmarks import stream_for
from ness_sweep.methods import load_run_config, make_trainer
from ness_sweep.trainer import Trainer

CPU = torch.device("cpu")


def load_perf_trainer():
    """perf/trainer.py (synthetic CIFAR-shaped streams, epoch timing, peak memory), imported, not copied."""
    spec = importlib.util.spec_from_file_location("perf_trainer", Path(__file__).with_name("trainer.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


perf = load_perf_trainer()


@dataclass
class Row:
    check: str
    result: str
    ok: Optional[bool] = None  # None: a measurement, nothing to pass or fail


@dataclass(frozen=True)
class Sizes:
    train: Tuple[str, ...]  # overrides of the ness_sweep.train runs (none: the default run)
    images: int  # synthetic images per task
    side: int  # their height and width (3 channels)
    epochs: int  # timed epochs per method and model
    tasks: int  # the statistics step runs before this task, over all earlier tasks' inputs
    models: Tuple[str, ...] = ("alexnet", "resnet18")  # epoch times of each; statistics of the first

    def stream(self, tasks: int):
        return perf.random_image_stream(tasks, self.images, shape=(3, self.side, self.side))


FULL = Sizes(train=(), images=2500, side=32, epochs=3, tasks=5)  # CIFAR-shaped, as the paper's benchmarks
QUICK = Sizes(train=("train.epochs=1",), images=20, side=24, epochs=1, tasks=2)  # the smallest the models take
CIFAR = ["train.batch_size=64"]


# ---- train: the default run on the device and on the CPU --------------------------------------

def train_result(device: torch.device, overrides: Tuple[str, ...]) -> dict:
    """One ``python -m ness_sweep.train`` run in its own process, its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, "-m", "ness_sweep.train", f"device={device}", f"output={out}", *overrides],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return json.loads(out.read_text())


def check_train(device: torch.device, sizes: Sizes) -> List[Row]:
    run, ref = train_result(device, sizes.train), train_result(CPU, sizes.train)
    gap = run["acc"] - ref["acc"]
    return [Row(f"train: default run, {device} vs cpu, seed 0",
                f"ACC {run['acc']:.2f} vs {ref['acc']:.2f} (gap {gap:+.2f}), BWT {run['bwt']:.2f} vs {ref['bwt']:.2f}, "
                f"{run['seconds']:.1f} s vs {ref['seconds']:.1f} s", abs(gap) <= 1.0)]


# ---- null_space: NESS's bound, computed on the device ------------------------------------------

def null_space_case(kind: str) -> Tuple[nn.Module, torch.Tensor]:
    """A layer and previous inputs with a real null space (the CPU test's cases): inputs near a 12-dim
    subspace of R^24, or images constant per channel (patches in about 2 of 18 directions), plus 1e-3 noise."""
    g = torch.Generator().manual_seed(6)
    if kind == "linear":
        layer = nn.Linear(24, 10, bias=False)
        basis = torch.linalg.qr(torch.randn(24, 12, generator=g))[0]
        x = torch.randn(400, 12, generator=g) @ basis.T + 1e-3 * torch.randn(400, 24, generator=g)
    else:
        layer = nn.Conv2d(2, 6, 3, bias=False)
        x = torch.randn(40, 2, 1, 1, generator=g).expand(40, 2, 6, 6) + 1e-3 * torch.randn(40, 2, 6, 6, generator=g)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / math.sqrt(layer.weight[0].numel()))
    return layer, x


@torch.no_grad()
def null_space_margin(kind: str, low_rank: bool, device: torch.device) -> Tuple[float, float, int]:
    """Largest change of the layer's output on previous inputs after a random update A (spectral norm 1),
    the bound ‖A‖·σ_max, and the rank adapted."""
    layer, x = null_space_case(kind)
    layer, x = layer.to(device), x.to(device)
    before = layer(x)
    with statistics.recording_grams({"l": layer}) as grams:
        layer(x)
    bases, sigma_max = ness.subspace_bases(grams, 1e-2, "frobenius", None)
    adapter = ness.NullSpaceAdapter(layer, bases["l"])
    adapter._low_rank_is_cheaper = lambda rows: low_rank  # this instance takes the path under test
    a = torch.randn(adapter.A.shape, generator=torch.Generator().manual_seed(7))
    adapter.A.copy_(a / torch.linalg.matrix_norm(a, ord=2))
    change = (adapter(x) - before).norm(dim=1).max().item()  # per sample (Linear) or output position (Conv2d)
    return change, sigma_max["l"], adapter.rank


def check_null_space(device: torch.device, sizes: Sizes) -> List[Row]:
    rows = []
    for kind in ("linear", "conv"):
        for low_rank in (False, True):
            change, bound, rank = null_space_margin(kind, low_rank, device)
            path = "low-rank" if low_rank else "merged"
            rows.append(Row(f"null space: {kind}, {path} path, {device}", f"max change on previous inputs "
                            f"{change:.3g} <= ‖A‖·σ_max {bound:.3g} (‖A‖ = 1, rank {rank})",
                            rank > 0 and change <= bound * (1 + 1e-4) + 1e-6))
    return rows


# ---- checkpoint: CPU tensors only, loadable without the device ---------------------------------

def tensors_in(obj) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [t for value in values for t in tensors_in(value)]


def check_checkpoint(device: torch.device, sizes: Sizes) -> List[Row]:
    cfg = load_run_config(["train.epochs=1", "ness.memory=stream"])
    stream = stream_for(cfg, cfg.seed)
    trainer = make_trainer(cfg, stream, device=device, log=None)
    trainer.run(until=2)
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)  # as the sweep loads it: no map_location
    off_cpu = [t for t in tensors_in(state) if t.device.type != "cpu"]
    copy = make_trainer(cfg, stream, device=CPU, log=None)
    copy.load_state_dict(state)
    x = stream.tasks[0].x_test
    trainer.model.eval()
    copy.model.eval()
    with torch.no_grad():
        gap = (trainer.model(x.to(device), 0).cpu() - copy.model(x, 0)).abs().max().item()
    return [Row(f"checkpoint: {device} trainer after task 2",
                f"{len(tensors_in(state)) - len(off_cpu)} tensors on cpu, {len(off_cpu)} elsewhere; loaded on cpu, "
                f"outputs differ by {gap:.2g}", not off_cpu and gap <= 1e-3)]


# ---- sweep: four trials on one GPU ---------------------------------------------------------------

SWEEP_NAME = "gpu_check"
SWEEP_TIMEOUT_S = 600
TRIAL_TITLE = b"ray::ImplicitFunc.train"  # Ray's process title for a worker running a Tune trial


def trial_share(device: torch.device) -> str:
    """Four trials at once: a quarter GPU each (on the CPU, a half CPU each)."""
    return "trial.gpu=0.25" if device.type == "cuda" else "trial.cpu=0.5"


def sweep_command(device: torch.device, output_dir: str) -> List[str]:
    """The smoke space's four trials, to the end (FIFO), without W&B."""
    return [sys.executable, "-m", "ness_sweep.run", "space=smoke", trial_share(device), "sweep.scheduler=fifo",
            "wandb.mode=disabled", f"output_dir={output_dir}", f"sweep.name={SWEEP_NAME}"]


def trial_pids(root: int) -> List[int]:
    """Trial worker processes that descend from ``root`` (other sweeps on this machine do not count)."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False

    return sorted(pid for pid, title in titles.items() if title.startswith(TRIAL_TITLE) and descends(pid))


def nvidia_smi(query: str) -> List[List[str]]:
    lines = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], check=True,
                           stdout=subprocess.PIPE, text=True).stdout
    return [[cell.strip() for cell in line.split(",")] for line in lines.splitlines() if line.strip()]


def gpu_memory() -> Tuple[Dict[int, float], float]:
    """MiB per process holding GPU memory (the driver's view, CUDA context included), and the device total."""
    per_process = {int(pid): float(mib) for pid, mib in nvidia_smi("--query-compute-apps=pid,used_memory")
                   if mib.replace(".", "", 1).isdigit()}
    return per_process, sum(float(row[0]) for row in nvidia_smi("--query-gpu=memory.used"))


@dataclass
class Sample:
    at: float
    pids: List[int]
    memory: Dict[int, float]
    total: float


def watch(process: subprocess.Popen, on_gpu: bool, every: float = 0.2) -> List[Sample]:
    """Trial processes and GPU memory every ``every`` seconds until the sweep ends."""
    samples, start = [], time.monotonic()
    while process.poll() is None:
        if time.monotonic() - start > SWEEP_TIMEOUT_S:
            raise TimeoutError(f"the sweep ran past {SWEEP_TIMEOUT_S} s")
        memory, total = gpu_memory() if on_gpu else ({}, 0.0)
        samples.append(Sample(time.monotonic() - start, trial_pids(process.pid), memory, total))
        time.sleep(every)
    return samples


def trial_rows(samples: List[Sample], on_gpu: bool) -> List[Row]:
    """When each trial process ran and its peak GPU memory (or, if the driver shows none of them, the
    device total above its level before the sweep)."""
    pids = sorted({pid for s in samples for pid in s.pids})
    rows = []
    for k, pid in enumerate(pids, start=1):
        seen = [s for s in samples if pid in s.pids]
        peak = max((s.memory[pid] for s in seen if pid in s.memory), default=None)
        memory = "" if not on_gpu else "; peak GPU memory " + (
            "not listed by nvidia-smi" if peak is None else f"{peak:,.0f} MiB (nvidia-smi, CUDA context included)")
        rows.append(Row(f"sweep: trial process {k}", f"running from {seen[0].at:.1f} s to {seen[-1].at:.1f} s{memory}"))
    listed = any(pid in s.memory for s in samples for pid in s.pids)
    if on_gpu and samples and not listed:
        rise = max(s.total for s in samples) - samples[0].total
        rows.append(Row("sweep: GPU memory, all trials", f"peak {rise:,.0f} MiB above the level before the sweep "
                        "(nvidia-smi lists no process of this PID namespace)"))
    return rows


def overlap_row(samples: List[Sample], statuses: List[str], share: str) -> Row:
    """Pass: four trials, all TERMINATED, and four trial processes alive at the same time."""
    most = max((len(s.pids) for s in samples), default=0)
    together = sum(b.at - a.at for a, b in zip(samples, samples[1:]) if len(a.pids) >= 4 and len(b.pids) >= 4)
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    ok = len(statuses) == 4 and counts.get("TERMINATED") == 4 and most >= 4
    ended = ", ".join(f"{n} {status}" for status, n in counts.items())
    span = samples[-1].at if samples else 0.0
    return Row(f"sweep: space=smoke, {share}", f"{len(statuses)} trials ({ended}); at most {most} at once, "
               f"all four together for {together:.1f} s of {span:.1f} s", ok)


def check_sweep(device: torch.device, sizes: Sizes, command: Callable[[torch.device, str], List[str]] = sweep_command
                ) -> List[Row]:
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "sweep.log", "w") as log:
            process = subprocess.Popen(command(device, tmp), stdout=log, stderr=subprocess.STDOUT)
            try:
                samples = watch(process, device.type == "cuda")
            finally:
                if process.poll() is None:  # the watch failed: stop the sweep (its Ray goes with it)
                    process.terminate()
                    process.wait()
        if process.returncode != 0:
            tail = (Path(tmp) / "sweep.log").read_text().strip().splitlines()[-3:]
            return [Row("sweep", f"exit status {process.returncode}: {' / '.join(tail)}", False)]
        statuses = pq.read_table(Path(tmp) / SWEEP_NAME / "results.parquet").column("status").to_pylist()
    return [overlap_row(samples, statuses, trial_share(device)), *trial_rows(samples, device.type == "cuda")]


# ---- epoch: NESS against fine-tuning on the paper's image models -------------------------------

def check_epoch(device: torch.device, sizes: Sizes) -> List[Row]:
    stream = sizes.stream(3)
    samples = len(stream.tasks[1].y_train)
    rows = []
    for model in sizes.models:
        trainers = {method: perf.trainer_after_first_task(stream, [f"model={model}", f"method={method}", *CIFAR],
                                                          device) for method in ("finetune", "ness")}
        seconds = perf.task_two_epochs(trainers, sizes.epochs, device)
        rows.append(Row(f"epoch: {model}, {samples:,} images of {sizes.side}x{sizes.side}, batch 64, {device}",
                        " / ".join(f"{method} {s:.3f} s/epoch ({samples / s:,.0f} samples/s)"
                                   for method, s in seconds.items())
                        + f"; NESS / fine-tune {seconds['ness'] / seconds['finetune']:.2f}x"))
    return rows


# ---- statistics: Gram matrices and eigendecomposition, device against CPU -----------------------

def measured(fn: Callable[[], object], device: torch.device) -> Tuple[object, float, float]:
    """fn's value, its seconds, and the peak memory (MiB) above the start while it ran; on CUDA after a
    warm-up call (the first eigh and convolution load their libraries)."""
    if device.type == "cuda":
        fn()
    out = {}

    def step():
        start = time.perf_counter()
        out["value"] = fn()
        perf.sync(device)
        out["seconds"] = time.perf_counter() - start

    peak = perf.cuda_step_peak_bytes(step, device) if device.type == "cuda" else perf.cpu_step_peak_bytes(step)
    return out["value"], out["seconds"], peak / 2**20


def statistics_step(trainer: Trainer, last: int) -> Tuple[dict, Dict[str, torch.Tensor], str]:
    """Replay statistics before task ``last`` and the bases they give; a row's text."""
    grams, gram_s, gram_mib = measured(lambda: trainer.method.grams(trainer.stream.tasks[:last]), trainer.device)
    n = trainer.cfg.ness
    (bases, _), eig_s, eig_mib = measured(lambda: ness.subspace_bases(grams, n.threshold, n.norm, n.rank),
                                          trainer.device)
    ranks = {name: b.shape[1] for name, b in bases.items()}
    text = (f"Gram {gram_s:.3f} s (peak +{gram_mib:,.1f} MiB), eigendecomposition {eig_s:.3f} s "
            f"(peak +{eig_mib:,.1f} MiB); ranks {sum(ranks.values())} in all")
    return ranks, grams, text


def check_statistics(device: torch.device, sizes: Sizes) -> List[Row]:
    stream = sizes.stream(sizes.tasks)
    trainer = perf.trainer_after_first_task(stream, ["method=ness", f"model={sizes.models[0]}", *CIFAR], device)
    copy = make_trainer(trainer.cfg, stream, device=CPU, log=None)
    copy.load_state_dict(trainer.state_dict())
    last = sizes.tasks - 1
    label = f"statistics: {sizes.models[0]}, {last * sizes.images:,} images of {sizes.side}x{sizes.side}"
    ranks, grams, text = statistics_step(trainer, last)
    ref_ranks, ref_grams, ref_text = statistics_step(copy, last)
    gap = max((grams[k].cpu() - ref_grams[k]).norm().item() / ref_grams[k].norm().item() for k in ref_grams)
    rank_gap = sum(abs(ranks[k] - ref_ranks[k]) for k in ref_ranks)
    return [Row(f"{label}, {device}", text), Row(f"{label}, cpu", ref_text),
            Row(f"{label}: {device} vs cpu", f"Gram matrices differ by {gap:.2g} (relative, largest layer); "
                f"ranks differ by {rank_gap} of {sum(ref_ranks.values())}", gap <= 1e-2)]


# ---- the table -------------------------------------------------------------------------------------

CHECKS: Dict[str, Callable[[torch.device, Sizes], List[Row]]] = {
    "train": check_train, "null_space": check_null_space, "checkpoint": check_checkpoint, "sweep": check_sweep,
    "epoch": check_epoch, "statistics": check_statistics,
}
STATUS = {True: "PASS", False: "FAIL", None: "-"}


def run_check(name: str, device: torch.device, sizes: Sizes) -> List[Row]:
    """A check's rows; one failing row if it raised (a broken check must not hide the others)."""
    try:
        return CHECKS[name](device, sizes)
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or "").strip().splitlines()[-1:] or [f"exit status {error.returncode}"]
        return [Row(name, f"{' '.join(map(str, error.cmd[1:4]))} ...: {tail[0]}", False)]
    except Exception as error:  # any failure of the code under test is a result here
        return [Row(name, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", False)]


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, torch {torch.__version__}, "
                f"TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}")
    return f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device under test (cpu: a dry run of the script)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a dry run, figures meaningless")
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma-separated: " + ", ".join(CHECKS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing checked")
        return 0
    names = args.checks.split(",")
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks: {', '.join(unknown)} (choose from {', '.join(CHECKS)})")
    sizes = QUICK if args.quick else FULL
    print(f"gpu_check on {describe(device)}\n\n| check | result | status |\n|---|---|---|", flush=True)
    failed = False
    for name in names:
        for row in run_check(name, device, sizes):
            print(f"| {row.check} | {row.result} | {STATUS[row.ok]} |", flush=True)
            failed = failed or row.ok is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
