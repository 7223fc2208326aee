"""The process environment that Ray, Tune and W&B read, set in one place.

Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when first imported: ``bind_ray_to_loopback`` must run
before any ``import ray``. Tune and W&B read theirs while a sweep runs: ``scoped`` sets them for the sweep
alone and restores what was there before.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Iterator, Optional

# Tune's defaults cost time per trial and print a status table; the sweep replaces both.
TUNE_SETTINGS = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # CSV and TensorBoard files: ~0.1 s a trial; the JSON one is added
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the classic reporter prints nothing
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # acc, bwt, forgetting come only with the last task
}


def bind_ray_to_loopback(cluster_address: Optional[str]) -> None:
    """A local Ray binds 127.0.0.1 only ("0"); joining a cluster (an address, or RAY_ADDRESS) keeps the
    environment's setting, Ray's default on Linux being cluster networking on. Call before importing Ray."""
    if not (cluster_address or os.environ.get("RAY_ADDRESS")):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@contextlib.contextmanager
def scoped(settings: Dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore the previous values."""
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
