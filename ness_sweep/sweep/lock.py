"""One driver per sweep folder: the folder is claimed atomically and locked for the driver's life.

A new sweep makes its folder with ``mkdir``, which fails when the folder exists: of two drivers given one
``sweep.name`` one gets it and the other is refused, and an automatic name (the space and the time, to the second)
that another driver took meanwhile moves on to the next free one (``NAME-2``, ...). The driver then holds an
exclusive ``flock`` on ``driver.lock`` inside the folder, which names its host and PID, until it ends; a resume
takes the same lock, so it is refused while a driver runs the sweep. The operating system drops the lock when the
driver's process ends, however it ends (``kill -9`` too): a dead driver never keeps a sweep from being resumed.

A folder on a URI (``s3://``, ``gs://``) is not locked: an object store has neither an atomic mkdir nor locks,
and a lock on this machine's staging folder would not see a driver on another machine. Such a sweep says so in
one warning line and runs unlocked: run one driver on it at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import socket
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import pyarrow.fs as pafs

from .. import results
from ..config import UserError, first_line
from ..results import SweepFolder

if TYPE_CHECKING:
    from .plan import SweepPlan


def name_candidates(name: str) -> Iterator[str]:
    """An automatic sweep name, then ``NAME-2``, ``NAME-3``, ...: the first free one names the sweep."""
    yield name
    for number in itertools.count(2):
        yield f"{name}-{number}"


def is_local(folder: SweepFolder) -> bool:
    return isinstance(folder.filesystem, pafs.LocalFileSystem)


def running_driver(folder: SweepFolder) -> Optional[str]:
    """The driver holding the folder's lock ('PID 4242 on host h, since ...'), or None when none does (a folder
    on a URI keeps no lock)."""
    if not is_local(folder):
        return None
    try:
        descriptor = os.open(folder.path(folder.LOCK), os.O_RDONLY)
    except OSError:  # no lock file: no driver has locked this folder
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released again when closed below
        return None
    except BlockingIOError:
        return _holder(descriptor)
    finally:
        os.close(descriptor)


def _holder(descriptor: int) -> str:
    """Who the lock file says holds it."""
    try:
        found = json.loads(os.pread(descriptor, 4096, 0))
        return f"PID {found['pid']} on host {found['host']}, since {found['since']}"
    except (ValueError, KeyError, TypeError):
        return "a driver that has not yet written its host and PID"


def in_use(folder: SweepFolder, holder: str, resuming: bool) -> UserError:
    """A sweep folder that another driver runs, refused in one line naming that driver."""
    if resuming:
        return UserError(f"resume=true: sweep {folder.name} is running: its driver ({holder}) holds "
                         f"{folder.shown(folder.LOCK)}; wait for it to end, or stop it, then resume")
    return UserError(f"sweep.name={folder.name}: {folder.location} is in use by a running driver ({holder}); "
                     "pick another name")


def taken(folder: SweepFolder) -> UserError:
    """Why a new sweep cannot have an existing folder: a driver is running it, or it holds a sweep already."""
    holder = running_driver(folder)
    if holder:
        return in_use(folder, holder, resuming=False)
    return UserError(f"sweep.name={folder.name}: {folder.location} exists; pick another name, "
                     "or resume=true to continue it")


def check_not_running(folder: SweepFolder) -> None:
    """A resume continues a sweep whose driver has ended: refused while one runs it."""
    holder = running_driver(folder)
    if holder:
        raise in_use(folder, holder, resuming=True)


@contextlib.contextmanager
def claimed(plan: "SweepPlan", warn: Callable[[str], None]) -> Iterator[None]:
    """The plan's folder, this driver's alone while the block runs (see the module's docstring).

    A new sweep makes the folder: an automatic name taken meanwhile moves ``plan.name`` on to the next free one,
    a ``sweep.name`` taken meanwhile is refused (``taken``). A resume locks the existing folder. A new folder that
    holds nothing but the lock when the block fails (its plan could not be written) is taken away again.
    """
    folder = plan.folder
    if not is_local(folder):
        warn(f"warning: {folder.location} is not on this machine's file system, so it is not locked: run one "
             "driver on it at a time (a second would overwrite this one's rows)")
        if not plan.cfg.resume:
            folder.filesystem.create_dir(folder.path(), recursive=True)
        yield
        return
    made = not plan.cfg.resume
    if made:
        folder = _make_folder(folder, automatic=not plan.cfg.sweep.name)
        plan.name = folder.name
    descriptor = _lock(folder, resuming=not made)
    try:
        yield
    except BaseException:
        if made and os.listdir(folder.path()) == [folder.LOCK]:
            os.unlink(folder.path(folder.LOCK))
            os.rmdir(folder.path())
        raise
    finally:
        os.close(descriptor)


def _make_folder(folder: SweepFolder, automatic: bool) -> SweepFolder:
    """Make the sweep's folder with ``mkdir``, which fails when it exists: only one driver makes a folder."""
    os.makedirs(os.path.dirname(folder.path()), exist_ok=True)
    for name in name_candidates(folder.name) if automatic else [folder.name]:
        candidate = SweepFolder(folder.output_dir, name)
        try:
            os.mkdir(candidate.path())
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise results.write_failed(candidate.filesystem, candidate.path(), error, "create") from None
    raise taken(folder)


def _lock(folder: SweepFolder, resuming: bool) -> int:
    """Lock the folder for this driver and write its host and PID into the lock file; the open descriptor holds
    the lock until it is closed, or the process ends. Refused (``in_use``) when another driver holds it."""
    path = folder.path(folder.LOCK)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise results.write_failed(folder.filesystem, path, error) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(descriptor)
        os.close(descriptor)
        raise in_use(folder, holder, resuming) from None
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(me).encode(), 0)
    return descriptor


def check_writable(output_dir: str, name: str) -> None:
    """The sweep folder can be made and written: checked by making (and removing) a probe in the nearest
    folder that exists, so a bad ``output_dir`` or ``sweep.name`` fails before Ray starts and leaves nothing."""
    fs, root = results.filesystem_and_path(output_dir)
    if not isinstance(fs, pafs.LocalFileSystem):
        return
    target = Path(root) / name
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"output_dir={output_dir}: {existing} is a file, not a folder")
    longest = os.pathconf(existing, "PC_NAME_MAX")
    for part in target.relative_to(existing).parts:
        if len(part.encode()) > longest:
            key = "sweep.name" if part == name else "output_dir"
            raise UserError(f"{key}: {part[:40]}... is {len(part.encode())} bytes long; names here may have "
                              f"at most {longest}")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".ness_sweep-probe-").cleanup()
    except OSError as error:
        raise UserError(f"output_dir={output_dir}: cannot create folders in {existing} "
                          f"({error.strerror or first_line(error)})") from None
