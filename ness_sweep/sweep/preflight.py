"""What this machine, or the cluster, can run, worked out before Ray starts: its CPUs, a trial's request checked
against them, a cluster address tried, and the trials that fit at once (what ``dry_run=true`` prints and what the
sweep then runs). Imports neither Ray nor torch at load: a dry run stays light."""

from __future__ import annotations

import math
import os
import socket
from typing import Any, Optional

from omegaconf import DictConfig

from ..config import UserError, first_line, joins_cluster

CLUSTER_CONNECT_TIMEOUT_S = 30.0


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_local_resources(cfg: DictConfig) -> None:
    """A trial asking for more than this machine has would wait forever: say so before starting."""
    cpus = machine_cpus()
    if cfg.trial.cpu > cpus:
        raise UserError(f"trial.cpu={cfg.trial.cpu}: this machine has {cpus} CPUs")
    import torch  # here: planning needs torch only to count GPUs

    gpus = torch.cuda.device_count() if cfg.trial.gpu > 0 else 0
    if cfg.trial.gpu > gpus:
        raise UserError(f"trial.gpu={cfg.trial.gpu}: this machine has {gpus} CUDA GPUs "
                          "(or join a cluster with ray.address=auto)")


def check_cluster_reachable(cfg: DictConfig) -> None:
    """A ``host:port`` cluster address that nothing answers on would make Ray wait for minutes: try it first,
    for at most ``CLUSTER_CONNECT_TIMEOUT_S``. ``auto`` and ``ray://`` addresses are left to Ray."""
    address = str(cfg.ray.address or os.environ.get("RAY_ADDRESS") or "")
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CLUSTER_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise UserError(f"ray.address={address}: no Ray cluster answers there "
                          f"({error.strerror or first_line(error)}); "
                          "start one (`ray start --head`) or fix the address") from None


def trials_at_once(cpus: float, gpus: float, trial: Any, max_concurrent: Optional[int]) -> int:
    """Trials that fit on ``cpus`` and ``gpus`` at trial.cpu and trial.gpu each, capped by sweep.max_concurrent."""
    fits = math.floor(cpus / trial.cpu + 1e-9)
    if trial.gpu > 0:
        fits = min(fits, math.floor(gpus / trial.gpu + 1e-9))
    if max_concurrent:
        fits = min(fits, max_concurrent)
    return max(1, fits)


def concurrency_text(plan: Any) -> str:
    """How many trials would run at once, as the sweep will decide it (``tuner.concurrency``)."""
    cfg = plan.cfg
    cap = cfg.sweep.max_concurrent
    if joins_cluster(cfg):
        if cap:
            return f"{cap} trials at once (sweep.max_concurrent; on a cluster it decides alone)"
        return "as many trials at once as the cluster holds when the sweep starts (not known without joining it)"
    import torch  # planning has imported it already (check_local_resources)

    cpus, gpus = machine_cpus(), torch.cuda.device_count() if cfg.trial.gpu > 0 else 0
    machine = f"{cpus} CPUs" + (f", {gpus} GPUs" if cfg.trial.gpu > 0 else "")
    limit = f", sweep.max_concurrent={cap}" if cap else ""
    return f"{trials_at_once(cpus, gpus, cfg.trial, cap)} trials at once (this machine: {machine}{limit})"
