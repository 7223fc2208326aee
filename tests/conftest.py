"""Shared test setup: Ray bound to loopback, one Ray session per test run, W&B offline without a key."""

from __future__ import annotations

import os

import pytest

# Ray reads this once, when first imported: a local Ray then binds 127.0.0.1 only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.pop("RAY_ADDRESS", None)
# W&B never goes online and never sees a key in tests.
os.environ["WANDB_MODE"] = "offline"
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(scope="session", autouse=True)
def wandb_dir(tmp_path_factory):
    """Anything W&B writes outside a sweep's own folder lands in pytest's temporary tree."""
    os.environ["WANDB_DIR"] = str(tmp_path_factory.mktemp("wandb"))
    yield os.environ["WANDB_DIR"]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray of 2 CPUs for every sweep test; sweeps use a Ray already running and leave it up."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()

