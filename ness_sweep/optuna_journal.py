"""The sweep's Optuna study file (``optuna.journal``), the one place that knows how Optuna stores it: the
storage the searcher writes, a private copy the report reads, Optuna's logging muted while either calls it, and
TPE's random start-up count. Optuna is imported inside the functions: the leaderboard and a dry run need none."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Iterator, Tuple

import pyarrow.fs as pafs

from . import results
from .config import first_line
from .results import SweepFolder

# The sweep's TPESampler draws its first n_startup_trials at random (study.StudySearch passes this to it).
TPE_STARTUP_TRIALS = 10


def journal_storage(journal: str) -> Any:
    """The storage of the sweep's Optuna study (``SweepFolder.OPTUNA``): Optuna's journal file, which
    ``sweep/study.py`` writes and the report page reads a copy of. Optuna is imported here: the leaderboard
    needs none."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(journal))


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs at INFO each study it creates or loads ("Using an existing study with name ..."); the sweep
    and the report print lines of their own, so Optuna's are muted while they call it (and only then)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


@contextlib.contextmanager
def opened_study(fs: pafs.FileSystem, root: str, name: str) -> Iterator[Tuple[Any, str]]:
    """(study, '') from a private copy of the sweep's journal, or (None, why not). A copy: the report never writes
    into the sweep folder (Optuna creates a journal it opens when missing, and its lock file beside the journal
    it writes: both happen in the copy's temporary folder), and it works for a URI folder too. The journal is only
    ever appended to, so a copy of a running sweep's is an earlier state of it, at worst with an incomplete last
    line, which Optuna reads past."""
    path = f"{root}/{SweepFolder.OPTUNA}"
    if not results.exists(fs, path):
        yield None, f"No {SweepFolder.OPTUNA} in the sweep folder: importances need the sweep's Optuna study."
        return
    import optuna

    with tempfile.TemporaryDirectory(prefix="ness_sweep_report_") as scratch:
        local = os.path.join(scratch, SweepFolder.OPTUNA)
        try:
            with fs.open_input_stream(path) as source, open(local, "wb") as copy:
                shutil.copyfileobj(source, copy)
            storage = journal_storage(local)
            names = optuna.get_all_study_names(storage)
            if name not in names:
                raise KeyError(f"no study named {name!r} (it holds: {', '.join(names) or 'none'})")
            found, why = optuna.load_study(study_name=name, storage=storage), ""
        except Exception as error:  # the file system's, json's and Optuna's own types
            found, why = None, f"{SweepFolder.OPTUNA} is unreadable: {first_line(error)}"
        yield found, why
